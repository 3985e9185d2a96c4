"""apr_async.websockets.connect against a real websockets server on loopback: plain and TLS,
falling back from a refused IPv6 address to IPv4, errors as OSError with the attempts."""

from __future__ import annotations

import errno
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from websockets.asyncio.server import ServerConnection, serve

from apr_async import AllAttemptsFailedError, PairContext
from apr_async.resolve.resolver import Resolver
from apr_async.websockets import connect
from http_servers import make_cert


async def echo(ws: ServerConnection) -> None:
    async for message in ws:
        await ws.send(f"{ws.remote_address[0]} {message}")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return make_cert(tmp_path_factory.mktemp("ws-ca"), ["ws.test"])


@pytest_asyncio.fixture
async def context(tmp_path: Path) -> AsyncIterator[PairContext]:
    # ws.test is ::1 (ranked first; nothing listens there) and 127.0.0.1 (the server).
    hosts = tmp_path / "hosts"
    hosts.write_text("::1 ws.test\n127.0.0.1 ws.test\n")
    resolver = Resolver(["127.0.0.1:9"], hosts_path=str(hosts))
    yield PairContext(resolver=resolver)
    await resolver.close()


@pytest.mark.parametrize("tls", [False, True])
async def test_echo_after_falling_back_to_ipv4(
    context: PairContext, certs: tuple[Path, Path, Path], tls: bool
) -> None:
    server_ssl = None
    client_kw: dict[str, object] = {}
    if tls:
        server_ssl = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_ssl.load_cert_chain(str(certs[1]), str(certs[2]))
        client_kw["ssl"] = ssl.create_default_context(cafile=str(certs[0]))
    async with serve(echo, "127.0.0.1", 0, ssl=server_ssl) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        scheme = "wss" if tls else "ws"
        async with connect(f"{scheme}://ws.test:{port}/", context=context, proxy=None,
                           **client_kw) as ws:  # type: ignore[arg-type]
            await ws.send("hi")
            assert await ws.recv() == "127.0.0.1 hi"
            assert ws.remote_address[0] == "127.0.0.1"
            assert (ws.transport.get_extra_info("ssl_object") is not None) == tls


async def test_refused_is_an_oserror_with_the_attempts(context: PairContext) -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    with pytest.raises(ConnectionRefusedError) as info:
        async with connect(f"ws://ws.test:{port}/", context=context, proxy=None):
            pass
    assert isinstance(info.value, AllAttemptsFailedError)
    assert info.value.errno == errno.ECONNREFUSED
    assert {pair.destination[0] for pair, _ in info.value.attempts} == {"::1", "127.0.0.1"}


def test_bad_arguments_fail_before_io() -> None:
    with pytest.raises(TypeError):
        connect("ws://ws.test/", context="nope")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        connect("ws://ws.test/", happy_eyeballs_delay=-1)
    with pytest.raises(ValueError):
        connect("ws://ws.test/", family=99)
