"""HTTPS records (RFC 9460) in open_connection, on loopback with the lab DNS server.

A TLS server listens on a random port only; 443 has nothing. Names in the zone point at
127.0.0.1/::1 and their HTTPS records say where the service really is.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from apr_async.connect.api import open_connection
from apr_async.connect.svcb_race import SvcbOptions
from apr_async.lab.dnsserver import DNSServer, ZoneEntry
from apr_async.lab.dnswire import RRType, https_rdata
from apr_async.resolve.pairs import PairContext
from apr_async.resolve.resolver import Resolver
from test_connect import make_test_ca

GUARD = 10.0
NAMES = ["stale.test", "svc.test", "alias.test", "cdn.test", "prio.test", "drop.test", "bad.test",
         "hints.test", "h3only.test", "h2.test", "plain.test", "many.test", "slow.test"]


class TLSServers:
    """Two TLS servers on loopback (ports ``a`` and ``b``); each greets with its port."""

    def __init__(self) -> None:
        self.servers: list[asyncio.Server] = []
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self, ctx: ssl.SSLContext) -> tuple[int, int]:
        ports = []
        for _ in range(2):
            server = await asyncio.start_server(self._greet, "127.0.0.1", 0, ssl=ctx)
            port = server.sockets[0].getsockname()[1]
            v6 = await asyncio.start_server(self._greet, "::1", port, ssl=ctx)
            self.servers += [server, v6]
            ports.append(port)
        return ports[0], ports[1]

    async def _greet(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        ssl_object = writer.get_extra_info("ssl_object")
        port = writer.get_extra_info("sockname")[1]
        writer.write(f"PORT {port} ALPN {ssl_object.selected_alpn_protocol()}\n".encode())
        await reader.read()
        writer.close()

    async def close(self) -> None:
        for server in self.servers:
            server.close()
        for writer in self.writers:
            writer.close()
        for server in self.servers:
            await server.wait_closed()


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return make_test_ca(tmp_path_factory.mktemp("ca"), NAMES)


@pytest_asyncio.fixture
async def ports(tls_files: tuple[Path, Path, Path]) -> AsyncIterator[tuple[int, int]]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(tls_files[1]), str(tls_files[2]))
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    servers = TLSServers()
    yield await servers.start(ctx)
    await servers.close()


def zone(a: int, b: int) -> dict[str, ZoneEntry]:
    lo4, lo6 = ("127.0.0.1",), ("::1",)
    return {
        "svc.test": ZoneEntry(a=lo4, https=(https_rdata(1, ".", port=a, ech=b"\x00\x01"),)),
        "alias.test": ZoneEntry(a=lo4, https=(https_rdata(0, "cdn.test"),)),
        "cdn.test": ZoneEntry(a=lo4, https=(https_rdata(1, ".", port=b),)),
        "prio.test": ZoneEntry(a=lo4, https=(https_rdata(2, port=a), https_rdata(1, port=b))),
        "drop.test": ZoneEntry(a=lo4, drop_https=True),
        "bad.test": ZoneEntry(a=lo4, https=(b"\x00\x01\x00\x00\x03\x00\x09",)),
        "many.test": ZoneEntry(a=lo4, https=(https_rdata(
            1, port=a, ipv4hint=tuple(f"10.{i // 250}.0.{i % 250}" for i in range(10_000))),)),
        # AAAA held back past the guard: only the hint can connect in time
        "hints.test": ZoneEntry(aaaa=lo6, delay_aaaa=30.0,
                                https=(https_rdata(1, port=a, ipv6hint=lo6),)),
        "h3only.test": ZoneEntry(a=lo4, https=(https_rdata(1, port=a, alpn=("h3",),
                                                           no_default_alpn=True),)),
        "h2.test": ZoneEntry(a=lo4, https=(https_rdata(1, port=a, alpn=("h2",)),)),
        "plain.test": ZoneEntry(a=lo4),
        # a stale hint: nothing listens on 127.0.0.2 (refused at once), the A record is right
        "stale.test": ZoneEntry(a=lo4, https=(https_rdata(1, port=a, ipv4hint=("127.0.0.2",)),)),
    }


@pytest_asyncio.fixture
async def dns(ports: tuple[int, int]) -> AsyncIterator[DNSServer]:
    async with DNSServer(zone(*ports)) as server:
        yield server


async def greeting(dns: DNSServer, host: str, port: int, **kw: Any) -> str:
    """Connect with a fresh resolver and context; the server's greeting line."""
    resolver = Resolver(dns.nameservers, hosts_path=None, timeout=0.5, tries=1)
    try:
        reader, writer = await open_connection(
            host, port, context=PairContext(resolver=resolver), timeout=GUARD, **kw)
        try:
            return (await reader.readline()).decode().strip()
        finally:
            writer.close()
            await writer.wait_closed()
    finally:
        await resolver.close()


