"""Every script in examples/ runs, against lab targets passed by argument (never defaults)."""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import pytest_asyncio
from aiohttp import web

from apr_async.lab import EchoServer, ExecResult, Lab, Scenario

F = TypeVar("F", bound=Callable[..., Any])


def lab_test(fn: F) -> F:
    """A lab test: it shares the module's lab and event loop."""
    marked: F = pytest.mark.lab(pytest.mark.asyncio(loop_scope="module")(fn))
    return marked

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


async def example(
    lab: Lab, name: str, *argv: str, max_time: float = 60.0, **env: str
) -> ExecResult:
    """Run ``examples/NAME`` inside the lab's client namespace (``env``: extra variables)."""
    prefix = ["env", *(f"{k}={v}" for k, v in env.items())] if env else []
    return await lab.exec(
        "client", *prefix, sys.executable, str(EXAMPLES / name), *argv, max_time=max_time
    )


def ns_args(lab: Lab) -> list[str]:
    return [arg for ns in lab.dns_servers for arg in ("--nameserver", ns)]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def http_port(lab: Lab) -> AsyncIterator[int]:
    async def hello(request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peername")[0] if request.transport else "?"
        return web.Response(text=f"hello {peer.removeprefix('::ffff:')}")

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = lab.socket("server", socket.AF_INET6)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind(("::", 0))
    await web.SockSite(runner, sock).start()
    yield sock.getsockname()[1]
    await runner.cleanup()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def echo(lab: Lab) -> AsyncIterator[EchoServer]:
    server = await lab.start_echo_server()
    yield server
    await lab.stop_echo_server(server)


def test_every_example_is_tested() -> None:  # runs without the lab too
    tested = {"aiohttp_client.py", "outbound_server.py", "wait_for_service.py", "sync_shim.py",
              "httpx_client.py", "websocket_client.py", "prometheus_metrics.py",
              "redis_client.py"}
    assert {p.name for p in EXAMPLES.glob("*.py")} == tested


@lab_test
async def test_aiohttp_client(healthy_lab: Lab, http_port: int) -> None:
    lab = healthy_lab
    await lab.set_scenario(Scenario.v6_blackholed())
    url = f"http://{lab.names.dual}:{http_port}/"
    res = await example(lab, "aiohttp_client.py", url, *ns_args(lab))
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("200 OK")
    assert f"hello {lab.client.v4}" in res.stdout  # IPv4 won the race past the blackhole


@lab_test
async def test_wait_for_service(healthy_lab: Lab, echo: EchoServer) -> None:
    lab = healthy_lab
    res = await example(lab, "wait_for_service.py", lab.names.dual, str(echo.port), *ns_args(lab))
    assert res.returncode == 0, res.stderr
    assert "is up" in res.stdout
    res = await example(
        lab, "wait_for_service.py", lab.names.dual, "18799", "--timeout", "1", *ns_args(lab)
    )
    assert res.returncode == 1
    assert "timed out" in res.stderr


@lab_test
async def test_outbound_server(healthy_lab: Lab, echo: EchoServer) -> None:
    lab = healthy_lab
    await lab.set_scenario(Scenario.ula_source_trap())
    proc = await lab.popen(
        "client",
        sys.executable,
        str(EXAMPLES / "outbound_server.py"),
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        f"{lab.names.v6_only}:{echo.port}",
        *ns_args(lab),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        port = int(line.split()[3].rstrip(","))

        async def ask() -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"hello upstream\n")
            await writer.drain()
            data = await reader.read()
            writer.close()
            await writer.wait_closed()
            return data

        reply = await lab.run_in("client", ask)
        # the upstream (an echo server) answered, over the GUA source despite the ULA trap
        assert reply == f"via {lab.client.gua} -> {lab.server.v6[0]}: hello upstream\n".encode()
    finally:
        proc.terminate()
        _, err = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == 0, err.decode()


@lab_test
async def test_sync_shim(healthy_lab: Lab, echo: EchoServer) -> None:
    lab = healthy_lab
    await lab.set_scenario(Scenario.ula_source_trap())
    res = await example(
        lab,
        "sync_shim.py",
        lab.names.v6_only,
        str(echo.port),
        APR_ASYNC_NAMESERVERS=",".join(lab.dns_servers),
        APR_ASYNC_TARGETS=f"{lab.server.v4[1]}:{echo.port},[{lab.server.v6[1]}]:{echo.port}",
        APR_ASYNC_PROBE_INTERVAL="0.5",
    )
    assert res.returncode == 0, res.stderr
    assert f"connected from {lab.client.gua} to {lab.server.v6[0]}" in res.stdout
    assert "'GUA_ok': True" in res.stdout


@lab_test
async def test_httpx_client(healthy_lab: Lab, http_port: int) -> None:
    lab = healthy_lab
    await lab.set_scenario(Scenario.v6_blackholed())
    url = f"http://{lab.names.dual}:{http_port}/"
    res = await example(lab, "httpx_client.py", url, *ns_args(lab))
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("HTTP/1.1 200")
    assert f"won by {lab.client.v4} -> {lab.server.v4[0]}" in res.stdout
    assert f"hello {lab.client.v4}" in res.stdout


@lab_test
async def test_websocket_client(healthy_lab: Lab) -> None:
    from websockets.asyncio.server import ServerConnection, serve

    async def shout(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(str(message).upper())

    lab = healthy_lab
    await lab.set_scenario(Scenario.v6_blackholed())
    sock = lab.socket("server", socket.AF_INET6)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind(("::", 0))
    sock.listen(8)
    async with serve(shout, sock=sock):
        uri = f"ws://{lab.names.dual}:{sock.getsockname()[1]}/"
        res = await example(lab, "websocket_client.py", uri, "hello", *ns_args(lab))
    assert res.returncode == 0, res.stderr
    assert f"{lab.client.v4} -> {lab.server.v4[0]}: HELLO" in res.stdout


@lab_test
async def test_prometheus_metrics(healthy_lab: Lab, echo: EchoServer) -> None:
    lab = healthy_lab
    await lab.set_scenario(Scenario.v6_blackholed())
    res = await example(lab, "prometheus_metrics.py", lab.names.dual, str(echo.port),
                        "--count", "2", *ns_args(lab))
    assert res.returncode == 0, res.stderr
    assert 'apr_async_connections_total{family="ipv4"} 2.0' in res.stdout
    assert 'apr_async_fallbacks_total{family="ipv4"}' in res.stdout  # the cold race fell back


@lab_test
async def test_redis_client(healthy_lab: Lab) -> None:
    from resp_standin import resp_handler, serve_resp

    lab = healthy_lab
    await lab.set_scenario(Scenario.v6_blackholed())
    store, peers = resp_handler()
    sock = lab.socket("server", socket.AF_INET6)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind(("::", 0))
    server = await asyncio.start_server(lambda r, w: serve_resp(r, w, store, peers), sock=sock)
    try:
        port = sock.getsockname()[1]
        res = await example(lab, "redis_client.py", lab.names.dual, str(port), *ns_args(lab))
    finally:
        server.close()
        await server.wait_closed()
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "apr_async = raced"
    assert peers == [lab.client.v4]  # IPv4 past the blackhole
