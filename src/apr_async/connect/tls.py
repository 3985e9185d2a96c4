"""TLS for the race: wrapping a connected socket, and holding a TLS connection between its
handshake and the race's verdict when success means "TLS completed" (Happy Eyeballs v3)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import TypeVar, cast

from apr_async.connect.options import TLSOptions

__all__ = ["HandshakeHolder", "ProtocolT", "abort_holder", "wrap_socket"]

ProtocolT = TypeVar("ProtocolT", bound=asyncio.BaseProtocol)


class HandshakeHolder(asyncio.Protocol):
    """Holds a TLS connection between its handshake and the race's verdict.

    The application's protocol is only created for the winner; anything the server sends in
    between (a banner right after the handshake) is kept and replayed to it.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._data: list[bytes] = []
        self._eof = False
        self._lost = False
        self._lost_exc: Exception | None = None
        self._paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._data.append(bytes(data))

    def eof_received(self) -> bool | None:
        self._eof = True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._lost_exc = exc

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False

    def hand_over(self, protocol: asyncio.BaseProtocol) -> None:
        """Make ``protocol`` the transport's protocol and replay what happened so far."""
        transport = self.transport
        assert transport is not None
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if self._paused:
            protocol.pause_writing()
        for chunk in self._data:
            _feed(protocol, chunk)
        self._data.clear()
        if self._eof and isinstance(protocol, asyncio.Protocol | asyncio.BufferedProtocol):
            protocol.eof_received()
        if self._lost:
            protocol.connection_lost(self._lost_exc)


def _feed(protocol: asyncio.BaseProtocol, data: bytes) -> None:
    if isinstance(protocol, asyncio.BufferedProtocol):
        view = memoryview(data)
        while view:
            buf = memoryview(protocol.get_buffer(len(view)))
            n = min(len(buf), len(view))
            if n == 0:
                raise RuntimeError("get_buffer() returned an empty buffer")
            buf[:n] = view[:n]
            protocol.buffer_updated(n)
            view = view[n:]
    elif isinstance(protocol, asyncio.Protocol):
        protocol.data_received(data)


async def wrap_socket(
    protocol_factory: Callable[[], ProtocolT],
    sock: socket.socket,
    tls: TLSOptions | None,
) -> tuple[asyncio.Transport, ProtocolT]:
    """``loop.create_connection(sock=sock)``, closing ``sock`` if no transport took it.

    Once the protocol exists the loop's transport owns the socket and closes it on failure
    (uvloop even closes the descriptor itself and detaches the socket object), so closing it
    here too could close a descriptor number already reused by another connection.
    """
    loop = asyncio.get_running_loop()
    taken = False

    def factory() -> ProtocolT:
        nonlocal taken
        protocol = protocol_factory()
        taken = True
        return protocol

    try:
        transport, protocol = await loop.create_connection(
            factory,
            sock=sock,
            ssl=tls.context if tls is not None else None,
            server_hostname=tls.server_hostname if tls is not None else None,
            ssl_handshake_timeout=tls.handshake_timeout if tls is not None else None,
            ssl_shutdown_timeout=tls.shutdown_timeout if tls is not None else None,
        )
    except BaseException:
        if not taken:
            sock.close()
        raise
    return transport, protocol


def abort_holder(holder: HandshakeHolder) -> None:
    """Close a held TLS connection that lost the race (or whose hand-over failed)."""
    if holder.transport is not None:
        holder.transport.abort()
