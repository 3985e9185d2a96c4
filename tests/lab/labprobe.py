"""Plain-socket probes run inside lab namespaces (deliberately not the library under test)."""

from __future__ import annotations

import asyncio
import errno
import socket
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Outcome:
    """How one plain TCP connect attempt ended."""

    ok: bool
    errno: int | None  # None on success or timeout
    timed_out: bool
    elapsed: float
    greeting: str = ""
    local: str = ""

    @property
    def error_name(self) -> str:
        """``ECONNREFUSED`` etc., ``timeout`` or ``ok``."""
        if self.ok:
            return "ok"
        if self.timed_out:
            return "timeout"
        return errno.errorcode.get(self.errno or 0, str(self.errno))


async def tcp_connect(
    host: str,
    port: int,
    *,
    source: str | None = None,
    scope_id: int = 0,
    limit: float = 1.0,
    read_greeting: bool = False,
) -> Outcome:
    """One non-blocking connect with an optional bound source; never raises for net errors."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    start = time.monotonic()
    try:
        if source is not None:
            sock.bind((source, 0, 0, scope_id) if family == socket.AF_INET6 else (source, 0))
        address = (host, port, 0, scope_id) if family == socket.AF_INET6 else (host, port)
        try:
            await asyncio.wait_for(loop.sock_connect(sock, address), limit)
        except TimeoutError:
            return Outcome(False, None, True, time.monotonic() - start)
        except OSError as exc:
            return Outcome(False, exc.errno, False, time.monotonic() - start)
        elapsed = time.monotonic() - start
        greeting = ""
        if read_greeting:
            data = await asyncio.wait_for(loop.sock_recv(sock, 200), limit)
            greeting = data.decode()
        local = sock.getsockname()[0]
        return Outcome(True, None, False, elapsed, greeting, str(local))
    finally:
        sock.close()


async def echo_rtt(
    host: str, port: int, *, rounds: int = 3, limit: float = 3.0, greeting: bool = True
) -> float:
    """Smallest round trip of a 1-byte echo over an established connection, in seconds."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), limit)
    try:
        if greeting:  # an announcing echo server speaks first; do not time that line
            await asyncio.wait_for(reader.readline(), limit)
        best = float("inf")
        for _ in range(rounds):
            start = time.monotonic()
            writer.write(b"x")
            await asyncio.wait_for(reader.readexactly(1), limit)
            best = min(best, time.monotonic() - start)
        return best
    finally:
        writer.close()
        await writer.wait_closed()


def peer_of(greeting: str) -> str:
    """The peer address from an echo server's ``PEER ip port LOCAL ip port`` line."""
    parts = greeting.split()
    assert parts[:1] == ["PEER"], greeting
    return parts[1]
