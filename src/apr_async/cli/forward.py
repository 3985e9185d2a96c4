"""A dual-stack TCP relay: accept on LISTEN, connect to UPSTREAM, copy bytes both ways.

UPSTREAM is ``host:port`` (reached through apr_async's ranked, source-bound race by default) or
``unix:/path``. Each direction has bounded buffers (reads stop while the other side's write
buffer is above the limit), a half-close on one side is passed on with ``write_eof`` while the
other direction keeps flowing, and :meth:`Forwarder.aclose` closes the listeners, lets relays
finish for a grace period, then cancels the rest, so nothing outlives it.

The endpoints and the records are in :mod:`apr_async.cli.endpoints` (re-exported here).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import os
import socket
import time
from collections.abc import Awaitable, Callable

from apr_async.cli.endpoints import (
    Endpoint,
    ForwarderStats,
    RelayRecord,
    is_live_socket,
    parse_endpoint,
    peer_text,
)
from apr_async.connect.api import open_connection
from apr_async.errors import describe_error

__all__ = [
    "DEFAULT_BUFFER_SIZE",
    "ConnectFn",
    "Endpoint",
    "Forwarder",
    "RelayRecord",
    "parse_endpoint",
]

DEFAULT_BUFFER_SIZE = 64 * 1024

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]
ConnectFn = Callable[[str, int], Awaitable[Streams]]
"""``await connect(host, port)`` returns ``(reader, writer)`` like ``asyncio.open_connection``."""


async def _default_connect(host: str, port: int, limit: int) -> Streams:
    return await open_connection(host, port, limit=limit)


class Forwarder:
    """Relay every connection accepted on ``listen`` to ``upstream``.

    Use as ``async with Forwarder("127.0.0.1:8080", "example.net:80") as fwd: ...`` or call
    :meth:`start` and :meth:`aclose`. ``connect`` replaces how TCP upstreams are reached (the
    default is :func:`apr_async.connect.api.open_connection`); ``buffer_size`` bounds what is held
    per direction; ``connect_timeout`` bounds reaching the upstream; ``on_close`` is called with
    a :class:`RelayRecord` when a relay ends.
    """

    def __init__(
        self,
        listen: str | Endpoint,
        upstream: str | Endpoint,
        *,
        connect: ConnectFn | None = None,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        connect_timeout: float | None = 10.0,
        backlog: int = 128,
        on_close: Callable[[RelayRecord], None] | None = None,
    ) -> None:
        self.listen = (
            listen if isinstance(listen, Endpoint) else parse_endpoint(listen, listen=True)
        )
        self.upstream = upstream if isinstance(upstream, Endpoint) else parse_endpoint(upstream)
        if self.upstream.host is None and not self.upstream.is_unix:
            raise ValueError("upstream needs a host")
        if not isinstance(buffer_size, int) or buffer_size < 1024:
            raise ValueError("buffer_size must be an int of at least 1024 bytes")
        if connect_timeout is not None and connect_timeout <= 0:
            raise ValueError("connect_timeout must be positive or None")
        self._connect = connect
        self._buffer_size = buffer_size
        self._connect_timeout = connect_timeout
        self._backlog = backlog
        self._on_close = on_close
        self._servers: list[asyncio.Server] = []
        self._relays: set[asyncio.Task[None]] = set()
        self._ids = itertools.count(1)
        self._closing = False
        self.stats = ForwarderStats()

    async def __aenter__(self) -> Forwarder:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def addresses(self) -> list[tuple[str, int] | str]:
        """The bound listening addresses: ``(host, port)`` per socket, or the Unix path."""
        out: list[tuple[str, int] | str] = []
        for server in self._servers:
            for sock in server.sockets:
                name = sock.getsockname()
                out.append(name if isinstance(name, str) else (str(name[0]), int(name[1])))
        return out

    @property
    def active(self) -> int:
        """Number of relays currently open."""
        return len(self._relays)

    async def start(self) -> None:
        """Bind the listening socket(s). Raises ``OSError`` if the address cannot be bound."""
        if self._servers:
            raise RuntimeError("forwarder already started")
        if self._closing:
            raise RuntimeError("forwarder is closed")
        if self.listen.path is not None:
            # asyncio would silently unlink a live socket at that path and steal its name.
            if is_live_socket(self.listen.path):
                raise OSError(errno.EADDRINUSE, f"{self.listen.path} is in use by a listener")
            server = await asyncio.start_unix_server(
                self._accepted, self.listen.path, limit=self._buffer_size, backlog=self._backlog
            )
        elif self.listen.host is None and socket.has_dualstack_ipv6():
            # One IPv6 socket with IPV6_V6ONLY off serves both families on one port (even 0).
            sock = socket.create_server(
                ("::", self.listen.port),
                family=socket.AF_INET6,
                backlog=self._backlog,
                dualstack_ipv6=True,
            )
            try:
                server = await asyncio.start_server(
                    self._accepted, sock=sock, limit=self._buffer_size
                )
            except BaseException:
                sock.close()
                raise
        else:
            server = await asyncio.start_server(
                self._accepted,
                self.listen.host,
                self.listen.port,
                limit=self._buffer_size,
                backlog=self._backlog,
                reuse_address=True,
            )
        self._servers.append(server)

    async def serve_until(self, stop: asyncio.Event, *, grace: float = 5.0) -> None:
        """Serve until ``stop`` is set, then close (see :meth:`aclose`)."""
        if not self._servers:
            await self.start()
        try:
            await stop.wait()
        finally:
            await self.aclose(grace=grace)

    async def aclose(self, *, grace: float = 0.0) -> None:
        """Stop accepting, give open relays ``grace`` seconds to end by themselves, cancel the rest.

        Idempotent; when it returns, no relay task and no socket of this forwarder is left.
        """
        self._closing = True
        for server in self._servers:
            server.close()
        if self._relays and grace > 0:
            await asyncio.wait(set(self._relays), timeout=grace)
        for task in list(self._relays):
            task.cancel()
        while self._relays:
            await asyncio.wait(set(self._relays))
        for server in self._servers:
            await server.wait_closed()
        if self.listen.path is not None and self._servers:
            with contextlib.suppress(OSError):
                os.unlink(self.listen.path)
        self._servers.clear()

    async def _open_upstream(self) -> Streams:
        up = self.upstream
        if up.path is not None:
            return await asyncio.open_unix_connection(up.path, limit=self._buffer_size)
        assert up.host is not None
        if self._connect is not None:
            return await self._connect(up.host, up.port)
        return await _default_connect(up.host, up.port, self._buffer_size)

    def _accepted(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        # A plain callback, not a coroutine: the relay task is ours from the first instant, so
        # aclose() can never miss one, and cancelling it does not trip asyncio 3.11's
        # start_server done-callback (which logs an error for a cancelled handler task).
        if self._closing:
            client_writer.transport.abort()
            return
        task = asyncio.get_running_loop().create_task(self._relay(client_reader, client_writer))
        self._relays.add(task)
        task.add_done_callback(self._relays.discard)

    async def _relay(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        record = RelayRecord(next(self._ids), peer_text(client_writer), time.monotonic())
        self.stats.accepted += 1
        self.stats.active.add(record.id)
        upstream_writer: asyncio.StreamWriter | None = None
        clean = False
        try:
            try:
                async with asyncio.timeout(self._connect_timeout):
                    upstream_reader, upstream_writer = await self._open_upstream()
            except TimeoutError:
                raise ConnectionError(f"upstream {self.upstream} did not answer in time") from None
            record.upstream = peer_text(upstream_writer)
            for writer in (client_writer, upstream_writer):
                writer.transport.set_write_buffer_limits(high=self._buffer_size)
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._pipe(client_reader, upstream_writer, record, up=True))
                tg.create_task(self._pipe(upstream_reader, client_writer, record, up=False))
            clean = True
        except* Exception as group:
            record.error = (
                "; ".join(describe_error(e) for e in group.exceptions) or type(group).__name__
            )
        finally:
            await self._close_writer(client_writer, clean)
            if upstream_writer is not None:
                await self._close_writer(upstream_writer, clean)
            record.ended = time.monotonic()
            self.stats.active.discard(record.id)
            if clean:
                self.stats.completed += 1
            else:
                self.stats.failed += 1
                if record.error is None:
                    record.error = "cancelled"
            if self._on_close is not None:
                self._on_close(record)

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        record: RelayRecord,
        *,
        up: bool,
    ) -> None:
        while True:
            data = await reader.read(self._buffer_size)
            if not data:
                break
            writer.write(data)
            if up:
                record.bytes_up += len(data)
                self.stats.bytes_up += len(data)
            else:
                record.bytes_down += len(data)
                self.stats.bytes_down += len(data)
            # Backpressure: stop reading while the other side is slower than this one.
            await writer.drain()
        # Pass the half-close on; the other direction keeps flowing until it ends too.
        if writer.can_write_eof() and not writer.transport.is_closing():
            writer.write_eof()
            await writer.drain()

    @staticmethod
    async def _close_writer(writer: asyncio.StreamWriter, clean: bool) -> None:
        if not clean:
            writer.transport.abort()
        else:
            writer.close()
        try:
            # Bounded: a peer that never reads must not keep a closing socket alive forever.
            async with asyncio.timeout(2.0):
                await writer.wait_closed()
        except (OSError, TimeoutError):
            writer.transport.abort()
        except asyncio.CancelledError:
            writer.transport.abort()
            raise
