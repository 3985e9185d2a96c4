"""The TCP relay (``apr_async.cli.forward``) on loopback: curl, half-close, load, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from apr_async.cli.endpoints import Endpoint, RelayRecord, parse_endpoint
from apr_async.cli.forward import Forwarder
from apr_async.tools import resolve_tool

HAS_V6 = socket.has_ipv6
try:
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as _s:
        _s.bind(("::1", 0))
except OSError:
    HAS_V6 = False

needs_v6 = pytest.mark.skipif(not HAS_V6, reason="no IPv6 loopback")


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def plain_connect(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(host, port)


async def start_http(host: str) -> tuple[web.AppRunner, int]:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=f"hello via {request.transport.get_extra_info('peername')[0]}")

    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=await request.read())

    app = web.Application()
    app.router.add_get("/", hello)
    app.router.add_post("/echo", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, port


async def curl(*args: str) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        resolve_tool("curl"),
        "-sS",
        "--max-time",
        "10",
        "--noproxy",
        "*",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out, err


needs_curl = pytest.mark.tools("curl")


# --- parsing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "listen", "expected"),
    [
        ("127.0.0.1:80", False, Endpoint("127.0.0.1", 80)),
        ("[::1]:443", False, Endpoint("::1", 443)),
        ("[fe80::1%eth0]:22", False, Endpoint("fe80::1%eth0", 22)),
        ("example.net:8080", False, Endpoint("example.net", 8080)),
        ("unix:/run/x.sock", False, Endpoint(path="/run/x.sock")),
        ("8080", True, Endpoint(None, 8080)),
        (":8080", True, Endpoint(None, 8080)),
        ("0", True, Endpoint(None, 0)),
    ],
)
def test_parse_endpoint(text: str, listen: bool, expected: Endpoint) -> None:
    assert parse_endpoint(text, listen=listen) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "host",
        "host:",
        "host:port",
        "::1:80",
        "[::1]80",
        "[nothost]:80",
        "h:70000",
        "h:0",
        "unix:",
        "a\x00b:1",
        ":80",
    ],
)
def test_parse_endpoint_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_endpoint(text)


def test_forwarder_rejects_bad_arguments_before_io() -> None:
    with pytest.raises(ValueError):
        Forwarder("127.0.0.1:0", "nohostport")
    with pytest.raises(ValueError):
        Forwarder("127.0.0.1:0", "h:1", buffer_size=10)
    with pytest.raises(TypeError):
        parse_endpoint(80)  # type: ignore[arg-type]


# --- curl through the relay ------------------------------------------------------------------


@needs_curl
@needs_v6
@pytest.mark.parametrize(
    ("listen_host", "server_host"), [("127.0.0.1", "::1"), ("::1", "127.0.0.1")]
)
async def test_curl_through_relay_crosses_families(listen_host: str, server_host: str) -> None:
    runner, port = await start_http(server_host)
    closed: list[RelayRecord] = []
    upstream = f"[{server_host}]:{port}" if ":" in server_host else f"{server_host}:{port}"
    listen = f"[{listen_host}]:0" if ":" in listen_host else f"{listen_host}:0"
    try:
        # The default connect: apr_async's open_connection, as the CLI relays.
        async with Forwarder(listen, upstream, on_close=closed.append) as fwd:
            lport = fwd.addresses[0][1]  # type: ignore[index]
            url_host = f"[{listen_host}]" if ":" in listen_host else listen_host
            rc, out, err = await curl(f"http://{url_host}:{lport}/")
            assert rc == 0, err
            # The server saw the relay's upstream family, the client used the other one.
            assert out == f"hello via {server_host}".encode()

            body = os.urandom(300_000)
            rc, out, err = await _curl_post(f"http://{url_host}:{lport}/echo", body)
            assert rc == 0, err
            assert out == body
            for _ in range(100):
                if len(closed) >= 2:
                    break
                await asyncio.sleep(0.02)
        assert fwd.active == 0
        assert len(closed) == 2
        assert all(r.error is None for r in closed), closed
        assert closed[1].bytes_up > len(body) and closed[1].bytes_down > len(body)
    finally:
        await runner.cleanup()


async def _curl_post(url: str, body: bytes) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        resolve_tool("curl"),
        "-sS",
        "--max-time",
        "10",
        "--noproxy",
        "*",
        "--data-binary",
        "@-",
        "-H",
        "Content-Type: application/octet-stream",
        url,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate(body)
    assert proc.returncode is not None
    return proc.returncode, out, err


# --- half-close, errors, backpressure --------------------------------------------------------


class TcpServer:
    """A loopback test server whose handler tasks are awaited on close (nothing left behind)."""

    def __init__(
        self,
        handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
        host: str = "127.0.0.1",
    ) -> None:
        self.handler = handler
        self.host = host
        self.tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def __aenter__(self) -> TcpServer:
        self.server = await asyncio.start_server(self._accepted, self.host, 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def _accepted(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        task = asyncio.create_task(self._run(r, w))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            await self.handler(r, w)
        except OSError:
            pass
        finally:
            w.transport.abort() if w.transport.get_write_buffer_size() else w.close()
            with contextlib.suppress(OSError):
                await w.wait_closed()

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        for task in self.tasks:
            task.cancel()
        if self.tasks:
            await asyncio.wait(set(self.tasks))
        await self.server.wait_closed()


async def reply_after_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read the whole request (until the client's half-close), then answer with its length."""
    data = await reader.read()
    writer.write(b"got %d bytes" % len(data))
    await writer.drain()


