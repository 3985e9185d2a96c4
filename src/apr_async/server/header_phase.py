"""The PROXY header phase of a server connection, before the application sees it.

Each accepted connection starts with a :class:`HeaderProtocol`, a buffered protocol that
checks the peer against ``trusted_proxies`` before reading a byte, reads the header under a
deadline, and then hands the transport to an ordinary :class:`asyncio.StreamReaderProtocol`
(plain TCP), or first to :meth:`asyncio.loop.start_tls` when the server terminates TLS.

With TLS it asks the transport for exactly :meth:`HeaderParser.bytes_needed` bytes at a
time, so not one byte of the ClientHello is read before the TLS layer takes over; the TLS
layer could not be given bytes that were read already. Without TLS it reads greedily and
feeds what followed the header to the stream reader, which saves a loop iteration per byte
of a v1 line.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final, Literal, cast

from .peers import IPAddress, peer_ip
from .proxy_header import ProxyHeader, ProxyProtocolError
from .proxy_protocol import HeaderParser

__all__ = ["Handler", "HeaderPolicy", "HeaderProtocol", "LogLimiter", "Network"]

log = logging.getLogger("apr_async.server")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Handler = Callable[
    [asyncio.StreamReader, asyncio.StreamWriter, ProxyHeader | None], Awaitable[None]
]

#: Bytes asked for per read when over-reading is harmless (no TLS): a whole v1 line, and
#: the v2 headers HAProxy sends, arrive in one read.
_GREEDY_READ: Final = 4096


class LogLimiter:
    """At most ``burst`` log records per ``interval`` seconds; says how many it dropped.

    A flood of refused connections must not become a flood of log lines (disk, and the
    CPU of formatting them, are what the attacker would then be spending).
    """

    def __init__(
        self,
        logger: logging.Logger,
        clock: Callable[[], float],
        *,
        burst: int = 10,
        interval: float = 10.0,
    ) -> None:
        self._logger = logger
        self._clock = clock
        self.burst = burst
        self.interval = interval
        self._window_start = -float("inf")
        self._count = 0
        self.suppressed = 0

    def __call__(self, level: int, msg: str, *args: object) -> None:
        """Log like :meth:`logging.Logger.log`, unless this window's budget is spent."""
        if not self._logger.isEnabledFor(level):
            return
        now = self._clock()
        if now - self._window_start >= self.interval:
            if self.suppressed:
                self._logger.log(
                    level,
                    "%d more refused or failed connections were not logged in %g s",
                    self.suppressed,
                    self.interval,
                )
            self._window_start, self._count, self.suppressed = now, 0, 0
        if self._count < self.burst:
            self._count += 1
            self._logger.log(level, msg, *args)
        else:
            self.suppressed += 1


@dataclass(slots=True, eq=False)
class HeaderPolicy:
    """What every connection of one server must satisfy, and the state they share."""

    version: Literal["v1", "v2", "auto"]
    networks: tuple[Network, ...]
    timeout: float
    max_size: int
    max_pending: int | None
    handler: Handler
    limit: int
    log: LogLimiter
    ssl: ssl.SSLContext | None = None
    ssl_handshake_timeout: float | None = None
    ssl_shutdown_timeout: float | None = None
    pending: set[HeaderProtocol] = field(default_factory=set)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def trusts(self, ip: IPAddress | None) -> bool:
        """Whether a peer may send a header (IPv4-mapped peers match IPv4 networks)."""
        return ip is not None and any(ip in net for net in self.networks)

    def track(self, task: asyncio.Task[None]) -> None:
        """Keep a strong reference to ``task`` until it is done."""
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


