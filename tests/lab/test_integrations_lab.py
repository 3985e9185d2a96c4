"""httpx (HTTP/1.1 and HTTP/2 via hypercorn) and websockets through apr_async in the lab, with
IPv6 blackholed: once warm, each connects within the best path's RTT + 5 ms, where stock httpx
pays its Happy Eyeballs fallback; errors keep each library's own types."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from websockets.asyncio.server import ServerConnection, serve

from apr_async import PairContext
from apr_async.httpx import AprTransport, attempts_error
from apr_async.lab import Lab, Scenario
from apr_async.resolve.resolver import Resolver
from apr_async.websockets import connect as ws_connect
from http_servers import hypercorn_server, make_cert

pytestmark = [pytest.mark.lab, pytest.mark.asyncio(loop_scope="module")]

SLACK = 0.005  # the bound: best path's RTT + 5 ms
TRIES = 5  # the best of a few fresh connections: a loaded machine delays some of them


@dataclass
class Servers:
    http: int
    https: int
    ws: int
    ca: Path


def _dual_socket(lab: Lab) -> socket.socket:
    sock = lab.socket("server", socket.AF_INET6)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("::", 0))
    return sock


async def _echo(ws: ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def servers(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Servers]:
    ca, cert, key = make_cert(tmp_path_factory.mktemp("lab-ca"), ["*.lab.test"])
    ws_sock = _dual_socket(lab)
    ws_sock.listen(16)
    async with hypercorn_server(_dual_socket(lab)) as http, \
            hypercorn_server(_dual_socket(lab), cert=cert, key=key) as https, \
            serve(_echo, sock=ws_sock):
        yield Servers(http, https, ws_sock.getsockname()[1], ca)


@pytest.fixture(scope="module")
def lab_hosts(lab: Lab) -> Iterator[None]:
    """/etc/netns/<client ns>/hosts: ``ip netns exec`` shows it to stock clients as
    /etc/hosts, so they resolve the lab's dual-stack name without any DNS server outside."""
    directory = Path("/etc/netns") / lab.netns("client")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "hosts").write_text(
        f"{lab.server.v6[0]} {lab.names.dual}\n{lab.server.v4[0]} {lab.names.dual}\n")
    (directory / "resolv.conf").write_text(f"nameserver {lab.dns_v4}\n")
    yield
    shutil.rmtree(directory, ignore_errors=True)


def _tcp_rtt(address: str, port: int) -> float:
    """The best of a few plain TCP handshakes: the best path's RTT."""
    best = float("inf")
    for _ in range(TRIES):
        sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET)
        start = time.monotonic()
        sock.connect((address, port))
        best = min(best, time.monotonic() - start)
        sock.close()
    return best


async def _apr_httpx(url: str, dns: list[str], ca: str, http2: bool) -> dict[str, Any]:
    """Warm up (the fallback, once), then fresh connections: the best connect time."""
    resolver = Resolver(dns, hosts_path=None, timeout=2.0)
    context = PairContext(resolver=resolver)
    verify = ssl.create_default_context(cafile=ca)
    times: list[float] = []
    versions: set[str] = set()
    peers: set[str] = set()
    try:
        for attempt in range(TRIES + 1):
            marks: dict[str, float] = {}

            async def trace(event: str, info: dict[str, Any], marks: dict[str, float] = marks
                            ) -> None:
                marks[event] = time.monotonic()

            transport = AprTransport(context=context, verify=verify, http2=http2)
            async with httpx.AsyncClient(transport=transport, timeout=5.0) as client:
                response = await client.get(url, extensions={"trace": trace})
            if attempt:  # the first one was the warm-up
                times.append(marks["connection.connect_tcp.complete"]
                             - marks["connection.connect_tcp.started"])
                versions.add(response.http_version)
                peers.add(response.json()["peer"])
    finally:
        await resolver.close()
    return {"best": min(times), "versions": versions, "peers": peers}


