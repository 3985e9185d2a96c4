"""AprConnector / AprResolver with a real aiohttp ClientSession against a real aiohttp server.

The server's sockets live in the lab's server namespace (served by this test's loop); each
client runs in the client namespace (``lab.run_in``) and reaches the server by name through
the lab DNS.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from apr_async.aiohttp import AprConnector, AprResolver
from apr_async.lab import Lab, Scenario
from apr_async.tools import resolve_tool

pytestmark = [pytest.mark.lab, pytest.mark.asyncio(loop_scope="module")]


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def test_ca(directory: Path, names: list[str]) -> tuple[Path, Path, Path]:
    """A throw-away CA and server certificate (openssl): (ca, cert, key)."""
    ca_key, ca = directory / "ca.key", directory / "ca.pem"
    key, csr, cert = directory / "srv.key", directory / "srv.csr", directory / "srv.pem"
    ext = directory / "san.ext"
    ext.write_text(
        "subjectAltName=" + ",".join(f"IP:{n}" if _is_ip(n) else f"DNS:{n}" for n in names) + "\n"
    )
    for argv in (
        f"req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout {ca_key} "
        f"-out {ca} -days 1 -subj /CN=apr-aiohttp-test-CA",
        f"req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout {key} -out {csr} "
        "-subj /CN=apr-aiohttp-test",
        f"x509 -req -in {csr} -CA {ca} -CAkey {ca_key} -CAcreateserial -out {cert} -days 1 "
        f"-extfile {ext}",
    ):
        subprocess.run([resolve_tool("openssl"), *argv.split()], check=True,
                       capture_output=True, timeout=60)
    return ca, cert, key


def _unmapped(address: str) -> str:
    """The dual-stack server sees IPv4 peers as ::ffff:a.b.c.d; give the IPv4 text."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return address


test_ca.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


@dataclass
class WebServer:
    """The lab's HTTP (and HTTPS) server: what it saw, per request."""

    http_port: int = 0
    https_port: int = 0
    ca: Path | None = None
    seen: list[dict[str, Any]] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def web_server(
    lab: Lab, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[WebServer]:
    state = WebServer()
    ca, cert, key = test_ca(tmp_path_factory.mktemp("aiohttp-ca"), ["*.lab.test"])
    state.ca = ca
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(str(cert), str(key))

    async def whoami(request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        local = request.transport.get_extra_info("sockname") if request.transport else None
        info = {
            "peer": _unmapped(peer[0]) if peer else None,
            "peer_port": peer[1] if peer else None,
            "local": _unmapped(local[0]) if local else None,
            "url": str(request.url),
            "raw_path": request.raw_path,
        }
        state.seen.append(info)
        state.in_flight += 1
        state.max_in_flight = max(state.max_in_flight, state.in_flight)
        try:
            await asyncio.sleep(float(request.query.get("sleep", "0")))
        finally:
            state.in_flight -= 1
        return web.json_response(info)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", whoami)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    sites = []
    for ctx in (None, server_ctx):
        sock = lab.socket("server", socket.AF_INET6)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("::", 0))
        site = web.SockSite(runner, sock, ssl_context=ctx)
        await site.start()
        sites.append(sock.getsockname()[1])
    state.http_port, state.https_port = sites
    yield state
    await runner.cleanup()


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


async def fetch(
    urls: list[str],
    nameservers: list[str],
    *,
    ca: str | None = None,
    connector_kw: dict[str, Any] | None = None,
    timeout: aiohttp.ClientTimeout | None = None,  # noqa: ASYNC109 - a session setting
    proxy: str | None = None,
    concurrent: bool = False,
) -> dict[str, Any]:
    """Run in the client namespace: GET each URL through one session with an AprConnector."""
    kw = dict(connector_kw or {})
    if ca is not None:
        kw["ssl"] = ssl.create_default_context(cafile=ca)
    results: list[Any] = []
    start = time.monotonic()
    connector = AprConnector(nameservers=nameservers, **kw)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout or aiohttp.ClientTimeout(total=10)
    ) as session:

        async def one(url: str) -> Any:
            try:
                async with session.get(url, proxy=proxy) as resp:
                    return {"status": resp.status, "json": await resp.json(), "t": time.monotonic()}
            except Exception as exc:  # reported to the test, which asserts on the type
                return {"error": exc, "t": time.monotonic()}

        if concurrent:
            results = list(await asyncio.gather(*(one(u) for u in urls)))
        else:
            for url in urls:
                results.append(await one(url))
    return {"results": results, "elapsed": time.monotonic() - start}


def _url(server: WebServer, name: str, path: str = "/whoami", *, https: bool = False) -> str:
    scheme, port = ("https", server.https_port) if https else ("http", server.http_port)
    return f"{scheme}://{name}:{port}{path}"


