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
import errno as errno_codes
import ipaddress
import socket
import ssl as ssl_module
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from apr_async.connect.attempt import Connecting, claim, flush_records
from apr_async.connect.errors import AllAttemptsFailedError, AttemptLog
from apr_async.connect.fast import connect_single, fast_options, open_stream, single_pair
from apr_async.connect.options import (
    Options,
    TLSOptions,
    check_request,
    pop_compat_kwds,
    tls_options,
)
from apr_async.connect.race import race, race_attempts, untried_alternatives
from apr_async.connect.rank_memo import rank_memo
from apr_async.connect.recorders import ContextRecorder, report_untried
from apr_async.connect.source import filtered, ranked_source
from apr_async.connect.stats import race_finished
from apr_async.connect.svcb_race import SvcbOptions, check_svcb, connect_via_svcb
from apr_async.connect.tls import HandshakeHolder, ProtocolT, abort_holder, wrap_socket
from apr_async.connect.types import (
    AttemptRecorder,
    ConnectPair,
    DirectPair,
    PairSource,
    UntriedRecorder,
    families_for,
)
from apr_async.core.schedule import Schedule
from apr_async.probe.default import implicit_service
from apr_async.resolve import pairs
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


def _running_default_service() -> object | None:
    """The package's default probe service for this loop: started now, in the background,
    when its configuration allows (``autostart``); ``None`` otherwise."""
    return implicit_service()


def _options(host: object, port: object, **kwargs: Any) -> Options:
    return check_request(host, port, default_service=_running_default_service, **kwargs)


def _only_defaults(*given: object) -> bool:
    """Whether every optional argument of a connect call is at its default (``None``, or empty
    ``kwds``, or a false ``race_tls``): only such a request may take the one-pair fast path.
    ``svcb=True`` is not a default: it asks for HTTPS records, which the general path looks up.
    """
    # a loop, not all(generator): this runs once per connection, and a generator costs 3x
    for value in given:  # noqa: SIM110
        if value is not None and value is not False and value != {}:
            return False
    return True


def _fast(
    host: object, port: object, family: object, service: object, context: object
) -> tuple[Options, ConnectPair] | None:
    """The reused options and the one pair of a default-argument request that needs no race
    (:mod:`apr_async.connect.fast`), or ``None``: take the general path."""
    opts = fast_options(
        host, port, family, service, context, default_service=_running_default_service
    )
    if opts is None:
        return None
    pair = single_pair(opts)
    return None if pair is None else (opts, pair)


# -- local addresses -------------------------------------------------------------------------


async def _local_binds(local_addr: tuple[str, int]) -> dict[int, tuple[Any, ...]]:
    host, port = local_addr
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        ip = None
    if ip is not None and "%" not in host:
        if ip.version == 6:
            return {socket.AF_INET6: (str(ip), port, 0, 0)}
        return {socket.AF_INET: (str(ip), port)}
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    binds: dict[int, tuple[Any, ...]] = {}
    for fam, _, _, _, addr in infos:
        binds.setdefault(int(fam), tuple(addr))
    return binds


# -- the common path --------------------------------------------------------------------------


@dataclass(slots=True)
class _Prepared:
    """Everything one race needs, prepared from the checked options."""

    families: tuple[int, ...]
    answers: AsyncIterator[tuple[int, Sequence[ConnectPair]]] | None
    connect: Callable[[ConnectPair, Callable[[], None] | None], asyncio.Future[socket.socket]]
    first: tuple[int, Sequence[ConnectPair]] | None = None


