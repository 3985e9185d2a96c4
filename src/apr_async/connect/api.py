"""Happy Eyeballs over ranked (source, destination) pairs: ``open_connection``,
``create_connection`` and ``connect_socket``.

The race is driven by the sans-IO :class:`apr_async.core.schedule.Schedule`; this module prepares
it: it checks the arguments (:mod:`apr_async.connect.options`), takes the ranked pairs from
``apr_async.resolve.pairs`` (all at once for a literal or a warm cache, else each address family
as its answer arrives, :mod:`apr_async.connect.source`), starts each attempt on a non-blocking
socket bound to the pair's source (:mod:`apr_async.connect.attempt`), runs the race
(:mod:`apr_async.connect.race`) and hands the winner over, wrapped in TLS if asked
(:mod:`apr_async.connect.tls`). Every outcome goes to the probe service, or to the pair
context's tables (:mod:`apr_async.connect.recorders`); a probe service also hears of the best
pair of each losing family that a won race never tried, so that it measures that family too.
"""

from __future__ import annotations

import asyncio
import socket
import ssl as ssl_module
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from apr_async.connect import general
from apr_async.connect.errors import AttemptLog
from apr_async.connect.fast import fast_request, open_single
from apr_async.connect.options import (
    Options,
    TLSOptions,
    check_request,
    pop_compat_kwds,
    tls_options,
)
from apr_async.connect.race import race
from apr_async.connect.recorders import ContextRecorder
from apr_async.connect.source import ranked_source
from apr_async.connect.svcb_race import SvcbOptions, check_svcb, connect_via_svcb
from apr_async.connect.tls import ProtocolT
from apr_async.connect.types import (
    AttemptRecorder,
    ConnectPair,
    DirectPair,
    PairSource,
    UntriedRecorder,
)
from apr_async.probe.default import implicit_service
from apr_async.resolve.pairs import PairContext

__all__ = [
    "AttemptRecorder",
    "ConnectPair",
    "ContextRecorder",
    "DirectPair",
    "PairSource",
    "UntriedRecorder",
    "connect_socket",
    "create_connection",
    "open_connection",
    "race",
    "ranked_source",
]

_DEFAULT_LIMIT = 2**16

ResultT = TypeVar("ResultT")


def running_default_service(host: str | None = None, family: object = 0) -> object | None:
    """The package's default probe service for this loop: started now, in the background,
    when its configuration allows (``autostart``); ``None`` otherwise. ``host`` is the name
    about to be connected to (see :func:`apr_async.probe.default.default_service`)."""
    return implicit_service(host, family)


def _options(host: object, port: object, **kwargs: Any) -> Options:
    return check_request(host, port, default_service=running_default_service, **kwargs)


# -- public API ---------------------------------------------------------------------------------


async def connect_socket(
    host: str,
    port: int,
    *,
    local_addr: tuple[str, int] | None = None,
    family: int = 0,
    happy_eyeballs_delay: float | None = None,
    interleave: int | None = None,
    timeout: float | None = None,  # noqa: ASYNC109 - asyncio-compatible API
    service: AttemptRecorder | None = None,
    pair_source: PairSource | None = None,
    context: PairContext | None = None,
    all_errors: bool = False,
) -> socket.socket:
    """Race the ranked pairs of ``host``/``port``; return the connected non-blocking socket.

    The caller owns the socket (hand it to any framework). ``happy_eyeballs_delay`` fixes the
    Connection Attempt Delay (default: derived per pair from its measured RTT, 250 ms when
    unknown); ``interleave`` is the First Address Family Count (default 1); ``timeout``
    bounds the whole operation (``TimeoutError``); ``local_addr`` binds every attempt to that
    address instead of the pair's source. ``service`` receives every attempt's outcome
    (:class:`AttemptRecorder`; default: the running default probe service, else the
    context's tables are fed directly) and, when it has ``record_untried``
    (:class:`UntriedRecorder`), the best untried pair of each family that lost a won race;
    ``context`` is the ``PairContext`` whose tables rank the pairs (default: the service's,
    else the package's); ``pair_source`` replaces the ranked pairs altogether
    (:data:`PairSource`).

    Raises ``socket.gaierror`` when the name does not resolve and
    :class:`~apr_async.connect.errors.AllAttemptsFailedError` (an ``OSError``) when every
    attempt failed (its ``ExceptionGroup`` instead when ``all_errors`` is true); when the
    ``timeout`` expires, an ``AllAttemptsFailedError`` that is a ``TimeoutError`` and lists
    the attempts that failed and those abandoned. Bad arguments raise
    ``TypeError``/``ValueError`` before any I/O.
    """
    opts = _options(
        host,
        port,
        family=family,
        local_addr=local_addr,
        happy_eyeballs_delay=happy_eyeballs_delay,
        interleave=interleave,
        timeout=timeout,
        service=service,
        pair_source=pair_source,
        context=context,
    )

    log = AttemptLog()
    return await general.with_timeout(
        opts, log, general.race_sockets(opts, log, all_errors=bool(all_errors)))