async def test_healthy_by_name_prefers_ipv6(healthy_lab: Lab, web_server: WebServer) -> None:
    lab = healthy_lab
    out = await lab.run_in("client", fetch, [_url(web_server, lab.names.dual)], lab.dns_servers)
    (res,) = out["results"]
    assert res.get("status") == 200, res
    assert res["json"]["peer"] == lab.client.gua


async def _settled_fds() -> int:
    # the server side of closed keep-alive connections closes on this loop a moment later
    await asyncio.sleep(0.3)
    return _fd_count()


async def test_sessions_leave_no_fd_behind(healthy_lab: Lab, web_server: WebServer) -> None:
    lab = healthy_lab
    urls = [_url(web_server, lab.names.dual), _url(web_server, lab.names.dual, https=True)]
    await lab.run_in("client", fetch, urls, lab.dns_servers, ca=str(web_server.ca))  # warm-up
    before = await _settled_fds()
    for _ in range(5):
        out = await lab.run_in("client", fetch, urls, lab.dns_servers, ca=str(web_server.ca))
        assert [r.get("status") for r in out["results"]] == [200, 200], out["results"]
    assert await _settled_fds() <= before


async def test_ipv6_blackholed_falls_back_to_ipv4(healthy_lab: Lab, web_server: WebServer) -> None:
    lab = healthy_lab
    await lab.set_scenario(Scenario.v6_blackholed())
    out = await lab.run_in(
        "client",
        fetch,
        [_url(web_server, lab.names.dual)],
        lab.dns_servers,
        timeout=aiohttp.ClientTimeout(total=10, sock_connect=5),
    )
    (res,) = out["results"]
    assert res.get("status") == 200, res
    assert res["json"]["peer"] == lab.client.v4
    # Happy Eyeballs: IPv4 after one Connection Attempt Delay, not after a SYN timeout.
    assert out["elapsed"] < 3.0, out["elapsed"]


async def test_ula_source_trap_uses_the_gua_source(healthy_lab: Lab, web_server: WebServer) -> None:
    lab = healthy_lab
    await lab.set_scenario(Scenario.ula_source_trap())
    out = await lab.run_in("client", fetch, [_url(web_server, lab.names.v6_only)], lab.dns_servers)
    (res,) = out["results"]
    assert res.get("status") == 200, res
    assert res["json"]["peer"] == lab.client.gua


async def test_https_with_test_ca_and_keep_alive_reuse(
    healthy_lab: Lab, web_server: WebServer
) -> None:
    lab = healthy_lab
    url = _url(web_server, lab.names.dual, https=True)
    out = await lab.run_in("client", fetch, [url, url, url], lab.dns_servers, ca=str(web_server.ca))
    statuses = [r.get("status") for r in out["results"]]
    assert statuses == [200, 200, 200], out["results"]
    # keep-alive: one TCP connection (one client port) carried all three requests
    assert len({r["json"]["peer_port"] for r in out["results"]}) == 1


async def test_tls_verification_failure_is_a_certificate_error(
    healthy_lab: Lab, web_server: WebServer
) -> None:
    lab = healthy_lab
    url = _url(web_server, lab.names.dual, https=True)
    out = await lab.run_in("client", fetch, [url], lab.dns_servers)  # system CAs only
    (res,) = out["results"]
    assert isinstance(res.get("error"), aiohttp.ClientConnectorCertificateError), res


@pytest.mark.parametrize("limit", ["limit_per_host", "limit"])
async def test_connection_limits_serialise_requests(
    healthy_lab: Lab, web_server: WebServer, limit: str
) -> None:
    lab = healthy_lab
    web_server.max_in_flight = 0
    # Two hosts: limit_per_host=1 alone would let one request per host run at once.
    names = [lab.names.dual] if limit == "limit_per_host" else [lab.names.dual, lab.names.v4_only]
    urls = [_url(web_server, name, "/whoami?sleep=0.1") for name in names] * 2
    out = await lab.run_in(
        "client", fetch, urls, lab.dns_servers, connector_kw={limit: 1}, concurrent=True
    )
    assert [r.get("status") for r in out["results"]] == [200] * len(urls), out["results"]
    assert web_server.max_in_flight == 1


async def test_fqdn_with_a_trailing_dot(healthy_lab: Lab, web_server: WebServer) -> None:
    lab = healthy_lab
    url = _url(web_server, lab.names.dual + ".", https=True)
    out = await lab.run_in("client", fetch, [url], lab.dns_servers, ca=str(web_server.ca))
    (res,) = out["results"]
    assert res.get("status") == 200, res  # resolved, and the certificate matched the name
    assert res["json"]["peer"] == lab.client.gua


async def test_ranked_order_is_not_rotated_between_connections(
    healthy_lab: Lab, web_server: WebServer
) -> None:
    lab = healthy_lab
    url = _url(web_server, lab.names.multi)
    out = await lab.run_in(
        "client", fetch, [url] * 4, lab.dns_servers, connector_kw={"force_close": True}
    )
    assert [r.get("status") for r in out["results"]] == [200] * 4, out["results"]
    # four fresh connections, one destination: the best-ranked one every time
    assert len({r["json"]["peer_port"] for r in out["results"]}) == 4
    assert len({r["json"]["local"] for r in out["results"]}) == 1


