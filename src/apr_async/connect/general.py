"""The general connection path: checked options -> ranked pairs -> the race -> a socket.

:mod:`apr_async.connect.api` takes a request here when the one-pair fast path
(:mod:`apr_async.connect.fast`) does not apply: options other than the defaults, several
pairs, no warm answer. :func:`race_sockets` returns the winning socket, :func:`create_transport`
a transport with TLS done on the winner or inside the race (``race_tls``), and
:func:`with_timeout` bounds either and counts the race for the metrics.
"""

from __future__ import annotations

import asyncio
import errno as errno_codes
import ipaddress
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from apr_async.connect.attempt import Connecting, claim
from apr_async.connect.errors import AllAttemptsFailedError, AttemptLog
from apr_async.connect.options import Options, TLSOptions
from apr_async.connect.race import race_attempts, untried_alternatives
from apr_async.connect.rank_memo import rank_memo
from apr_async.connect.recorders import report_untried
from apr_async.connect.source import filtered, ranked_source, refused_by
from apr_async.connect.stats import race_finished
from apr_async.connect.tls import HandshakeHolder, ProtocolT, abort_holder, wrap_socket
from apr_async.connect.types import ConnectPair, families_for
from apr_async.core.reach import without_pointless
from apr_async.core.schedule import Schedule
from apr_async.resolve import pairs

__all__ = ["create_transport", "race_pairs", "race_sockets", "with_timeout"]

ResultT = TypeVar("ResultT")


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
        # After a refusal the refused pair is failing, so the schedule would try a doubted
        # source first, whose SYN hangs: drop those (see core.reach.pointless_after_refusal).
        usable = without_pointless(ranked, refused_by(opts.context, opts.port))
        first = (socket.AF_UNSPEC, [p for p in usable if p.family in families])
    else:
        source = opts.pair_source or ranked_source(opts.context)
        answers = filtered(source(opts.host, opts.port, family), families)

    return _Prepared(families, answers, _connector(opts, binds), first)


def _connector(
    opts: Options, binds: dict[int, tuple[Any, ...]]
) -> Callable[[ConnectPair, Callable[[], None] | None], asyncio.Future[socket.socket]]:
    """Start one attempt of a race: bound to ``binds``' address of its family (``local_addr``)
    or, without any, to the pair's own source."""
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

    return connect


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


async def race_sockets(opts: Options, log: AttemptLog, *, all_errors: bool) -> socket.socket:
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


async def race_pairs(
    opts: Options, log: AttemptLog, pairs: Sequence[ConnectPair]
) -> socket.socket:
    """Race ``pairs`` (every answer at hand, in the order to try them) with ``opts``'s
    settings: the general path's race without the resolution and ranking before it."""
    connect = _connector(opts, {})
    prepared = _Prepared(families_for(opts.family), None, connect,
                         (socket.AF_UNSPEC, list(pairs)))
    return await _race_prepared(opts, prepared, connect, _close_socket, log, all_errors=False)


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


async def with_timeout(opts: Options, log: AttemptLog, work: Awaitable[ResultT]) -> ResultT:
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


async def create_transport(
    protocol_factory: Callable[[], ProtocolT],
    opts: Options,
    log: AttemptLog,
    tls: TLSOptions | None,
    *,
    race_tls: bool,
    all_errors: bool,
) -> tuple[asyncio.Transport, ProtocolT]:
    if tls is None or not race_tls:
        sock = await race_sockets(opts, log, all_errors=all_errors)
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
