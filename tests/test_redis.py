"""redis-py's asyncio client through examples/redis_client.py's AprRedisConnection, against a
RESP stand-in on loopback (plain, and TLS through redis-py's own SSLConnection)."""

from __future__ import annotations

import asyncio
import importlib.util
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import pytest_asyncio
import redis.asyncio as redis
from redis.asyncio.connection import SSLConnection

from resp_standin import resp_handler, serve_resp
from test_connect import make_test_ca

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "redis_client.py"


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("redis_client_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest_asyncio.fixture
async def standin(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Any, list[str], int]]:
    store, peers = resp_handler()
    ctx: ssl.SSLContext | None = getattr(request, "param", None)
    server = await asyncio.start_server(
        lambda r, w: serve_resp(r, w, store, peers), "::1", 0, ssl=ctx)
    yield store, peers, server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


async def test_set_and_get_through_the_race(standin: tuple[Any, list[str], int]) -> None:
    store, peers, port = standin
    example = load_example()
    pool = redis.ConnectionPool(host="::1", port=port, connection_class=example.AprRedisConnection)
    client = redis.Redis(connection_pool=pool)
    try:
        await client.set("k", "v")
        assert await client.get("k") == b"v"
        assert await client.ping()
    finally:
        await client.aclose()
        await pool.aclose()
    assert store == {b"k": b"v"}
    assert peers == ["::1"]  # one pooled connection, made by apr_async


async def test_tls_through_redis_ssl_connection(tmp_path: Path) -> None:
    ca, cert, key = make_test_ca(tmp_path, ["::1"])
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(str(cert), str(key))
    store, peers = resp_handler()
    server = await asyncio.start_server(
        lambda r, w: serve_resp(r, w, store, peers), "::1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    example = load_example()

    class AprRedisSSLConnection(example.AprRedisConnection, SSLConnection):  # type: ignore[misc,name-defined]
        pass

    pool = redis.ConnectionPool(host="::1", port=port, connection_class=AprRedisSSLConnection,
                                ssl_ca_certs=str(ca))
    client = redis.Redis(connection_pool=pool)
    try:
        await client.set("secure", "yes")
        assert await client.get("secure") == b"yes"
    finally:
        await client.aclose()
        await pool.aclose()
        server.close()
        await server.wait_closed()
    assert peers == ["::1"]


async def test_refused_is_a_redis_connection_error() -> None:
    example = load_example()
    pool = redis.ConnectionPool(
        host="127.0.0.1", port=9, connection_class=example.AprRedisConnection)
    client = redis.Redis(connection_pool=pool)
    try:
        with pytest.raises(redis.ConnectionError):
            await client.ping()
    finally:
        await client.aclose()
        await pool.aclose()
