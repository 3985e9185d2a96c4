"""aiohttp integration: :class:`AprConnector`, :class:`AprResolver` (the ``aiohttp`` extra).

``AprConnector`` is a ``TCPConnector`` whose connections are made by apr_async: ranked
(source, destination) pairs, each attempt bound to its source, raced Happy-Eyeballs style.
Everything else of ``TCPConnector`` is kept: pooling and keep-alive, ``limit`` and
``limit_per_host``, TLS and fingerprints, proxies (the connection to the proxy is made the same
way), ``sock_connect`` and total timeouts, tracing of connection reuse::

    async with aiohttp.ClientSession(connector=AprConnector()) as session:
        async with session.get("https://example.net/") as response: ...

It hooks ``_create_direct_connection`` (the one place where ``TCPConnector`` resolves and
connects, also used for proxies), so aiohttp's own DNS cache is never consulted and cannot
rotate the ranked order: each new connection starts with the best-ranked pair.

``AprResolver`` is an ``aiohttp.abc.AbstractResolver`` giving ranked destination addresses for
users who only want the ranking (aiohttp then connects without source binding). Give its
connector ``use_dns_cache=False``: aiohttp's cache rotates addresses between connections.

This module is the only one that imports aiohttp; ``import apr_async`` never does.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.client_exceptions import (
    ClientConnectorCertificateError,
    ClientConnectorDNSError,
    ClientConnectorError,
    ClientConnectorSSLError,
    ServerFingerprintMismatch,
)
from aiohttp.helpers import ceil_timeout

from apr_async.aiohttp_trace import dns_traces, protocol_of, share_winner, trace_context
from apr_async.connect.api import AttemptRecorder, create_connection, running_default_service
from apr_async.connect.fast import fast_request, open_single
from apr_async.connect.integration_args import check_race_settings, own_context
from apr_async.connect.stats import last_winner
from apr_async.connect.svcb_race import SvcbOptions
from apr_async.core.ranking import AddrPair
from apr_async.probe.default import current_service
from apr_async.resolve.pairs import PairContext, get_addr_pairs

if TYPE_CHECKING:
    from aiohttp.client_proto import ResponseHandler
    from aiohttp.client_reqrep import ClientRequest
    from aiohttp.tracing import Trace

__all__ = ["AprConnector", "AprResolver"]

_NUMERIC_FLAGS = socket.AI_NUMERICHOST | socket.AI_NUMERICSERV


class AprConnector(aiohttp.TCPConnector):
    """A ``TCPConnector`` that connects through apr_async's ranking, source binding and race.

    Args:
        context: the ranking context (latency and failure tables, resolver); default: the
            package's (fed by the probe service when it runs).
        nameservers: DNS servers to resolve with (a private context is created; closed with
            the connector). Mutually exclusive with ``context``.
        service: receives every attempt's outcome (default: the package's probe service when
            one runs on this loop and no ``context`` is given, else the context's tables).
        happy_eyeballs_delay: fixed Connection Attempt Delay in seconds (default: adaptive).
        interleave: First Address Family Count (default 1).
        race_tls: a pair wins only once its TLS handshake completed (HTTPS only).
        svcb: HTTPS records (RFC 9460) for ``https://`` URLs on port 443 by default (port,
            hints, ALPN filter: aiohttp speaks ``http/1.1``); ``False`` turns them off,
            ``True`` or ``SvcbOptions`` uses them for every request. A name without a
            record connects exactly as before.
        **kwargs: any other ``TCPConnector`` argument (``limit``, ``ssl``, ``family``,
            ``local_addr``, ``keepalive_timeout``...). ``resolver``, ``use_dns_cache`` and
            ``ttl_dns_cache`` are refused: resolution is apr_async's.
    """

    def __init__(
        self,
        *,
        context: PairContext | None = None,
        nameservers: Sequence[str] | None = None,
        service: AttemptRecorder | None = None,
        happy_eyeballs_delay: float | None = None,
        interleave: int | None = None,
        race_tls: bool = False,
        svcb: bool | SvcbOptions | None = None,
        **kwargs: Any,
    ) -> None:
        for name in ("resolver", "use_dns_cache", "ttl_dns_cache", "socket_factory"):
            if name in kwargs:
                raise TypeError(
                    f"AprConnector does not take {name!r}: apr_async resolves and "
                    "connects (use AprResolver with a TCPConnector instead)"
                )
        check_race_settings(happy_eyeballs_delay=happy_eyeballs_delay, interleave=interleave)
        self._apr_context, self._owns_context = own_context(context, nameservers)
        local_addr = kwargs.get("local_addr")
        super().__init__(use_dns_cache=False, **kwargs)
        self._apr_local_addr: tuple[str, int] | None = local_addr
        self._apr_service = service
        self._apr_delay = happy_eyeballs_delay
        self._apr_interleave = interleave
        self._apr_race_tls = bool(race_tls)
        if svcb is not None and not isinstance(svcb, bool | SvcbOptions):
            raise TypeError(f"svcb must be None, a bool or SvcbOptions: {svcb!r}")
        self._apr_svcb = svcb
        # Whether this connector's own settings leave a plain-HTTP request to the one-pair /
        # lead-pair fast path (create_connection's condition, decided once here).
        self._apr_fast = (local_addr is None and happy_eyeballs_delay is None
                          and interleave is None and not race_tls
                          and (svcb is None or svcb is False))
        # which pair each connection won with (see winner()); dies with the connection
        self._apr_winners: weakref.WeakKeyDictionary[Any, AddrPair] = (
            weakref.WeakKeyDictionary())

    def winner(self, connection: Any) -> AddrPair | None:
        """The (source, destination) pair a connection of this connector won its race with
        (``pair.reason`` says why it ranked where it did). ``connection``: a
        ``ClientResponse`` (while it holds its connection: aiohttp releases it once the body
        is read), its ``.connection`` or the protocol. ``None`` for a connection this
        connector did not race. Tracing sees the same pair as ``trace_config_ctx.apr_pair``
        from ``on_connection_create_end`` on."""
        try:
            return self._apr_winners.get(protocol_of(connection))
        except TypeError:  # not weak-referenceable: not one of ours
            return None

    async def close(self, *, abort_ssl: bool = False) -> None:
        """Close every connection, then the private resolver (if ``nameservers`` made one)."""
        try:
            await super().close(abort_ssl=abort_ssl)
        finally:
            if self._owns_context and self._apr_context is not None:
                self._owns_context = False
                resolver = self._apr_context.resolver
                if resolver is not None:
                    await resolver.close()

    async def _create_direct_connection(
        self,
        req: ClientRequest,
        traces: list[Trace],
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 - aiohttp's signature
        *,
        client_error: type[Exception] = ClientConnectorError,
    ) -> tuple[asyncio.Transport, ResponseHandler]:
        sslcontext = self._get_ssl_context(req)
        fingerprint = self._get_fingerprint(req)
        host = req.url.raw_host
        assert host is not None
        port = req.port
        assert port is not None
        # apr_async's resolver applies no search list, so an FQDN's trailing dot(s) mean
        # nothing to it; certificates name the FQDN without them too.
        name = host.rstrip(".") or host
        server_hostname = (req.server_hostname or name).rstrip(".") if sslcontext else None
        if self._closed:
            raise aiohttp.ClientConnectionError("Connector is closed")
        service = self._apr_service
        if service is None and self._apr_context is None:
            # The application's default probe service, if it runs on this loop: it ranks
            # with live measurements and learns from these attempts (passive samples).
            service = current_service()
        pair_source = None
        if traces:  # aiohttp's DNS signals, as TCPConnector would fire them
            context = trace_context(self._apr_context, service)
            pair_source = await dns_traces(traces, host, name, context, self._family)
        try:
            fast = None
            if sslcontext is None and pair_source is None and self._apr_fast:
                # What create_connection would do first, without its coroutine around it (a
                # frame and a resumption per request, measurable against TCPConnector).
                fast = fast_request(name, port, self._family, service, self._apr_context,
                                    default_service=running_default_service)
            async with ceil_timeout(timeout.sock_connect, ceil_threshold=timeout.ceil_threshold):
                if fast is not None:
                    transport, protocol = await open_single(*fast, self._factory, self._loop)
                else:
                    transport, protocol = await create_connection(
                        self._factory,
                        name,
                        port,
                        ssl=sslcontext,
                        server_hostname=server_hostname,
                        family=self._family,
                        local_addr=self._apr_local_addr,
                        happy_eyeballs_delay=self._apr_delay,
                        interleave=self._apr_interleave,
                        service=service,
                        race_tls=self._apr_race_tls and sslcontext is not None,
                        context=self._apr_context,
                        svcb=self._apr_svcb,
                        pair_source=pair_source,
                    )
            winner = last_winner.get()
            if isinstance(winner, AddrPair):
                self._apr_winners[protocol] = winner
                if traces:
                    share_winner(traces, winner)
        except socket.gaierror as exc:
            raise ClientConnectorDNSError(req.connection_key, exc) from exc
        except ssl.CertificateError as exc:
            raise ClientConnectorCertificateError(req.connection_key, exc) from exc
        except ssl.SSLError as exc:
            raise ClientConnectorSSLError(req.connection_key, exc) from exc
        except OSError as exc:
            # aiohttp turns a bare timeout into its own ConnectionTimeoutError.
            if exc.errno is None and isinstance(exc, TimeoutError):
                raise
            raise client_error(req.connection_key, exc) from exc
        if req.is_ssl() and fingerprint is not None:
            try:
                fingerprint.check(transport)
            except ServerFingerprintMismatch:
                transport.close()
                raise
        return transport, protocol


class AprResolver(AbstractResolver):
    """Ranked resolution for aiohttp: destination addresses in apr_async's pair order.

    Each destination appears once, at the rank of its best pair. Use with
    ``TCPConnector(resolver=AprResolver(), use_dns_cache=False)`` (the cache would rotate the
    order). ``context`` / ``nameservers`` as for :class:`AprConnector`.
    """

    def __init__(
        self, *, context: PairContext | None = None, nameservers: Sequence[str] | None = None
    ) -> None:
        self._context, self._owns_context = own_context(context, nameservers)

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """Ranked addresses of ``host`` (``family`` 0 means both)."""
        pairs = await get_addr_pairs(host, port, family=family, context=self._context)
        results: list[ResolveResult] = []
        seen: set[tuple[Any, ...]] = set()
        for pair in pairs:
            dest = tuple(pair.destination)
            if dest in seen:
                continue
            seen.add(dest)
            address = str(dest[0])
            if len(dest) >= 4 and dest[3]:
                address = f"{address}%{dest[3]}"  # link-local: keep the zone
            results.append(
                ResolveResult(
                    hostname=host,
                    host=address,
                    port=port,
                    family=int(pair.family),
                    proto=socket.IPPROTO_TCP,
                    flags=_NUMERIC_FLAGS,
                )
            )
        return results

    async def close(self) -> None:
        """Close the private resolver, if ``nameservers`` made one."""
        if self._owns_context and self._context is not None:
            self._owns_context = False
            if self._context.resolver is not None:
                await self._context.resolver.close()