async def _prepare(opts: Options) -> _Prepared:
    flush_records()  # what the last connections taught comes before this ranking
    families = families_for(opts.family)
    binds: dict[int, tuple[Any, ...]] = {}
    if opts.local_addr is not None:
        binds = await _local_binds(opts.local_addr)
        families = tuple(f for f in families if f in binds)
        if not families:
            raise OSError(
                errno_codes.EAFNOSUPPORT,
                f"local_addr {opts.local_addr[0]!r} has no address of the requested family",
            )
    # Ask only for what can be used (local_addr may rule a family out).
    family = families[0] if len(families) == 1 else opts.family
    answers: AsyncIterator[tuple[int, Sequence[ConnectPair]]] | None = None
    first: tuple[int, Sequence[ConnectPair]] | None = None
    if opts.pair_source is None and (
        opts.spec.ip is not None or opts.context.get_resolver().cached(opts.spec, family)
    ):
        # Every answer is at hand (a literal or a warm cache): rank once, no generator.
        now = opts.context.clock()
        ranked = rank_memo.get(opts.context, opts.host, opts.port, family, now)
        if ranked is None:
            ranked = list(
                await pairs.get_addr_pairs(
                    opts.host, opts.port, family=family, context=opts.context
                )
            )
            rank_memo.put(opts.context, (opts.host, opts.port, family), ranked, now)
        first = (socket.AF_UNSPEC, [p for p in ranked if p.family in families])
    else:
        source = opts.pair_source or ranked_source(opts.context)
        answers = filtered(source(opts.host, opts.port, family), families)

    loop = asyncio.get_running_loop()

    def connect(
        pair: ConnectPair, notify: Callable[[], None] | None
    ) -> asyncio.Future[socket.socket]:
        return Connecting(
            loop,
            pair,
            port=opts.port,
            bind_to=binds.get(pair.family) if binds else pair.source,
            recorder=opts.recorder,
            delay_override=opts.happy_eyeballs_delay,
            notify=notify,
        )

    return _Prepared(families, answers, connect, first)


def _schedule_for(opts: Options, families: tuple[int, ...]) -> Schedule[ConnectPair]:
    return Schedule(
        families,
        happy_eyeballs_delay=opts.happy_eyeballs_delay,
        interleave=opts.interleave,
    )


def _report_untried(opts: Options, schedule: Schedule[ConnectPair]) -> None:
    """Tell a recorder that takes them (a probe service) which pairs of the losing families
    the won race never measured, so that its next rounds do."""
    if callable(getattr(opts.recorder, "record_untried", None)):
        report_untried(opts.recorder, untried_alternatives(schedule), opts.port)


def _raise_all_errors(exc: AllAttemptsFailedError, all_errors: bool) -> None:
    if all_errors and exc.attempts:
        raise exc.group from None


async def _race_sockets(opts: Options, log: AttemptLog, *, all_errors: bool) -> socket.socket:
    """Resolve and race; return the winning connected socket."""
    prepared = await _prepare(opts)
    if prepared.first is not None and len(prepared.first[1]) == 1:
        # One pair and every answer in (a literal host, typically): nothing to race.
        pair = prepared.first[1][0]
        log.started(pair)
        try:
            return await claim(prepared.connect(pair, None), _close_socket)
        except OSError as exc:
            log.failed(pair, exc)
            error = AllAttemptsFailedError.from_attempts(opts.host, opts.port, [(pair, exc)])
            _raise_all_errors(error, all_errors)
            raise error from None
    return await _race_prepared(
        opts, prepared, prepared.connect, _close_socket, log, all_errors=all_errors
    )


async def _race_prepared(
    opts: Options,
    prepared: _Prepared,
    start: Callable[[ConnectPair, Callable[[], None]], asyncio.Future[ResultT]],
    discard: Callable[[ResultT], object],
    log: AttemptLog,
    *,
    all_errors: bool,
) -> ResultT:
    """Race the prepared answers; after a win, tell the recorder which families went untried."""
    schedule = _schedule_for(opts, prepared.families)
    try:
        _, result = await race_attempts(
            schedule,
            prepared.answers,
            start,
            discard,
            host=opts.host,
            port=opts.port,
            first=prepared.first,
            log=log,
        )
    except AllAttemptsFailedError as exc:
        _raise_all_errors(exc, all_errors)
        raise
    _report_untried(opts, schedule)
    return result


