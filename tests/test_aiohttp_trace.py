"""AprConnector fires aiohttp's DNS and connection trace signals, observed with a real
TraceConfig against a real aiohttp server on loopback, names served by the package's DNS
server on loopback; the winning pair is exposed per connection."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest_asyncio
from aiohttp import web

from apr_async import PairContext
from apr_async.aiohttp import AprConnector
from apr_async.lab import DNSServer, ZoneEntry
from apr_async.resolve.resolver import Resolver


@pytest_asyncio.fixture
async def server_port() -> AsyncIterator[int]:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello")

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * 2**22)

    app = web.Application()
    app.router.add_get("/", hello)
    app.router.add_get("/big", big)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    yield sock.getsockname()[1]
    await runner.cleanup()


def recording_trace(events: list[tuple[str, Any]]) -> aiohttp.TraceConfig:
    config = aiohttp.TraceConfig()

    def hook(name: str) -> Any:
        async def record(session: Any, ctx: SimpleNamespace, params: Any) -> None:
            if name == "on_connection_create_end":
                events.append(("winner", getattr(ctx, "apr_pair", None)))
            events.append((name, getattr(params, "host", None)))
        return record

    for name in ("on_dns_resolvehost_start", "on_dns_resolvehost_end", "on_dns_cache_hit",
                 "on_dns_cache_miss", "on_connection_create_start",
                 "on_connection_create_end", "on_connection_reuseconn"):
        getattr(config, name).append(hook(name))
    return config


async def test_dns_and_connection_signals_and_the_winner(server_port: int) -> None:
    zone = {"web.test": ZoneEntry(a=("127.0.0.1",))}
    events: list[tuple[str, Any]] = []
    async with DNSServer(zone, "127.0.0.1", 0) as dns:
        resolver = Resolver([f"127.0.0.1:{dns.port}"], hosts_path=None, timeout=2.0)
        connector = AprConnector(context=PairContext(resolver=resolver), force_close=True)
        async with aiohttp.ClientSession(
            connector=connector, trace_configs=[recording_trace(events)]
        ) as session:
            url = f"http://web.test:{server_port}/"
            async with session.get(url) as first:
                assert await first.text() == "hello"
            cold = list(events)
            winner = cold.pop(4)[1]
            events.clear()
            async with session.get(url) as second:  # the answer is cached now
                assert second.status == 200
            warm = list(events)
            async with session.get(f"{url}big") as streaming:
                # the body is still unread, so the response holds its connection
                held = connector.winner(streaming)
                await streaming.read()
        await resolver.close()
    assert cold == [
        ("on_connection_create_start", None),
        ("on_dns_cache_miss", "web.test"),
        ("on_dns_resolvehost_start", "web.test"),
        ("on_dns_resolvehost_end", "web.test"),
        ("on_connection_create_end", None),
    ]
    assert [name for name, _ in warm] == [
        "on_connection_create_start", "on_dns_cache_hit", "winner", "on_connection_create_end"]
    assert held is not None and held.destination == winner.destination
    assert winner is not None
    assert winner.destination[:2] == ("127.0.0.1", server_port)
    assert isinstance(winner.reason, str) and winner.reason
    assert connector.winner(object()) is None


async def test_literal_fires_no_dns_signal(server_port: int) -> None:
    events: list[tuple[str, Any]] = []
    async with aiohttp.ClientSession(
        connector=AprConnector(context=PairContext()), trace_configs=[recording_trace(events)]
    ) as session, session.get(f"http://127.0.0.1:{server_port}/") as response:
        assert response.status == 200
    assert [name for name, _ in events] == [
        "on_connection_create_start", "winner", "on_connection_create_end"]
    assert events[1][1].destination[0] == "127.0.0.1"