@pytest.fixture
def client_ctx(tls_files: tuple[Path, Path, Path]) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(tls_files[0]))


async def test_port_from_the_record_reaches_the_only_listener(
    dns: DNSServer, ports: tuple[int, int], client_ctx: ssl.SSLContext
) -> None:
    line = await greeting(dns, "svc.test", 443, ssl=client_ctx)
    assert line.startswith(f"PORT {ports[0]} ")
    # the caller's context is used as it is: it offers no ALPN, so none was chosen
    assert line.endswith("ALPN None")
    assert {q.qtype for q in dns.queries if q.name == "svc.test"} >= {
        RRType.A, RRType.AAAA, RRType.HTTPS}


async def test_svcb_false_ignores_the_record(dns: DNSServer, client_ctx: ssl.SSLContext) -> None:
    with pytest.raises(ConnectionRefusedError):
        await greeting(dns, "svc.test", 443, ssl=client_ctx, svcb=False)
    assert not [q for q in dns.queries if q.qtype == RRType.HTTPS]


async def test_plain_tcp_needs_svcb_true(dns: DNSServer, ports: tuple[int, int],
                                         client_ctx: ssl.SSLContext) -> None:
    # not port 443: records are only used when asked for
    with pytest.raises(ConnectionRefusedError):
        await greeting(dns, "svc.test", 444, ssl=client_ctx)
    line = await greeting(dns, "svc.test", 444, ssl=client_ctx, svcb=True)
    assert line.startswith(f"PORT {ports[0]} ")


async def test_svcb_true_is_honoured_on_a_warm_single_address_name(
    dns: DNSServer, ports: tuple[int, int], client_ctx: ssl.SSLContext
) -> None:
    # A plain connection warms the one-pair fast path for (cdn.test, a); svcb=True on the same
    # name and port must still look the record up (port b), not take the fast path to a.
    resolver = Resolver(dns.nameservers, hosts_path=None, timeout=0.5, tries=1)
    context = PairContext(resolver=resolver)
    try:
        for svcb, expected in ((None, ports[0]), (None, ports[0]), (True, ports[1])):
            _, writer = await open_connection("cdn.test", ports[0], context=context,
                                              svcb=svcb)
            try:
                assert writer.get_extra_info("peername")[1] == expected
            finally:
                writer.close()
                await writer.wait_closed()
    finally:
        await resolver.close()


async def test_alias_chain_is_followed(dns: DNSServer, ports: tuple[int, int],
                                       client_ctx: ssl.SSLContext) -> None:
    line = await greeting(dns, "alias.test", 443, ssl=client_ctx)
    assert line.startswith(f"PORT {ports[1]} ")
    assert [q.name for q in dns.queries if q.qtype == RRType.HTTPS] == ["alias.test", "cdn.test"]


async def test_lowest_priority_number_first(dns: DNSServer, ports: tuple[int, int],
                                            client_ctx: ssl.SSLContext) -> None:
    assert (await greeting(dns, "prio.test", 443, ssl=client_ctx)).startswith(
        f"PORT {ports[1]} ")


async def test_hint_connects_before_the_aaaa_answer(
    dns: DNSServer, ports: tuple[int, int], client_ctx: ssl.SSLContext
) -> None:
    # The AAAA answer comes 30 s late (beyond the 10 s guard): the ipv6hint alone connects.
    line = await greeting(dns, "hints.test", 443, ssl=client_ctx)
    assert line.startswith(f"PORT {ports[0]} ")


