"""``apr-async pairs --svcb`` and ``connect --svcb`` against the lab DNS server on loopback."""

from __future__ import annotations

import asyncio
import json

import pytest

from apr_async.cli import main
from apr_async.lab.dnsserver import DNSServer, ZoneEntry
from apr_async.lab.dnswire import https_rdata


async def test_pairs_and_connect_show_and_use_the_endpoints(
    capsys: pytest.CaptureFixture[str],
) -> None:
    async def close_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(close_at_once, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    zone = {"svc.test": ZoneEntry(a=("127.0.0.1",), https=(
        https_rdata(1, port=port, alpn=("h2",), ech=b"\x01"),
        https_rdata(2, alpn=("h3",), no_default_alpn=True)))}
    try:
        async with DNSServer(zone) as dns:
            common = ["--nameserver", dns.nameservers[0], "--svcb"]
            rc = await asyncio.to_thread(main, ["pairs", "svc.test", "443", *common])
            text = capsys.readouterr().out
            assert rc == 0
            assert f"#1 svc.test:{port} alpn=http/1.1" in text
            assert "h3 needs QUIC" in text and "ech kept, not used" in text
            assert f"127.0.0.1:{port}" in text  # the pairs are for the endpoint's port
            rc = await asyncio.to_thread(main, ["connect", "svc.test", "443", *common,
                                                "--json"])
            doc = json.loads(capsys.readouterr().out)
            assert rc == 0 and doc["connected"]
            assert doc["winner"]["destination"] == f"127.0.0.1:{port}"
            assert doc["svcb"]["endpoints"][0]["port"] == port
            assert doc["svcb"]["skipped"][0]["why"].endswith("(h3 needs QUIC)")
    finally:
        server.close()
        await server.wait_closed()