async def test_half_close_is_passed_on_and_the_reply_still_flows() -> None:
    async with (
        TcpServer(reply_after_eof) as server,
        Forwarder("127.0.0.1:0", f"127.0.0.1:{server.port}", connect=plain_connect) as fwd,
    ):
        lport = fwd.addresses[0][1]  # type: ignore[index]
        reader, writer = await asyncio.open_connection("127.0.0.1", lport)
        writer.write(b"x" * 100_000)
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 5) == b"got 100000 bytes"
        writer.close()
        await writer.wait_closed()


async def test_unix_upstream(tmp_path: Path) -> None:
    path = str(tmp_path / "up.sock")

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await reply_after_eof(r, w)
        w.close()

    server = await asyncio.start_unix_server(handler, path)
    async with server, Forwarder("127.0.0.1:0", f"unix:{path}") as fwd:
        lport = fwd.addresses[0][1]  # type: ignore[index]
        reader, writer = await asyncio.open_connection("127.0.0.1", lport)
        writer.write(b"abc")
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 5) == b"got 3 bytes"
        writer.close()
        await writer.wait_closed()


@pytest.mark.parametrize("plain", [True, False], ids=["asyncio", "apr_async"])
async def test_unreachable_upstream_closes_the_client_and_records_the_error(plain: bool) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    closed: list[RelayRecord] = []
    kwargs: dict[str, Any] = {"connect": plain_connect} if plain else {}
    async with Forwarder(
        "127.0.0.1:0", f"127.0.0.1:{dead}", on_close=closed.append, **kwargs
    ) as fwd:
        lport = fwd.addresses[0][1]  # type: ignore[index]
        reader, writer = await asyncio.open_connection("127.0.0.1", lport)
        try:
            data = await asyncio.wait_for(reader.read(), 5)
        except ConnectionResetError:
            data = b""
        assert data == b""
        writer.close()
        await writer.wait_closed()
    assert fwd.stats.failed == 1
    # One line for people: no internal class name, no asyncio "Connect call failed" wording.
    assert closed and closed[0].error == (
        "connection refused" if plain else f"connection refused by 127.0.0.1:{dead}"
    )


