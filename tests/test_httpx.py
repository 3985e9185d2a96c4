"""httpx through AprTransport / AprNetworkBackend against a real hypercorn server on loopback:
HTTP/1.1 with keep-alive, HTTP/2 over TLS (ALPN), httpx's own error types with apr_async's
attempts behind them, bad arguments refused before any I/O."""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import httpcore
import httpx
import pytest
import pytest_asyncio

from apr_async import PairContext
from apr_async.httpx import AprNetworkBackend, AprTransport, attempts_error
from http_servers import hypercorn_server, make_cert


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return make_cert(tmp_path_factory.mktemp("httpx-ca"), ["127.0.0.1", "::1", "localhost"])


def _listener(family: int, host: str) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    return sock


@pytest_asyncio.fixture
async def plain_port() -> AsyncIterator[int]:
    async with hypercorn_server(_listener(socket.AF_INET, "127.0.0.1")) as port:
        yield port


@pytest_asyncio.fixture
async def tls_port(certs: tuple[Path, Path, Path]) -> AsyncIterator[int]:
    _, cert, key = certs
    async with hypercorn_server(_listener(socket.AF_INET6, "::1"), cert=cert, key=key) as port:
        yield port


async def test_http1_keep_alive_and_winning_pair(plain_port: int) -> None:
    transport = AprTransport(context=PairContext())
    async with httpx.AsyncClient(transport=transport) as client:
        first = await client.get(f"http://127.0.0.1:{plain_port}/")
        second = await client.get(f"http://127.0.0.1:{plain_port}/")
        stream = first.extensions["network_stream"]
        pair = stream.get_extra_info("apr_pair")
    assert first.status_code == second.status_code == 200
    assert first.json()["http_version"] == "1.1"
    # keep-alive: both requests on the one pooled connection
    assert first.json()["peer_port"] == second.json()["peer_port"]
    assert pair is not None and pair.destination[:2] == ("127.0.0.1", plain_port)
    assert isinstance(pair.reason, str) and pair.reason


async def test_http2_over_tls(tls_port: int, certs: tuple[Path, Path, Path]) -> None:
    ca = ssl.create_default_context(cafile=str(certs[0]))
    transport = AprTransport(context=PairContext(), verify=ca, http2=True)
    async with httpx.AsyncClient(transport=transport) as client:
        response = await client.get(f"https://[::1]:{tls_port}/")
    assert response.status_code == 200
    assert response.http_version == "HTTP/2"
    assert response.json()["http_version"] == "2"
    assert response.json()["peer"] == "::1"


async def test_refused_is_httpx_connect_error_with_the_attempts() -> None:
    sock = _listener(socket.AF_INET, "127.0.0.1")
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there any more: ECONNREFUSED
    transport = AprTransport(context=PairContext())
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(httpx.ConnectError) as info:
            await client.get(f"http://127.0.0.1:{port}/")
    error = attempts_error(info.value)
    assert error is not None
    assert isinstance(error, ConnectionRefusedError)
    assert error.errno == errno.ECONNREFUSED
    assert [pair.destination[0] for pair, _ in error.attempts] == ["127.0.0.1"]


async def test_backend_raises_httpcore_types() -> None:
    # The discard port on loopback refuses: httpcore's ConnectError, apr_async's error inside.
    backend = AprNetworkBackend(context=PairContext())
    with pytest.raises(httpcore.ConnectError) as info:
        await backend.connect_tcp("127.0.0.1", 9, timeout=0.5)
    error = attempts_error(info.value)
    assert error is not None and error.errno == errno.ECONNREFUSED


@pytest.mark.parametrize(
    ("kwargs", "exc"),
    [
        ({"happy_eyeballs_delay": -1}, ValueError),
        ({"interleave": 0}, ValueError),
        ({"nameservers": "127.0.0.1"}, TypeError),
        ({"context": "nope"}, TypeError),
        ({"family": 99}, ValueError),
        ({"context": PairContext(), "nameservers": ["127.0.0.1"]}, ValueError),
    ],
)
def test_bad_arguments_fail_before_io(kwargs: dict[str, object], exc: type[Exception]) -> None:
    with pytest.raises(exc):
        AprTransport(**kwargs)  # type: ignore[arg-type]


class Recorder:
    """An AttemptRecorder that keeps the destinations the races attempted."""

    def __init__(self) -> None:
        self.ports: list[int] = []

    def record_attempt(self, pair: object, port: int, ok: bool, rtt: float | None,
                       errno: int | None) -> None:
        self.ports.append(port)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def _connect_proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A minimal HTTP CONNECT proxy: the tunnel httpx uses for https:// through a proxy."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode()
    method, target, _ = head.split("\r\n", 1)[0].split(" ", 2)
    assert method == "CONNECT", head
    host, _, port = target.rpartition(":")
    up_reader, up_writer = await asyncio.open_connection(host.strip("[]"), int(port))
    writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
    await writer.drain()
    await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))


async def test_https_through_a_connect_proxy(
    tls_port: int, certs: tuple[Path, Path, Path]
) -> None:
    proxy = await asyncio.start_server(_connect_proxy, "127.0.0.1", 0)
    proxy_port = proxy.sockets[0].getsockname()[1]
    recorder = Recorder()
    ca = ssl.create_default_context(cafile=str(certs[0]))
    transport = AprTransport(context=PairContext(), service=recorder, verify=ca,
                             proxy=f"http://127.0.0.1:{proxy_port}")
    try:
        async with httpx.AsyncClient(transport=transport) as client:
            response = await client.get(f"https://[::1]:{tls_port}/")
    finally:
        proxy.close()
        await proxy.wait_closed()
    assert response.status_code == 200
    assert response.json()["peer"] == "::1"  # the proxy's connection to the server
    # the connection to the proxy was apr_async's race; TLS ran inside the tunnel
    assert recorder.ports == [proxy_port]
