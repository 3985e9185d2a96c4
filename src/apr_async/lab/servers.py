"""TCP echo servers that record who connected, as the server saw it (NAT tests need that).

One dual-stack wildcard listener (``::`` with ``IPV6_V6ONLY`` off) accepts on every address of
the host, IPv4 included. Each accepted connection is recorded as :class:`Accepted` with IPv4
peers un-mapped from ``::ffff:a.b.c.d``. With ``announce_peer`` the server first sends
``"PEER <ip> <port> LOCAL <ip> <port>\\n"`` so a client can see its translated source.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from dataclasses import dataclass
from typing import Any, Self

__all__ = ["Accepted", "EchoServer", "unmap"]


def unmap(address: str) -> str:
    """``::ffff:198.51.100.1`` -> ``198.51.100.1``; scope ids and other addresses unchanged."""
    base, sep, zone = address.partition("%")
    try:
        ip = ipaddress.ip_address(base)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return f"{ip}{sep}{zone}"


@dataclass(frozen=True)
class Accepted:
    """One accepted connection: the peer and local address/port the server saw."""

    peer: str
    peer_port: int
    local: str
    local_port: int


class EchoServer:
    """A TCP echo server on one dual-stack wildcard socket (or a given address).

    Args:
        host: address to bind; ``"::"`` (default) accepts IPv4 and IPv6 on every address.
        port: ``0`` picks a free port.
        announce_peer: send a ``PEER ... LOCAL ...`` line before echoing.
    """

    def __init__(self, host: str = "::", port: int = 0, *, announce_peer: bool = False) -> None:
        ipaddress.ip_address(host.partition("%")[0])
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"invalid port {port!r}")
        self._host = host
        self._requested_port = port
        self.announce_peer = announce_peer
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.accepted: list[Accepted] = []
        self._accepted_changed = asyncio.Event()

    @property
    def port(self) -> int:
        """The bound port."""
        if self._server is None:
            raise RuntimeError("EchoServer is not started")
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        """Bind and listen (the socket is created in the calling thread's namespace)."""
        if self._server is not None:
            raise RuntimeError("EchoServer already started")
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and self._host == "::":
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(
                socket.getaddrinfo(self._host, self._requested_port, family, socket.SOCK_STREAM)[0][
                    4
                ]
            )
            sock.listen(128)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._server = await asyncio.start_server(self._handle, sock=sock)

    async def wait_accepted(self, count: int, timeout: float = 2.0) -> list[Accepted]:  # noqa: ASYNC109
        """Wait until at least ``count`` connections were recorded, and return the records.

        A client in another namespace (or thread) sees its connect complete as soon as the
        kernel finished the handshake; this server's loop records the connection a few
        iterations later, so a test that reads :attr:`accepted` right after a connect must
        wait here. Raises ``TimeoutError`` if fewer arrived within ``timeout`` seconds.
        """
        async with asyncio.timeout(timeout):
            while len(self.accepted) < count:
                self._accepted_changed.clear()
                await self._accepted_changed.wait()
        return list(self.accepted)

    async def stop(self) -> None:
        """Stop listening and close every connection."""
        if self._server is not None:
            self._server.close()
        # A connection the loop already accepted reaches its handler a few iterations later;
        # keep sweeping until none turns up, so nothing is leaked half-made.
        for sweep in range(10):
            await asyncio.sleep(0)
            for writer in list(self._writers):
                # abort, not close: a peer that stopped acknowledging (blackholed mid-test)
                # would keep a closing transport, and its socket, alive forever.
                writer.transport.abort()
            tasks = [t for t in self._tasks if not t.done()]
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            elif sweep >= 3 and not self._writers:
                break
        self._server = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self._writers.add(writer)
        try:
            peer = writer.get_extra_info("peername")
            local = writer.get_extra_info("sockname")
            record = Accepted(
                unmap(str(peer[0])), int(peer[1]), unmap(str(local[0])), int(local[1])
            )
            self.accepted.append(record)
            self._accepted_changed.set()
            if self.announce_peer:
                writer.write(
                    f"PEER {record.peer} {record.peer_port} "
                    f"LOCAL {record.local} {record.local_port}\n".encode()
                )
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()
