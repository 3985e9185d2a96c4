"""HTTPS records (RFC 9460) across the lab: a TLS service on port 8443 only, found by name.

The server namespace serves HTTPS on 8443 (nothing listens on 443); the lab DNS server
publishes ``svc.lab.test HTTPS 1 . port=8443`` beside its A/AAAA. The client, in its own
namespace, reaches it with ``open_connection(host, 443, ssl=...)`` and with aiohttp's
``AprConnector`` on ``https://svc.lab.test/``; ``svcb=False`` shows the refusal the record
saves it from.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from test_aiohttp_lab import test_ca

from apr_async.aiohttp import AprConnector
from apr_async.connect.api import open_connection
from apr_async.lab import Lab, ZoneEntry
from apr_async.lab.dnswire import https_rdata
from apr_async.resolve.pairs import PairContext
from apr_async.resolve.resolver import Resolver

pytestmark = [pytest.mark.lab, pytest.mark.asyncio(loop_scope="module")]

PORT = 8443
NAME, ALIAS, HINTED = "svc.lab.test", "www.lab.test", "hinted.lab.test"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def service(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Path]:
    ca, cert, key = test_ca(tmp_path_factory.mktemp("https-ca"), [NAME, ALIAS, HINTED])
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(str(cert), str(key))

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=f"hello {request.host}")

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = lab.socket("server", socket.AF_INET6)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("::", PORT))
    await web.SockSite(runner, sock, ssl_context=server_ctx).start()
    addresses = {"a": (lab.server.v4[0],), "aaaa": (lab.server.v6[0],)}
    lab.dns.update(NAME, ZoneEntry(**addresses, https=(https_rdata(1, port=PORT),)))
    lab.dns.update(ALIAS, ZoneEntry(**addresses, https=(https_rdata(0, NAME),)))
    # AAAA 30 s late: without the hint the race would start (and win) on IPv4
    lab.dns.update(HINTED, ZoneEntry(**addresses, delay_aaaa=30.0, https=(
        https_rdata(1, port=PORT, ipv6hint=(lab.server.v6[0],)),)))
    try:
        yield ca
    finally:
        lab.dns.update(NAME, None)
        lab.dns.update(ALIAS, None)
        lab.dns.update(HINTED, None)
        await runner.cleanup()


async def client_open(dns: list[str], ca: str, host: str, *, timeout: float = 10,  # noqa: ASYNC109
                      **kw: Any) -> str:
    """In the client namespace: open_connection(host, 443) and one HTTP request."""
    resolver = Resolver(dns, hosts_path=None, timeout=1.0)
    try:
        reader, writer = await open_connection(
            host, 443, ssl=ssl.create_default_context(cafile=ca), timeout=timeout,
            context=PairContext(resolver=resolver), **kw)
        try:
            writer.write(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            return (await reader.read()).decode().rsplit("\r\n", 1)[-1]
        finally:
            writer.close()
            await writer.wait_closed()
    finally:
        await resolver.close()


async def client_peer(dns: list[str], ca: str, host: str, **kw: Any) -> str:
    """In the client namespace: the address open_connection(host, 443) reached."""
    resolver = Resolver(dns, hosts_path=None, timeout=1.0)
    try:
        _, writer = await open_connection(
            host, 443, ssl=ssl.create_default_context(cafile=ca), timeout=10,
            context=PairContext(resolver=resolver), **kw)
        peer = str(writer.get_extra_info("peername")[0])
        writer.close()
        await writer.wait_closed()
        return peer
    finally:
        await resolver.close()


async def client_aiohttp(dns: list[str], ca: str, url: str) -> str:
    connector = AprConnector(nameservers=dns, ssl=ssl.create_default_context(cafile=ca))
    async with (aiohttp.ClientSession(connector=connector,
                                      timeout=aiohttp.ClientTimeout(total=10)) as session,
                session.get(url) as response):
        return await response.text()


async def test_open_connection_follows_the_port(healthy_lab: Lab, service: Path) -> None:
    lab = healthy_lab
    body = await lab.run_in("client", client_open, lab.dns_servers, str(service), NAME)
    assert body == f"hello {NAME}"


async def test_alias_then_port(healthy_lab: Lab, service: Path) -> None:
    lab = healthy_lab
    body = await lab.run_in("client", client_open, lab.dns_servers, str(service), ALIAS)
    assert body == f"hello {ALIAS}"  # the Host and the certificate stay the origin's


async def test_svcb_false_is_refused(healthy_lab: Lab, service: Path) -> None:
    lab = healthy_lab
    # Port 443 refuses on every path that reaches the server (the lab's other sources are
    # not routed there and time out): the record is what finds 8443.
    with pytest.raises(OSError, match=r"port 443.*Errno 111"):
        await lab.run_in("client", client_open, lab.dns_servers, str(service), NAME,
                         svcb=False, timeout=2)


async def test_aiohttp_follows_the_record(healthy_lab: Lab, service: Path) -> None:
    lab = healthy_lab
    text = await lab.run_in("client", client_aiohttp, lab.dns_servers, str(service),
                            f"https://{NAME}/")
    assert text == f"hello {NAME}"


async def test_ipv6hint_starts_the_race_before_the_late_aaaa(
    healthy_lab: Lab, service: Path
) -> None:
    lab = healthy_lab
    peer = await lab.run_in("client", client_peer, lab.dns_servers, str(service), HINTED)
    assert peer == lab.server.v6[0]