async def test_stale_hint_gives_way_to_the_real_address(
    dns: DNSServer, ports: tuple[int, int], client_ctx: ssl.SSLContext
) -> None:
    line = await greeting(dns, "stale.test", 443, ssl=client_ctx)
    assert line.startswith(f"PORT {ports[0]} ")


@pytest.mark.parametrize("host", ["drop.test", "bad.test", "many.test", "h3only.test"])
async def test_unusable_answers_fall_back_to_the_origin(
    dns: DNSServer, ports: tuple[int, int], client_ctx: ssl.SSLContext, host: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # svcb=True on the server's own port: the origin's A/AAAA must still connect
    with caplog.at_level(logging.INFO):
        line = await greeting(dns, host, ports[1], ssl=client_ctx,
                              svcb=SvcbOptions(wait=0.05))
    assert line.startswith(f"PORT {ports[1]} ")
    assert any(host in r.getMessage() for r in caplog.records
               if r.name.startswith("apr_async")), [r.getMessage() for r in caplog.records]


async def test_alpn_on_the_library_context(
    dns: DNSServer, ports: tuple[int, int], tls_files: tuple[Path, Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # ssl=True: the library builds the context (trusting the test CA through the
    # environment), so it offers what the record and the application both speak.
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_files[0]))
    assert (await greeting(dns, "h2.test", 443, ssl=True)).endswith("ALPN http/1.1")
    line = await greeting(dns, "h2.test", 443, ssl=True, svcb=SvcbOptions(alpn=("h2",)))
    assert line == f"PORT {ports[0]} ALPN h2"


async def test_no_record_keeps_the_stock_behaviour(dns: DNSServer,
                                                   client_ctx: ssl.SSLContext) -> None:
    with pytest.raises(ConnectionRefusedError):
        await greeting(dns, "plain.test", 443, ssl=client_ctx)


def test_bad_svcb_argument_before_io() -> None:
    with pytest.raises(TypeError, match="svcb"):
        asyncio.run(open_connection("x.test", 443, ssl=True, svcb="yes"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="wait"):
        SvcbOptions(wait=5.0)
    with pytest.raises(ValueError, match="alpn"):
        SvcbOptions(alpn="h2")  # type: ignore[arg-type]


async def test_aiohttp_connector_follows_the_record(
    tls_files: tuple[Path, Path, Path], client_ctx: ssl.SSLContext
) -> None:
    import aiohttp
    from aiohttp import web

    from apr_async.aiohttp import AprConnector

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=f"hello {request.host}")

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(str(tls_files[1]), str(tls_files[2]))
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
    await site.start()
    port = runner.addresses[0][1]
    zone = {"svc.test": ZoneEntry(a=("127.0.0.1",), https=(https_rdata(1, port=port),)),
            "plain.test": ZoneEntry(a=("127.0.0.1",))}
    try:
        async with DNSServer(zone) as dns:
            resolver = Resolver(dns.nameservers, hosts_path=None, timeout=0.5, tries=1)
            connector = AprConnector(context=PairContext(resolver=resolver), ssl=client_ctx)
            async with aiohttp.ClientSession(connector=connector) as session:
                async with session.get("https://svc.test/") as response:
                    # the Host header stays the origin's (no port: the URL's is 443)
                    assert await response.text() == "hello svc.test"
                with pytest.raises(aiohttp.ClientConnectorError):
                    await session.get("https://plain.test/")
            off = AprConnector(context=PairContext(resolver=resolver), ssl=client_ctx,
                               svcb=False)
            async with aiohttp.ClientSession(connector=off) as session:
                with pytest.raises(aiohttp.ClientConnectorError):
                    await session.get("https://svc.test/")
            await resolver.close()
    finally:
        await runner.cleanup()


async def test_svcb_endpoints_explain_each_endpoint(dns: DNSServer, ports: tuple[int, int]) -> None:
    from apr_async import explain_https, svcb_endpoints

    resolver = Resolver(dns.nameservers, hosts_path=None, timeout=0.5, tries=1)
    try:
        answer = await svcb_endpoints("svc.test", context=PairContext(resolver=resolver))
        (endpoint,) = answer.endpoints
        assert (endpoint.target, endpoint.port, endpoint.alpn) == ("svc.test", ports[0],
                                                                   ("http/1.1",))
        assert endpoint.ech == b"\x00\x01"  # kept and exposed, never used
        text = "\n".join(explain_https(answer))
        assert f"svc.test:{ports[0]}" in text and "ech kept, not used" in text
        aliased = await svcb_endpoints("alias.test", context=PairContext(resolver=resolver))
        assert "alias chain: alias.test -> cdn.test" in explain_https(aliased)[0]
        none = explain_https(await svcb_endpoints("plain.test",
                                                  context=PairContext(resolver=resolver)))
        assert "A/AAAA only" in none[-1]
    finally:
        await resolver.close()


async def test_explain_text_svcb_shows_endpoints_then_the_fallback(
    dns: DNSServer, ports: tuple[int, int]
) -> None:
    from apr_async import explain_text

    resolver = Resolver(dns.nameservers, hosts_path=None, timeout=0.5, tries=1)
    try:
        context = PairContext(resolver=resolver)
        text = await explain_text("alias.test", 443, context=context, svcb=True)
        assert text.startswith("HTTPS records of alias.test:")
        assert "alias chain: alias.test -> cdn.test" in text
        endpoint_at = text.index("endpoint #1 ")
        fallback_at = text.index("alias.test itself (A/AAAA, the fallback):")
        assert endpoint_at < fallback_at
        # the endpoint's own pairs carry the record's port, the fallback's the asked one
        assert f"endpoint #1 cdn.test:{ports[1]}:" in text
        assert f"127.0.0.1:{ports[1]}" in text[endpoint_at:fallback_at]
        assert ":443" in text[fallback_at:]
        plain = await explain_text("alias.test", 443, context=context)
        assert "HTTPS records" not in plain
        with pytest.raises(TypeError):
            await explain_text("alias.test", 443, context=context, svcb=1)  # type: ignore[arg-type]
    finally:
        await resolver.close()


async def test_dropped_https_query_is_not_waited_for(
    dns: DNSServer, ports: tuple[int, int], client_ctx: ssl.SSLContext
) -> None:
    # The resolver would retry the unanswered type-65 query for 30 s; the connection's own
    # 5 s timeout would expire long before: success shows only the short bound was waited.
    resolver = Resolver(dns.nameservers, hosts_path=None, timeout=30.0, tries=1)
    try:
        reader, writer = await open_connection(
            "drop.test", ports[1], ssl=client_ctx, svcb=True, timeout=5.0,
            context=PairContext(resolver=resolver))
        assert (await reader.readline()).startswith(f"PORT {ports[1]} ".encode())
        writer.close()
        await writer.wait_closed()
    finally:
        await resolver.close()
    assert [q.qtype for q in dns.queries].count(RRType.HTTPS) == 1


async def test_https_answer_is_cached_for_its_ttl(
    dns: DNSServer, ports: tuple[int, int], client_ctx: ssl.SSLContext
) -> None:
    resolver = Resolver(dns.nameservers, hosts_path=None, timeout=0.5, tries=1)
    context = PairContext(resolver=resolver)
    try:
        for _ in range(3):
            reader, writer = await open_connection("alias.test", 443, ssl=client_ctx,
                                                   context=context, timeout=GUARD)
            assert (await reader.readline()).startswith(f"PORT {ports[1]} ".encode())
            writer.close()
            await writer.wait_closed()
        https = [q.name for q in dns.queries if q.qtype == RRType.HTTPS]
        assert https == ["alias.test", "cdn.test"]  # once each, then from the cache
        assert resolver.side_cached("alias.test", RRType.HTTPS) is not None
        resolver.clear_cache()
        assert resolver.side_cached("alias.test", RRType.HTTPS) is None
    finally:
        await resolver.close()