async def create_connection(
    protocol_factory: Callable[[], ProtocolT],
    host: str,
    port: int,
    *,
    ssl: ssl_module.SSLContext | bool | None = None,
    server_hostname: str | None = None,
    ssl_handshake_timeout: float | None = None,
    local_addr: tuple[str, int] | None = None,
    family: int = 0,
    happy_eyeballs_delay: float | None = None,
    interleave: int | None = None,
    timeout: float | None = None,  # noqa: ASYNC109 - asyncio-compatible API
    service: AttemptRecorder | None = None,
    race_tls: bool = False,
    pair_source: PairSource | None = None,
    context: PairContext | None = None,
    svcb: bool | SvcbOptions | None = None,
    **kwds: Any,
) -> tuple[asyncio.Transport, ProtocolT]:
    """Like ``loop.create_connection``, over ranked pairs; returns ``(transport, protocol)``.

    With ``ssl`` the TLS handshake is done on the TCP race's winner; with ``race_tls=True`` a
    pair only wins once its TLS handshake completed (Happy Eyeballs v3 semantics), so a path
    whose TLS stalls or fails (a broken middlebox, MTU trouble) loses to a working one, and
    its TLS error is kept for the final error; a rejected certificate, which no other path
    can change, ends the race at once. The protocol factory is still called once, for the
    winner. Also accepts ``ssl_shutdown_timeout``,
    ``proto``, ``flags`` and ``all_errors`` like asyncio. ``svcb`` decides whether the
    name's HTTPS records (RFC 9460) are used: by default for TLS to port 443, always with
    ``True`` or :class:`~apr_async.connect.svcb_race.SvcbOptions`, never with ``False``
    (see :mod:`apr_async.connect.svcb_race`). Other arguments as in :func:`connect_socket`.
    """
    if not callable(protocol_factory):
        raise TypeError("protocol_factory must be callable")
    # Every optional argument at its default: the request may take the one-pair fast path.
    # (Inline, not a helper: this runs on every connection.) svcb=True asks for HTTPS
    # records, which the general path looks up.
    if (ssl is None and server_hostname is None and ssl_handshake_timeout is None
            and local_addr is None and happy_eyeballs_delay is None and interleave is None
            and timeout is None and pair_source is None and not kwds
            and (race_tls is False or race_tls is None) and (svcb is None or svcb is False)):
        fast = fast_request(host, port, family, service, context,
                            default_service=running_default_service)
        if fast is not None:
            return await open_single(*fast, protocol_factory, asyncio.get_running_loop())
    return await _create_general(
        protocol_factory, host, port, ssl=ssl, server_hostname=server_hostname,
        ssl_handshake_timeout=ssl_handshake_timeout, local_addr=local_addr, family=family,
        happy_eyeballs_delay=happy_eyeballs_delay, interleave=interleave, timeout=timeout,
        service=service, race_tls=race_tls, pair_source=pair_source, context=context,
        svcb=svcb, **kwds)