async def test_backpressure_bounds_what_the_relay_pulls_from_a_fast_upstream() -> None:
    total = 48 * 1024 * 1024
    sent = 0
    chunk = b"z" * 65536

    async def firehose(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        nonlocal sent
        while sent < total:
            w.write(chunk)
            sent += len(chunk)
            await w.drain()

    async with (
        TcpServer(firehose) as server,
        Forwarder("127.0.0.1:0", f"127.0.0.1:{server.port}", connect=plain_connect) as fwd,
    ):
        lport = fwd.addresses[0][1]  # type: ignore[index]
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", lport))
        reader, writer = await asyncio.open_connection(sock=sock)
        await asyncio.sleep(0.5)  # the client reads nothing: the upstream must stall
        # Kernel socket buffers on two hops plus the relay's bounded buffers: far below total.
        assert sent < total // 2, sent
        received = 0
        while received < total:
            data = await asyncio.wait_for(reader.read(1 << 20), 10)
            assert data
            received += len(data)
        assert received == total
        writer.close()
        await writer.wait_closed()


# --- load and shutdown -----------------------------------------------------------------------


async def echo_until_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.write_eof()


@needs_v6
async def test_200_concurrent_connections_without_loss_or_leak() -> None:
    sizes = [4096 + i * 97 for i in range(200)]

    async def one(size: int, lport: int) -> bool:
        reader, writer = await asyncio.open_connection("127.0.0.1", lport)
        payload = os.urandom(size)

        async def send() -> None:
            writer.write(payload)
            await writer.drain()
            writer.write_eof()

        sender = asyncio.create_task(send())
        got = await reader.read()
        await sender
        writer.close()
        await writer.wait_closed()
        return got == payload

    async with TcpServer(echo_until_eof, host="::1") as server:
        fds_before = _open_fds()
        tasks_before = len(asyncio.all_tasks())
        async with Forwarder("127.0.0.1:0", f"[::1]:{server.port}", backlog=256) as fwd:
            lport = fwd.addresses[0][1]  # type: ignore[index]
            results = await asyncio.wait_for(asyncio.gather(*(one(n, lport) for n in sizes)), 30)
            assert all(results)
            for _ in range(100):
                if fwd.active == 0:
                    break
                await asyncio.sleep(0.02)
            assert fwd.active == 0
            assert fwd.stats.accepted == 200 and fwd.stats.completed == 200
            assert fwd.stats.bytes_up == fwd.stats.bytes_down == sum(sizes)
        for _ in range(100):  # the server side of each upstream connection ends on its own
            if not server.tasks:
                break
            await asyncio.sleep(0.02)
        assert len(asyncio.all_tasks()) == tasks_before
        assert _open_fds() <= fds_before


async def test_aclose_cancels_stuck_relays_and_frees_everything() -> None:
    async def never_answers(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.read()  # returns once the relay aborts its upstream side

    async with TcpServer(never_answers) as server:
        fds_before = _open_fds()
        closed: list[RelayRecord] = []
        fwd = Forwarder(
            "127.0.0.1:0", f"127.0.0.1:{server.port}", connect=plain_connect, on_close=closed.append
        )
        await fwd.start()
        lport = fwd.addresses[0][1]  # type: ignore[index]
        clients = [await asyncio.open_connection("127.0.0.1", lport) for _ in range(5)]
        for _ in range(100):
            if len(server.tasks) == 5:
                break
            await asyncio.sleep(0.01)
        assert fwd.active == 5
        await asyncio.wait_for(fwd.aclose(grace=0.1), 5)
        assert fwd.active == 0 and len(closed) == 5
        assert all(r.error == "cancelled" for r in closed)
        for reader, writer in clients:  # the relay really closed the client side
            with contextlib.suppress(ConnectionResetError):
                assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
            await writer.wait_closed()
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", lport)
        for _ in range(100):
            if not server.tasks:
                break
            await asyncio.sleep(0.01)
        assert not server.tasks
        assert _open_fds() <= fds_before


@needs_v6
async def test_listen_on_a_port_alone_is_dual_stack() -> None:
    async with (
        TcpServer(reply_after_eof) as server,
        Forwarder("0", f"127.0.0.1:{server.port}", connect=plain_connect) as fwd,
    ):
        assert len(fwd.addresses) == 1
        lport = fwd.addresses[0][1]  # type: ignore[index]
        for host in ["127.0.0.1", "::1"]:
            reader, writer = await asyncio.open_connection(host, lport)
            writer.write_eof()
            assert await asyncio.wait_for(reader.read(), 5) == b"got 0 bytes"
            writer.close()
            await writer.wait_closed()


async def test_unix_listen_refuses_to_steal_a_live_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "relay.sock")
    async with TcpServer(reply_after_eof) as server:
        upstream = f"127.0.0.1:{server.port}"
        async with Forwarder(f"unix:{path}", upstream, connect=plain_connect):
            reader, writer = await asyncio.open_unix_connection(path)
            writer.write_eof()
            assert await asyncio.wait_for(reader.read(), 5) == b"got 0 bytes"
            writer.close()
            await writer.wait_closed()
            second = Forwarder(f"unix:{path}", upstream, connect=plain_connect)
            with pytest.raises(OSError, match="in use"):
                await second.start()
            await second.aclose()
        assert not (tmp_path / "relay.sock").exists()
