"""httpx / httpcore integration: :class:`AprTransport`, :class:`AprNetworkBackend` (the
``httpx`` extra).

``AprNetworkBackend`` is an httpcore ``AsyncNetworkBackend`` whose ``connect_tcp`` is
apr_async's ranked, source-bound Happy Eyeballs race (:func:`apr_async.connect_socket`);
everything above the TCP connection stays httpcore's: TLS (``start_tls`` on the winner),
HTTP/1.1 and HTTP/2, proxies (the connection to the proxy is raced the same way), per-read and
per-write timeouts and the connection pool. httpcore's connect timeout becomes the race's
``timeout=``. ``AprTransport`` is ``httpx.AsyncHTTPTransport`` with that backend::

    async with httpx.AsyncClient(transport=AprTransport(http2=True)) as client:
        response = await client.get("https://example.net/")

Errors keep httpx's types: a failed race is an ``httpx.ConnectError`` (a timeout an
``httpx.ConnectTimeout``) whose cause chain holds apr_async's
:class:`~apr_async.AllAttemptsFailedError` (the ``errno`` and every attempt):
:func:`attempts_error` finds it.

This module is the only one that imports httpx / httpcore; ``import apr_async`` never does.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Iterable, Sequence
from typing import Any

import httpcore
import httpx

from apr_async.connect.api import AttemptRecorder, connect_socket
from apr_async.connect.errors import AllAttemptsFailedError
from apr_async.connect.stats import last_winner
from apr_async.connect.types import PairSource
from apr_async.resolve.pairs import PairContext
from apr_async.resolve.resolver import Resolver

__all__ = ["AprNetworkBackend", "AprStream", "AprTransport", "attempts_error"]

# A read buffer above this pauses the socket until httpcore reads (back-pressure).
_HIGH_WATER = 2**18
# How long a closing TLS connection may wait for the peer's close_notify before it is aborted.
_CLOSE_GRACE = 1.0


def attempts_error(exc: BaseException) -> AllAttemptsFailedError | None:
    """The :class:`~apr_async.AllAttemptsFailedError` behind an httpx/httpcore error, if any
    (walks ``__cause__`` / ``__context__``): its ``errno`` and ``attempts`` tell what each
    (source, destination) pair did."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, AllAttemptsFailedError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


class _Reader(asyncio.Protocol):
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

    def __init__(self, transport: asyncio.Transport, reader: _Reader, pair: Any = None) -> None:
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


class AprNetworkBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend, connecting through apr_async's ranked race.

    Args (each as for :func:`apr_async.connect_socket`): ``context`` (ranking tables and
    resolver), ``nameservers`` (DNS servers for a private context, closed by :meth:`aclose`;
    exclusive with ``context``), ``service`` (receives every attempt's outcome),
    ``happy_eyeballs_delay``, ``interleave``, ``family``, ``pair_source``.

    httpcore's ``local_address`` binds every attempt to that address; its ``socket_options``
    are set on the winning socket once connected (as httpcore's own backends do).
    """

    def __init__(
        self,
        *,
        context: PairContext | None = None,
        nameservers: Sequence[str] | None = None,
        service: AttemptRecorder | None = None,
        happy_eyeballs_delay: float | None = None,
        interleave: int | None = None,
        family: int = 0,
        pair_source: PairSource | None = None,
    ) -> None:
        if context is not None and nameservers:
            raise ValueError("pass either context or nameservers, not both")
        if context is not None and not isinstance(context, PairContext):
            raise TypeError(f"context must be a PairContext, not {type(context).__name__}")
        if isinstance(nameservers, str):
            raise TypeError("nameservers must be a sequence of addresses, not a str")
        if happy_eyeballs_delay is not None and not happy_eyeballs_delay >= 0:
            raise ValueError("happy_eyeballs_delay must be >= 0 or None")
        if interleave is not None and (isinstance(interleave, bool) or interleave < 1):
            raise ValueError("interleave must be a positive int or None")
        if family not in (0, socket.AF_INET, socket.AF_INET6):
            raise ValueError("family must be 0, AF_INET or AF_INET6")
        self._owns_context = bool(nameservers)
        if nameservers:
            context = PairContext(resolver=Resolver(list(nameservers)))
        self._context = context
        self._service = service
        self._delay = happy_eyeballs_delay
        self._interleave = interleave
        self._family = family
        self._pair_source = pair_source

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's signature
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> AprStream:
        """Race the ranked pairs of ``host``; ``timeout`` bounds the whole race."""
        # httpcore gives an IPv6 literal without brackets, a name possibly with a root dot.
        name = host.rstrip(".") or host
        try:
            sock = await connect_socket(
                name,
                port,
                local_addr=(local_address, 0) if local_address else None,
                family=self._family,
                happy_eyeballs_delay=self._delay,
                interleave=self._interleave,
                timeout=timeout,
                service=self._service,
                pair_source=self._pair_source,
                context=self._context,
            )
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(str(exc)) from exc
        except OSError as exc:  # AllAttemptsFailedError, socket.gaierror
            raise httpcore.ConnectError(str(exc)) from exc
        pair = last_winner.get()
        try:
            for option in socket_options or ():
                sock.setsockopt(*option)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            loop = asyncio.get_running_loop()
            transport, reader = await loop.create_connection(_Reader, sock=sock)
        except BaseException:
            sock.close()
            raise
        return AprStream(transport, reader, pair)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's signature
        socket_options: Iterable[Any] | None = None,
    ) -> AprStream:
        """A Unix socket connection (``uds=``): nothing to rank, asyncio connects it."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                transport, reader = await loop.create_unix_connection(_Reader, path)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(str(exc) or "connect timed out") from exc
        except OSError as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        sock = transport.get_extra_info("socket")
        for option in socket_options or ():
            sock.setsockopt(*option)
        return AprStream(transport, reader)

    async def sleep(self, seconds: float) -> None:
        """httpcore's retry back-off."""
        await asyncio.sleep(seconds)

    async def aclose(self) -> None:
        """Close the private resolver that ``nameservers`` created (if any)."""
        if self._owns_context and self._context is not None:
            self._owns_context = False
            if self._context.resolver is not None:
                await self._context.resolver.close()


class AprTransport(httpx.AsyncHTTPTransport):
    """``httpx.AsyncHTTPTransport`` whose connections are apr_async's races.

    Takes every ``AsyncHTTPTransport`` argument (``verify``, ``cert``, ``http1``, ``http2``,
    ``limits``, ``proxy``, ``local_address``, ``retries``, ``socket_options``...) and, for the
    race, :class:`AprNetworkBackend`'s (``context``, ``nameservers``, ``service``,
    ``happy_eyeballs_delay``, ``interleave``, ``family``, ``pair_source``), or a ready
    ``network_backend``. Closing the transport (``AsyncClient.aclose``) closes the backend's
    private resolver too.
    """

    def __init__(
        self,
        *,
        network_backend: AprNetworkBackend | None = None,
        context: PairContext | None = None,
        nameservers: Sequence[str] | None = None,
        service: AttemptRecorder | None = None,
        happy_eyeballs_delay: float | None = None,
        interleave: int | None = None,
        family: int = 0,
        pair_source: PairSource | None = None,
        **kwargs: Any,
    ) -> None:
        if network_backend is not None and (context is not None or nameservers):
            raise ValueError("pass either network_backend or context/nameservers")
        if network_backend is None:
            network_backend = AprNetworkBackend(
                context=context,
                nameservers=nameservers,
                service=service,
                happy_eyeballs_delay=happy_eyeballs_delay,
                interleave=interleave,
                family=family,
                pair_source=pair_source,
            )
        elif not isinstance(network_backend, AprNetworkBackend):
            raise TypeError("network_backend must be an AprNetworkBackend")
        self.network_backend = network_backend
        super().__init__(**kwargs)
        # httpx builds its pool (plain, HTTP proxy or SOCKS proxy) without a backend
        # argument; every pool keeps the one it connects with here, so point it at ours.
        # Nothing has connected yet: the pools open connections lazily.
        pool: Any = self._pool
        if not hasattr(pool, "_network_backend"):  # pragma: no cover - httpcore changed
            raise RuntimeError("this httpcore's pool has no _network_backend to replace")
        pool._network_backend = network_backend

    async def aclose(self) -> None:
        """Close the pooled connections, then the backend's private resolver."""
        try:
            await super().aclose()
        finally:
            await self.network_backend.aclose()
