"""Shared helpers for the server tests: fd accounting, free ports, a HAProxy runner."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from apr_async.server import proxy_header, real_peername, start_server
from apr_async.server.proxy_header import ProxyHeader
from apr_async.tools import resolve_tool


def _v6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


HAS_V6 = _v6_loopback()
needs_v6 = pytest.mark.skipif(not HAS_V6, reason="no IPv6 loopback")
needs_haproxy = pytest.mark.tools("haproxy")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def free_port(family: socket.AddressFamily = socket.AF_INET) -> int:
    host = "127.0.0.1" if family == socket.AF_INET else "::1"
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Seen:
    """What the server callback observed for one connection."""

    peer: tuple[str, int]
    socket_peer: tuple[str, int]
    header: ProxyHeader | None
    data: bytes


@dataclass
class Recorder:
    """Server callback: records the real peer and everything sent, echoes the peer back."""

    seen: list[Seen] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock_peer = writer.get_extra_info("peername")
        seen = Seen(real_peername(writer), (sock_peer[0], sock_peer[1]), proxy_header(writer), b"")
        self.seen.append(seen)
        self.arrived.set()
        try:
            writer.write(f"{seen.peer[0]} {seen.peer[1]}\n".encode())
            seen.data = await reader.read()
            writer.write(seen.data)
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


@contextlib.asynccontextmanager
async def serving(
    host: str | None = "127.0.0.1", **kwargs: object
) -> AsyncIterator[tuple[asyncio.Server, int, Recorder]]:
    rec = Recorder()
    server = await start_server(rec, host, 0, **kwargs)  # type: ignore[arg-type]
    try:
        yield server, server.sockets[0].getsockname()[1], rec
    finally:
        server.close()
        await server.wait_closed()


def send_and_half_close(writer: asyncio.StreamWriter, data: bytes) -> None:
    """Send ``data`` and a FIN; a server that refused us may have reset the connection."""
    with contextlib.suppress(OSError):  # ECONNRESET, or ENOTCONN from shutdown() after one
        writer.write(data)
        writer.write_eof()


async def wait_closed_by_server(reader: asyncio.StreamReader, within: float) -> bytes:
    """Read until the server closes; return what it sent (RST counts as closed)."""
    out = b""
    async with asyncio.timeout(within):
        while True:
            try:
                chunk = await reader.read(65536)
            except ConnectionResetError:
                return out
            if not chunk:
                return out
            out += chunk


def _listening(port: int, table: str) -> bool:
    """Whether something listens on ``port`` in ``table`` (/proc/net/tcp or tcp6)."""
    hexport = f":{port:04X} "
    with contextlib.suppress(FileNotFoundError), open(table) as f:
        for line in f.readlines()[1:]:
            cols = line.split()
            if (cols[1] + " ").endswith(hexport) and cols[3] == "0A":
                return True
    return False


def _expected_listeners(config: str, ports: list[int]) -> list[tuple[int, str]]:
    """Each port in the table of every family the config binds it on: HAProxy binds its
    listeners one after another, so one family listening does not mean the other does."""
    wanted = []
    for port in ports:
        if f"127.0.0.1:{port}" in config or f"*:{port}" in config:
            wanted.append((port, "/proc/net/tcp"))
        if f"::1:{port}" in config or f"[::1]:{port}" in config:
            wanted.append((port, "/proc/net/tcp6"))
    return wanted or [(port, "/proc/net/tcp") for port in ports]


@contextlib.contextmanager
def run_haproxy(config: str, tmp_path: Path, ports: list[int]) -> Iterator[subprocess.Popen[bytes]]:
    """Run HAProxy in the foreground with ``config`` until the block ends (killed in finally)."""
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(config)
    haproxy = resolve_tool("haproxy")
    check = subprocess.run([haproxy, "-c", "-f", str(cfg)], capture_output=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    log = open(tmp_path / "haproxy.log", "wb")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen([haproxy, "-db", "-f", str(cfg)], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 10
        wanted = _expected_listeners(config, ports)
        while not all(_listening(port, table) for port, table in wanted):
            assert proc.poll() is None, (tmp_path / "haproxy.log").read_text()
            assert time.monotonic() < deadline, "haproxy did not start listening"
            time.sleep(0.02)
        yield proc
    finally:
        proc.kill()
        proc.wait()
        log.close()


@pytest.fixture(autouse=True, scope="session")
def _no_implicit_event_loop() -> None:
    """Work around pytest-asyncio 1.5 leaking an event loop after a sync test.

    Its ``_temporary_event_loop`` calls ``asyncio.get_event_loop()``, which in Python 3.11
    *creates* a loop when none was ever set, and then leaves that loop installed, unclosed
    (a ResourceWarning, an error here). Declaring "no current loop" makes the call raise
    instead, which pytest-asyncio handles.
    """
    asyncio.set_event_loop(None)
