"""The network stream under :mod:`apr_async.httpx`: a connected socket as an httpcore
``AsyncNetworkStream`` on asyncio (back-pressure, ``start_tls``, per-read/per-write timeouts).
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import httpcore

__all__ = ["AprStream", "StreamProtocol"]

# A read buffer above this pauses the socket until httpcore reads (back-pressure).
_HIGH_WATER = 2**18
# How long a closing TLS connection may wait for the peer's close_notify before it is aborted.
_CLOSE_GRACE = 1.0


class StreamProtocol(asyncio.Protocol):
    """The bytes received, for :class:`AprStream` to read at its own pace."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.eof = False
        self.error: Exception | None = None
        self.transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._drained: asyncio.Future[None] | None = None
        self._paused = False
        self._reading_paused = False
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > _HIGH_WATER and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool | None:
        self.eof = True
        self._wake()
        return None  # close our side too: HTTP has nothing to send after the peer's EOF

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        if exc is not None:
            self.error = exc
        self._wake()
        self.resume_writing()
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    # -- for AprStream ------------------------------------------------------------------------

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def wait_data(self) -> None:
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def take(self, max_bytes: int) -> bytes:
        data = bytes(self.buffer[:max_bytes])
        del self.buffer[:max_bytes]
        if self._reading_paused and len(self.buffer) <= _HIGH_WATER // 2:
            self._reading_paused = False
            if self.transport is not None:
                self.transport.resume_reading()
        return data

    @property
    def paused(self) -> bool:
        return self._paused

    async def drain(self) -> None:
        if self._paused:
            self._drained = asyncio.get_running_loop().create_future()
            await self._drained


class AprStream(httpcore.AsyncNetworkStream):
    """An httpcore network stream over an asyncio transport (plain, then TLS after
    :meth:`start_tls`). ``get_extra_info("apr_pair")`` is the pair that won the race (its
    ``reason`` says why it was ranked where it was)."""

    def __init__(
        self, transport: asyncio.Transport, reader: StreamProtocol, pair: Any = None
    ) -> None:
        self._transport = transport
        self._reader = reader
        self._pair = pair

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        """Up to ``max_bytes`` bytes; ``b""`` at the end of the stream."""
        reader = self._reader
        if not reader.buffer and not reader.eof:
            # Only a read that must wait pays for a timer.
            try:
                async with asyncio.timeout(timeout):
                    while not reader.buffer and not reader.eof:
                        await reader.wait_data()
            except TimeoutError as exc:
                raise httpcore.ReadTimeout(str(exc) or "read timed out") from exc
        if reader.buffer:
            return reader.take(max_bytes)
        if reader.error is not None:
            raise httpcore.ReadError(str(reader.error)) from reader.error
        return b""

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Send ``buffer``, waiting while the transport's buffer is full."""
        if not buffer:
            return
        if self._transport.is_closing():
            raise httpcore.WriteError("connection closed")
        try:
            self._transport.write(buffer)
            if self._reader.paused:  # the transport's buffer is full: wait, bounded
                async with asyncio.timeout(timeout):
                    await self._reader.drain()
        except TimeoutError as exc:
            raise httpcore.WriteTimeout(str(exc) or "write timed out") from exc
        except OSError as exc:
            raise httpcore.WriteError(str(exc)) from exc
        if self._reader.error is not None:
            raise httpcore.WriteError(str(self._reader.error)) from self._reader.error

    async def aclose(self) -> None:
        """Close the connection and wait until the socket is closed (a TLS close_notify
        exchange is given a moment, then the connection is aborted)."""
        transport = self._transport
        if not transport.is_closing():
            transport.close()
        # Wait for connection_lost: a socket still open when the loop ends would leak.
        try:
            async with asyncio.timeout(_CLOSE_GRACE):
                await asyncio.shield(self._reader.closed)
        except TimeoutError:
            transport.abort()
            await asyncio.shield(self._reader.closed)

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> AprStream:
        """TLS over this connection (on a proxy's tunnel too); the returned stream replaces
        this one."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                transport = await loop.start_tls(
                    self._transport, self._reader, ssl_context, server_hostname=server_hostname
                )
        except TimeoutError as exc:
            self._transport.close()
            raise httpcore.ConnectTimeout(str(exc) or "TLS handshake timed out") from exc
        except (OSError, ssl.SSLError) as exc:
            self._transport.close()
            raise httpcore.ConnectError(str(exc)) from exc
        if transport is None:  # pragma: no cover - only for a transport closed meanwhile
            raise httpcore.ConnectError("connection closed during the TLS handshake")
        assert isinstance(transport, asyncio.Transport)
        self._reader.transport = transport
        return AprStream(transport, self._reader, self._pair)

    def get_extra_info(self, info: str) -> Any:
        """httpcore's keys (``ssl_object``, ``client_addr``, ``server_addr``, ``socket``,
        ``is_readable``) and ``apr_pair``."""
        transport = self._transport
        if info == "is_readable":
            # Anything received on an idle pooled connection (data, EOF) means it is unusable.
            return bool(self._reader.buffer) or self._reader.eof
        if info == "client_addr":
            return transport.get_extra_info("sockname")
        if info == "server_addr":
            return transport.get_extra_info("peername")
        if info == "apr_pair":
            return self._pair
        return transport.get_extra_info(info)