class HeaderProtocol(asyncio.BufferedProtocol):
    """Reads one PROXY header, then gives the connection to the application."""

    def __init__(self, policy: HeaderPolicy) -> None:
        self._policy = policy
        self._loop = asyncio.get_running_loop()
        self._parser = HeaderParser(policy.version, max_size=policy.max_size)
        self._transport: asyncio.Transport | None = None
        self._peer: object = None
        self._chunk = bytearray()
        self._settled: asyncio.Future[None] | None = None
        self._handed_over = False

    # --- protocol callbacks ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        policy = self._policy
        # A stream transport (uvloop's implement the interface without subclassing it).
        self._transport = transport = cast(asyncio.Transport, transport)
        self._peer = peer = transport.get_extra_info("peername")
        # Checked before reading anything: an untrusted peer's bytes are never parsed.
        if not policy.trusts(peer_ip(peer)):
            policy.log(logging.WARNING, "closing connection from untrusted peer %s", peer)
            transport.close()
            return
        if policy.max_pending is not None and len(policy.pending) >= policy.max_pending:
            policy.log(
                logging.WARNING,
                "closing connection from %s: %d PROXY headers pending",
                peer,
                len(policy.pending),
            )
            transport.close()
            return
        policy.pending.add(self)
        self._settled = self._loop.create_future()
        policy.track(self._loop.create_task(self._deadline(self._settled)))

    def get_buffer(self, sizehint: int) -> bytearray:
        needed = max(self._parser.bytes_needed(), 1)
        self._chunk = bytearray(needed if self._policy.ssl else max(needed, _GREEDY_READ))
        return self._chunk

    def buffer_updated(self, nbytes: int) -> None:
        if self._settled is None or self._settled.done():
            return
        try:
            header = self._parser.feed(bytes(self._chunk[:nbytes]))
        except ProxyProtocolError as exc:
            self._fail(f"invalid PROXY header: {exc}")
            return
        if header is not None:
            self._hand_over(header, self._parser.trailing)

    def eof_received(self) -> bool | None:
        self._fail(f"truncated PROXY header ({self._parser.buffered} bytes, then EOF)")
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._settle()

    # --- the phase's outcomes -------------------------------------------------------------

    def _settle(self) -> None:
        self._policy.pending.discard(self)
        if self._settled is not None and not self._settled.done():
            self._settled.set_result(None)

    def _fail(self, problem: str) -> None:
        if self._settled is None or self._settled.done():
            return
        self._settle()
        self._policy.log(logging.INFO, "closing connection from %s: %s", self._peer, problem)
        assert self._transport is not None
        self._transport.close()

    async def _deadline(self, settled: asyncio.Future[None]) -> None:
        try:
            # asyncio.wait, unlike asyncio.timeout, leaves ``settled`` alone at the deadline.
            done, _ = await asyncio.wait((settled,), timeout=self._policy.timeout)
            if not done:
                self._fail(f"no complete PROXY header within {self._policy.timeout:g} s")
        except asyncio.CancelledError:
            # The loop is shutting down (asyncio.run cancels every task): a connection still
            # in its header phase has no owner that would close it later.
            if not self._handed_over and self._transport is not None:
                self._settle()
                self._transport.close()
            raise

    def _hand_over(self, header: ProxyHeader, trailing: bytes) -> None:
        assert self._transport is not None
        transport, policy, loop = self._transport, self._policy, self._loop
        self._handed_over = True
        self._settle()
        transport.pause_reading()
        reader = asyncio.StreamReader(limit=policy.limit, loop=loop)
        protocol = asyncio.StreamReaderProtocol(
            reader, lambda r, w: policy.handler(r, w, header), loop=loop
        )
        if policy.ssl is None:
            transport.set_protocol(protocol)
            protocol.connection_made(transport)
            # Resume first: feed_data may pause the transport again if ``trailing`` is big.
            transport.resume_reading()
            if trailing:
                reader.feed_data(trailing)
        else:
            policy.track(loop.create_task(self._start_tls(protocol, policy.ssl)))

    async def _start_tls(
        self, protocol: asyncio.StreamReaderProtocol, context: ssl.SSLContext
    ) -> None:
        assert self._transport is not None
        transport = self._transport
        try:
            tls = await self._loop.start_tls(
                transport,
                protocol,
                context,
                server_side=True,
                ssl_handshake_timeout=self._policy.ssl_handshake_timeout,
                ssl_shutdown_timeout=self._policy.ssl_shutdown_timeout,
            )
        except OSError as exc:  # ssl.SSLError, ConnectionError, handshake timeouts
            self._policy.log(logging.INFO, "TLS handshake with %s failed: %r", self._peer, exc)
            transport.close()
            return
        except BaseException:
            transport.close()
            raise
        if tls is None:  # pragma: no cover - only for a transport without a protocol
            transport.close()
            return
        protocol.connection_made(tls)