async def _create_general(
    protocol_factory: Callable[[], ProtocolT],
    host: str,
    port: int,
    *,
    ssl: ssl_module.SSLContext | bool | None,
    server_hostname: str | None,
    ssl_handshake_timeout: float | None,
    local_addr: tuple[str, int] | None,
    family: int,
    happy_eyeballs_delay: float | None,
    interleave: int | None,
    timeout: float | None,  # noqa: ASYNC109 - asyncio-compatible API
    service: AttemptRecorder | None,
    race_tls: bool,
    pair_source: PairSource | None,
    context: PairContext | None,
    svcb: bool | SvcbOptions | None,
    **kwds: Any,
) -> tuple[asyncio.Transport, ProtocolT]:
    """:func:`create_connection` past its fast-path check: every request the fast path did
    not take (options, a name to resolve, a race to run)."""
    shutdown, all_errors = pop_compat_kwds(dict(kwds))
    opts = _options(
        host,
        port,
        family=family,
        local_addr=local_addr,
        happy_eyeballs_delay=happy_eyeballs_delay,
        interleave=interleave,
        timeout=timeout,
        service=service,
        pair_source=pair_source,
        context=context,
    )
    tls = tls_options(opts.host, ssl, server_hostname, ssl_handshake_timeout, shutdown)
    if race_tls and tls is None:
        raise ValueError("race_tls=True needs ssl")
    settings = check_svcb(svcb, opts, tls)
    log = AttemptLog()

    def create(
        request: Options, request_tls: TLSOptions | None
    ) -> Awaitable[tuple[asyncio.Transport, ProtocolT]]:
        return general.create_transport(protocol_factory, request, log, request_tls,
                                        race_tls=bool(race_tls), all_errors=all_errors)

    if settings is None:
        return await general.with_timeout(opts, log, create(opts, tls))
    work = connect_via_svcb(opts, tls, settings, create, library_context=ssl is True)
    return await general.with_timeout(opts, log, work)


async def open_connection(
    host: str,
    port: int,
    *,
    ssl: ssl_module.SSLContext | bool | None = None,
    server_hostname: str | None = None,
    ssl_handshake_timeout: float | None = None,
    local_addr: tuple[str, int] | None = None,
    family: int = 0,
    happy_eyeballs_delay: float | None = None,
    interleave: int | None = None,
    timeout: float | None = None,  # noqa: ASYNC109 - asyncio-compatible API
    limit: int = _DEFAULT_LIMIT,
    service: AttemptRecorder | None = None,
    race_tls: bool = False,
    pair_source: PairSource | None = None,
    context: PairContext | None = None,
    svcb: bool | SvcbOptions | None = None,
    **kwds: Any,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Like ``asyncio.open_connection``, over ranked pairs; returns ``(reader, writer)``.

    Arguments as in :func:`create_connection`, plus ``limit`` (the StreamReader buffer limit).
    """
    if type(limit) is not int and (isinstance(limit, bool) or not isinstance(limit, int)):
        raise ValueError(f"limit must be a positive int, got {limit!r}")
    if limit <= 0:
        raise ValueError(f"limit must be a positive int, got {limit!r}")
    loop = asyncio.get_running_loop()
    fast = None
    # The fast path's condition, as in create_connection.
    if (ssl is None and server_hostname is None and ssl_handshake_timeout is None
            and local_addr is None and happy_eyeballs_delay is None and interleave is None
            and timeout is None and pair_source is None and not kwds
            and (race_tls is False or race_tls is None) and (svcb is None or svcb is False)):
        fast = fast_request(host, port, family, service, context,
                            default_service=running_default_service)
    reader = asyncio.StreamReader(limit=limit, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    if fast is not None:
        transport, _ = await open_single(*fast, lambda: protocol, loop)
        return reader, asyncio.StreamWriter(transport, protocol, reader, loop)
    # The fast path was asked above: straight to the general path, not create_connection,
    # which would ask it again.
    transport, _ = await _create_general(
        lambda: protocol,
        host,
        port,
        ssl=ssl,
        server_hostname=server_hostname,
        ssl_handshake_timeout=ssl_handshake_timeout,
        local_addr=local_addr,
        family=family,
        happy_eyeballs_delay=happy_eyeballs_delay,
        interleave=interleave,
        timeout=timeout,
        service=service,
        race_tls=race_tls,
        pair_source=pair_source,
        context=context,
        svcb=svcb,
        **kwds,
    )
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    return reader, writer
