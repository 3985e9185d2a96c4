"""TLS terminated by start_server behind a PROXY-protocol proxy that passes TLS through."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from apr_async.server import build_v1, build_v2, real_peername, start_server
from apr_async.tools import resolve_tool

from .conftest import (
    free_port,
    needs_haproxy,
    needs_v6,
    open_fds,
    run_haproxy,
    send_and_half_close,
    wait_closed_by_server,
)

pytestmark = pytest.mark.tools("openssl")

TRUST_LOOPBACK = {"trusted_proxies": ["127.0.0.0/8", "::1"]}


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A self-signed P-256 certificate for ``localhost`` (key and cert in one PEM file)."""
    pem = tmp_path_factory.mktemp("tls") / "localhost.pem"
    subprocess.run(
        [resolve_tool("openssl"), "req", "-x509", "-newkey", "ec", "-pkeyopt",
         "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost", "-keyout", str(pem), "-out", str(pem)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return pem


@pytest.fixture
def server_context(certificate: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(certificate)
    return ctx


@pytest.fixture
def client_context(certificate: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(certificate))


async def _echo_peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer one line with the real peer, the TLS version, and the line itself."""
    try:
        line = await reader.readline()
        host, port = real_peername(writer)
        tls = writer.get_extra_info("ssl_object")
        version = tls.version() if tls is not None else "plain"
        writer.write(f"{host} {port} {version} ".encode() + line)
        await writer.drain()
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


@contextlib.asynccontextmanager
async def tls_server(context: ssl.SSLContext, **kwargs: object) -> AsyncIterator[int]:
    options = {"proxy_protocol": "auto", **TRUST_LOOPBACK, **kwargs}
    server = await start_server(_echo_peer, "127.0.0.1", 0, ssl=context, **options)  # type: ignore[arg-type]
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def _tls_request_after(port: int, first: bytes, line: bytes, ctx: ssl.SSLContext) -> bytes:
    """Send ``first`` and the ClientHello in ONE write, then make a TLS request of ``line``.

    Driving TLS through memory BIOs is what lets the test put both in a single segment: a
    server that read a byte past the PROXY header would hand the TLS layer a ClientHello
    with its start missing, and the handshake would fail.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")

    async def receive() -> bool:
        data = await reader.read(65536)
        incoming.write(data) if data else incoming.write_eof()
        return bool(data)

    try:
        with contextlib.suppress(ssl.SSLWantReadError):
            tls.do_handshake()
        writer.write(first + outgoing.read())
        while True:
            if not await receive():
                raise ConnectionResetError("the server closed the connection in the handshake")
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                writer.write(outgoing.read())
        tls.write(line)
        writer.write(outgoing.read())
        answer = b""
        while True:
            try:
                chunk = tls.read(65536)
                if not chunk:
                    return answer
                answer += chunk
                continue
            except ssl.SSLWantReadError:
                pass
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return answer
            if not await receive():
                return answer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


@pytest.mark.parametrize("version", ["v1", "v2"])
async def test_tls_after_a_header_in_the_same_segment(
    version: str, server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    src, dst = ("203.0.113.5", 40000), ("198.51.100.1", 443)
    header = build_v1(src, dst) if version == "v1" else build_v2(src, dst)
    async with tls_server(server_context) as port:
        answer = await _tls_request_after(port, header, b"hello\n", client_context)
    assert answer.startswith(b"203.0.113.5 40000 TLSv1.")
    assert answer.endswith(b" hello\n")


async def test_failed_handshake_closes_without_callback(
    server_context: ssl.SSLContext, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="apr_async.server")
    before = open_fds()
    header = build_v2(("203.0.113.5", 1), ("198.51.100.1", 443))
    async with tls_server(server_context) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        send_and_half_close(writer, header + b"GET / HTTP/1.0\r\n\r\n")  # plain text, not TLS
        assert await wait_closed_by_server(reader, 5) == b""
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    await asyncio.sleep(0)
    assert open_fds() == before
    assert "TLS handshake with" in caplog.text  # logged; _echo_peer would have answered


async def test_untrusted_peer_is_refused_before_the_handshake(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    header = build_v1(("8.8.8.8", 53), ("127.0.0.1", 443))
    async with tls_server(server_context, trusted_proxies=["127.0.0.2"]) as port:
        with pytest.raises(ConnectionError):
            await _tls_request_after(port, header, b"hello\n", client_context)


# --- through a real HAProxy in TCP mode (TLS passed through, PROXY header prepended) -------

HAPROXY_TCP = """
global
    maxconn 64
defaults
    mode tcp
    timeout connect 2s
    timeout client 10s
    timeout server 10s
listen v1
    bind 127.0.0.1:{v1}
    {bind6_v1}
    server app 127.0.0.1:{app} send-proxy
listen v2
    bind 127.0.0.1:{v2}
    {bind6_v2}
    server app 127.0.0.1:{app} send-proxy-v2
"""


@needs_haproxy
@pytest.mark.parametrize("frontend", ["v1", "v2"])
@pytest.mark.parametrize(
    ("host", "source"),
    [
        pytest.param("127.0.0.1", "127.0.0.3", id="ipv4"),
        pytest.param("::1", "::1", id="ipv6", marks=needs_v6),
    ],
)
async def test_tls_client_through_haproxy_send_proxy(
    tmp_path: Path,
    frontend: str,
    host: str,
    source: str,
    *,
    server_context: ssl.SSLContext,
    client_context: ssl.SSLContext,
) -> None:
    ports = {"v1": free_port(), "v2": free_port()}
    binds = {f"bind6_{name}": f"bind ipv6@::1:{p}" for name, p in ports.items()}
    async with tls_server(server_context, trusted_proxies=["127.0.0.1"]) as app:
        config = HAPROXY_TCP.format(app=app, **ports, **binds)
        with run_haproxy(config, tmp_path, list(ports.values())):
            reader, writer = await asyncio.open_connection(
                host,
                ports[frontend],
                ssl=client_context,
                server_hostname="localhost",
                local_addr=(source, 0),
            )
            client = writer.get_extra_info("sockname")[:2]
            try:
                writer.write(b"through haproxy\n")
                answer = await asyncio.wait_for(reader.read(), 10)
            finally:
                writer.close()
                with contextlib.suppress(ConnectionError, ssl.SSLError):
                    await writer.wait_closed()
    peer, port, version, rest = answer.split(b" ", 3)
    assert (peer.decode(), int(port)) == client
    assert version.startswith(b"TLSv1.") and rest == b"through haproxy\n"