@pytest.mark.usefixtures("lab_hosts")
@pytest.mark.parametrize("http2", [False, True], ids=["http1", "http2"])
async def test_httpx_warm_with_ipv6_blackholed(lab: Lab, servers: Servers, http2: bool) -> None:
    await lab.set_scenario(Scenario.v6_blackholed())
    port = servers.https if http2 else servers.http
    scheme = "https" if http2 else "http"
    url = f"{scheme}://{lab.names.dual}:{port}/"
    out = await lab.run_in("client", _apr_httpx, url, lab.dns_servers, str(servers.ca), http2)
    rtt = await lab.run_in("client", _async_rtt, lab.server.v4[0], servers.http)
    assert out["peers"] == {lab.client.v4}
    assert out["versions"] == {"HTTP/2" if http2 else "HTTP/1.1"}
    assert out["best"] <= rtt + SLACK, (out["best"], rtt)
    if not http2:  # stock httpx, same name, same path: it pays IPv6's timeout first
        stock = await lab.exec("client", sys.executable, str(Path(__file__).with_name(
            "stock_httpx_connect.py")), url, max_time=30, check=True)
        result = json.loads(stock.stdout)
        assert "connect" in result, result
        assert result["connect"] > 0.2, result  # anyio's 250 ms Happy Eyeballs delay at least


async def _async_rtt(address: str, port: int) -> float:
    return _tcp_rtt(address, port)


async def test_httpx_errors_keep_httpx_types(lab: Lab, servers: Servers) -> None:
    await lab.set_scenario(Scenario.v6_blackholed())

    async def run(url: str, dns: list[str]) -> BaseException | None:
        resolver = Resolver(dns, hosts_path=None, timeout=2.0)
        transport = AprTransport(context=PairContext(resolver=resolver))
        try:
            async with httpx.AsyncClient(transport=transport,
                                         timeout=httpx.Timeout(5.0, connect=0.5)) as client:
                await client.get(url)
        except httpx.HTTPError as exc:
            return exc
        finally:
            await resolver.close()
        return None

    error = await lab.run_in("client", run, f"http://{lab.names.v6_only}:{servers.http}/",
                             lab.dns_servers)
    assert isinstance(error, httpx.ConnectTimeout), error  # connect=0.5 is the race's timeout
    cause = attempts_error(error)
    assert cause is not None and isinstance(cause, TimeoutError)
    # every IPv6 source tried the one address, and each attempt was abandoned at the timeout
    assert {pair.destination[0] for pair, _ in cause.attempts} == {lab.server.v6[0]}
    assert all(isinstance(exc, TimeoutError) for _, exc in cause.attempts)


async def test_websockets_warm_with_ipv6_blackholed(lab: Lab, servers: Servers) -> None:
    await lab.set_scenario(Scenario.v6_blackholed())

    async def run(uri: str, dns: list[str]) -> dict[str, Any]:
        resolver = Resolver(dns, hosts_path=None, timeout=2.0)
        context = PairContext(resolver=resolver)
        times, peers = [], set()
        try:
            for attempt in range(TRIES + 1):
                start = time.monotonic()
                async with ws_connect(uri, context=context, proxy=None) as ws:
                    elapsed = time.monotonic() - start  # TCP + the WebSocket handshake
                    await ws.send("ping")
                    assert await ws.recv() == "ping"
                    peers.add(ws.local_address[0])
                if attempt:
                    times.append(elapsed)
        finally:
            await resolver.close()
        return {"best": min(times), "peers": peers}

    out = await lab.run_in("client", run, f"ws://{lab.names.dual}:{servers.ws}/",
                           lab.dns_servers)
    rtt = await lab.run_in("client", _async_rtt, lab.server.v4[0], servers.ws)
    assert out["peers"] == {lab.client.v4}
    # the handshake adds one more round trip (HTTP Upgrade) to the connect's
    assert out["best"] <= 2 * rtt + SLACK, (out["best"], rtt)


