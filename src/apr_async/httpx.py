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
from collections.abc import Iterable, Sequence
from typing import Any

import httpcore
import httpx

from apr_async.connect.api import AttemptRecorder, connect_socket
from apr_async.connect.errors import AllAttemptsFailedError
from apr_async.connect.integration_args import check_race_settings, own_context
from apr_async.connect.stats import last_winner
from apr_async.connect.types import PairSource
from apr_async.httpx_stream import AprStream, StreamProtocol
from apr_async.resolve.pairs import PairContext

__all__ = ["AprNetworkBackend", "AprStream", "AprTransport", "attempts_error"]

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
        check_race_settings(happy_eyeballs_delay=happy_eyeballs_delay, interleave=interleave,
                            family=family)
        self._context, self._owns_context = own_context(context, nameservers)
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
            transport, reader = await loop.create_connection(StreamProtocol, sock=sock)
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
                transport, reader = await loop.create_unix_connection(StreamProtocol, path)
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