async def test_sock_connect_timeout_applies_to_the_race(
    healthy_lab: Lab, web_server: WebServer
) -> None:
    lab = healthy_lab
    out = await lab.run_in(
        "client",
        fetch,
        [_url(web_server, lab.names.all_dead)],
        lab.dns_servers,
        timeout=aiohttp.ClientTimeout(total=10, sock_connect=0.5),
    )
    (res,) = out["results"]
    assert isinstance(res.get("error"), aiohttp.ConnectionTimeoutError), res
    assert out["elapsed"] < 3.0


async def test_total_timeout_applies(healthy_lab: Lab, web_server: WebServer) -> None:
    lab = healthy_lab
    out = await lab.run_in(
        "client",
        fetch,
        [_url(web_server, lab.names.dual, "/whoami?sleep=3")],
        lab.dns_servers,
        timeout=aiohttp.ClientTimeout(total=0.5),
    )
    (res,) = out["results"]
    assert isinstance(res.get("error"), asyncio.TimeoutError), res
    assert out["elapsed"] < 2.5


async def test_nxdomain_is_a_dns_error(healthy_lab: Lab, web_server: WebServer) -> None:
    lab = healthy_lab
    out = await lab.run_in("client", fetch, [_url(web_server, lab.names.nxdomain)], lab.dns_servers)
    (res,) = out["results"]
    assert isinstance(res.get("error"), aiohttp.ClientConnectorDNSError), res


async def test_http_proxy_is_reached_through_apr(healthy_lab: Lab, web_server: WebServer) -> None:
    lab = healthy_lab
    await lab.set_scenario(Scenario.v6_blackholed())
    # The lab server plays the proxy: it answers the absolute-form request itself.
    proxy = f"http://{lab.names.dual}:{web_server.http_port}"
    target = "http://upstream.example.invalid/resource"
    out = await lab.run_in("client", fetch, [target], lab.dns_servers, proxy=proxy)
    (res,) = out["results"]
    assert res.get("status") == 200, res
    assert res["json"]["raw_path"] == target  # the proxy got the absolute URL
    assert res["json"]["peer"] == lab.client.v4  # the proxy connection raced past IPv6


async def resolve_with_apr_resolver(host: str, nameservers: list[str]) -> list[Any]:
    resolver = AprResolver(nameservers=nameservers)
    try:
        return await resolver.resolve(host, 80, family=socket.AF_UNSPEC)
    finally:
        await resolver.close()


async def test_apr_resolver_ranks_destinations(healthy_lab: Lab) -> None:
    lab = healthy_lab
    results = await lab.run_in(
        "client", resolve_with_apr_resolver, lab.names.multi, lab.dns_servers
    )
    hosts = [r["host"] for r in results]
    assert set(hosts) == set(lab.server.v4) | set(lab.server.v6)
    assert len(hosts) == len(set(hosts))
    assert ":" in hosts[0]  # healthy dual-stack: IPv6 first
    assert all(r["port"] == 80 and r["hostname"] == lab.names.multi for r in results)


async def fetch_with_apr_resolver(url: str, nameservers: list[str]) -> int:
    connector = aiohttp.TCPConnector(
        resolver=AprResolver(nameservers=nameservers), use_dns_cache=False
    )
    async with aiohttp.ClientSession(connector=connector) as session, session.get(url) as r:
        return r.status


async def test_apr_resolver_with_stock_connector(healthy_lab: Lab, web_server: WebServer) -> None:
    lab = healthy_lab
    status = await lab.run_in(
        "client", fetch_with_apr_resolver, _url(web_server, lab.names.dual), lab.dns_servers
    )
    assert status == 200


async def fetch_with_default_service(url: str, nameservers: list[str], target: str) -> Any:
    from apr_async.config import Config
    from apr_async.probe import default as service_module
    from apr_async.probe.default import configure, default_service

    configure(Config(targets=(target,), nameservers=tuple(nameservers), probe_interval=5.0))
    service = default_service()
    try:
        async with (
            aiohttp.ClientSession(connector=AprConnector()) as session,
            session.get(url) as response,
        ):
            status = response.status
        methods = {m.destination: m.methods for m in service.measurements()}
        return status, methods
    finally:
        await service_module.aclose_default()
        configure()  # back to the environment's (test) configuration: later tests share it


async def test_default_service_ranks_and_learns_from_connector_attempts(
    healthy_lab: Lab, web_server: WebServer
) -> None:
    lab = healthy_lab
    status, methods = await lab.run_in(
        "client",
        fetch_with_default_service,
        _url(web_server, lab.names.dual),
        lab.dns_servers,
        f"{lab.server.v4[2]}:{web_server.http_port}",
    )
    assert status == 200  # resolved through the service's (lab) nameservers
    assert "passive" in methods.get(lab.server.v6[0], ()), methods