async def _race_finished(
    opts: Options,
    log: AttemptLog,
    *,
    finish: Callable[[socket.socket], Awaitable[ResultT]],
    discard: Callable[[ResultT], object],
    all_errors: bool,
) -> ResultT:
    """Resolve and race, each attempt only succeeding once ``finish`` (TLS) completed."""
    prepared = await _prepare(opts)

    loop = asyncio.get_running_loop()

    async def connect_and_finish(pair: ConnectPair) -> ResultT:
        return await finish(await claim(prepared.connect(pair, None), _close_socket))

    def start(pair: ConnectPair, notify: Callable[[], None]) -> asyncio.Future[ResultT]:
        task = loop.create_task(connect_and_finish(pair))
        task.add_done_callback(lambda _: notify())
        return task

    return await _race_prepared(opts, prepared, start, discard, log, all_errors=all_errors)


def _close_socket(sock: socket.socket) -> None:
    sock.close()


async def _with_timeout(opts: Options, log: AttemptLog, work: Awaitable[ResultT]) -> ResultT:
    """Bound ``work`` by the ``timeout``; on expiry raise an :class:`AllAttemptsFailedError`
    that is a ``TimeoutError`` and tells what each attempt did (``log``). Every race ends
    here, so this is where the metrics count it (one call, :mod:`apr_async.connect.stats`)."""
    try:
        result = await _bounded(opts, log, work)
    except BaseException as exc:
        race_finished(log, exc)
        raise
    race_finished(log, None)
    return result


async def _bounded(opts: Options, log: AttemptLog, work: Awaitable[ResultT]) -> ResultT:
    if opts.timeout is None:
        return await work
    scope = asyncio.timeout(opts.timeout)
    try:
        async with scope:
            return await work
    except TimeoutError as exc:
        if scope.expired():
            raise log.timed_out(opts.host, opts.port, opts.timeout) from exc
        raise


async def _create(
    protocol_factory: Callable[[], ProtocolT],
    opts: Options,
    log: AttemptLog,
    tls: TLSOptions | None,
    *,
    race_tls: bool,
    all_errors: bool,
) -> tuple[asyncio.Transport, ProtocolT]:
    if tls is None or not race_tls:
        sock = await _race_sockets(opts, log, all_errors=all_errors)
        return await wrap_socket(protocol_factory, sock, tls)

    async def handshake(sock: socket.socket) -> HandshakeHolder:
        _, holder = await wrap_socket(HandshakeHolder, sock, tls)
        return holder

    holder = await _race_finished(
        opts, log, finish=handshake, discard=abort_holder, all_errors=all_errors
    )
    assert holder.transport is not None
    try:
        protocol = protocol_factory()
        holder.hand_over(protocol)
    except BaseException:
        abort_holder(holder)
        raise
    return holder.transport, protocol


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
    return await _with_timeout(opts, log, _race_sockets(opts, log, all_errors=bool(all_errors)))


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
    if _only_defaults(kwds, ssl, server_hostname, ssl_handshake_timeout, local_addr,
                      happy_eyeballs_delay, interleave, timeout, race_tls, pair_source, svcb):
        fast = _fast(host, port, family, service, context)
        if fast is not None:
            return await wrap_socket(protocol_factory, await connect_single(*fast), None)
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
        return _create(protocol_factory, request, log, request_tls, race_tls=bool(race_tls),
                       all_errors=all_errors)

    if settings is None:
        return await _with_timeout(opts, log, create(opts, tls))
    work = connect_via_svcb(opts, tls, settings, create, library_context=ssl is True)
    return await _with_timeout(opts, log, work)


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
    if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
        raise ValueError(f"limit must be a positive int, got {limit!r}")
    loop = asyncio.get_running_loop()
    fast = None
    if _only_defaults(kwds, ssl, server_hostname, ssl_handshake_timeout, local_addr,
                      happy_eyeballs_delay, interleave, timeout, race_tls, pair_source, svcb):
        fast = _fast(host, port, family, service, context)
    reader = asyncio.StreamReader(limit=limit, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    if fast is not None:
        transport = await open_stream(await connect_single(*fast), protocol)
        return reader, asyncio.StreamWriter(transport, protocol, reader, loop)
    transport, _ = await create_connection(
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
