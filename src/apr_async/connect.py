"""Happy Eyeballs over ranked (source, destination) pairs: ``open_connection``,
``create_connection`` and ``connect_socket``.

The race is driven by the sans-IO :class:`apr_async.schedule.Schedule`; this module does the
I/O around it: it pulls each address family's ranked pairs as soon as they are known, starts
each attempt on a non-blocking socket bound to the pair's source, feeds every outcome back to
the schedule and to the probe service, and cleans up every loser.

Ownership rules that keep this leak-free: each attempt task owns its socket until it returns
it (it closes it on any error or cancellation); the race owns every returned socket until it
hands the winner to the caller, and closes every other one, including a late second winner;
all tasks are cancelled *and awaited* before the race returns or raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno as errno_codes
import ipaddress
import logging
import math
import socket
import ssl as ssl_module
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, TypeVar, cast

from apr_async import pairs
from apr_async.addresses import IPAddress
from apr_async.connect_errors import AllAttemptsFailedError
from apr_async.errors import parse_host
from apr_async.pairs import PairContext, default_context
from apr_async.schedule import (
    GiveUp,
    SchedulablePair,
    Schedule,
    SetTimer,
    StartAttempt,
    Succeeded,
    attempt_delay,
)

__all__ = [
    "AttemptRecorder",
    "ConnectPair",
    "ContextRecorder",
    "DirectPair",
    "PairSource",
    "connect_socket",
    "create_connection",
    "open_connection",
    "race",
]

log = logging.getLogger(__name__)

#: Linux value of IP_BIND_ADDRESS_NO_PORT (include/uapi/linux/in.h) for Pythons lacking it.
_IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
_DEFAULT_LIMIT = 2**16


class ConnectPair(SchedulablePair, Protocol):
    """What a connection attempt needs from a pair (``ranking.AddrPair`` provides it).

    ``source`` is the address to ``bind()`` (port 0), or ``None`` for the kernel's choice;
    ``destination`` is the address to ``connect()``.
    """

    @property
    def source(self) -> tuple[Any, ...] | None:
        """Address to bind the attempt's socket to."""

    @property
    def destination(self) -> tuple[Any, ...]:
        """Address to connect to."""


PairT = TypeVar("PairT", bound=ConnectPair)
SchedT = TypeVar("SchedT", bound=SchedulablePair)
ResultT = TypeVar("ResultT")

#: ``source(host, port, family)`` yields ``(family, ranked_pairs)`` once per address family
#: as each family's answer arrives (an empty list when that family has no address). It may
#: yield the caller's re-ranking of every pair known so far. It raises ``socket.gaierror``
#: when the name cannot be resolved at all.
PairSource = Callable[[str, int, int], AsyncIterator[tuple[int, Sequence[ConnectPair]]]]


class AttemptRecorder(Protocol):
    """Receives every attempt's outcome (the probe service implements it).

    ``ok`` is whether the TCP handshake completed; ``rtt`` the seconds from ``connect()`` to
    the answer (SYN-ACK or RST) when one came; ``errno`` the error number of a failure. A
    refusal proves the path works, so it comes with its RTT. An attempt cancelled because
    another won, or because the caller gave up, is reported as ``ETIMEDOUT`` only if it had
    already waited longer than its Connection Attempt Delay; otherwise nothing is known and
    nothing is reported.
    """

    def record_attempt(
        self, pair: Any, port: int, ok: bool, rtt: float | None, errno: int | None
    ) -> None:
        """Record one attempt's outcome."""


class DirectPair(NamedTuple):
    """A pair without ranking knowledge (no RTT, not failing); the source may be ``None``."""

    family: int
    source: tuple[Any, ...] | None
    destination: tuple[Any, ...]

    @property
    def rtt(self) -> float | None:
        """Always unknown."""
        return None

    @property
    def failing(self) -> bool:
        """Never known to fail."""
        return False

    @property
    def reason(self) -> str:
        """Why this pair is where it is."""
        return "resolved by the system resolver; no ranking information"


# -- the race --------------------------------------------------------------------------------


class _Sentinel:
    pass


_END = _Sentinel()


async def _next_answer(
    answers: AsyncIterator[tuple[int, Sequence[SchedT]]],
) -> tuple[int, Sequence[SchedT]] | _Sentinel:
    try:
        return await anext(answers)
    except StopAsyncIteration:
        return _END


async def _wait_cancelled(tasks: Iterable[asyncio.Future[Any]]) -> None:
    """Cancel ``tasks`` and wait until all are done, even if we are cancelled meanwhile.

    Leaving a task running would leak its socket; a cancellation arriving here is re-raised
    once everything is finished.
    """
    pending = [t for t in tasks if not t.done()]
    for task in pending:
        task.cancel()
    interrupted = False
    while pending:
        try:
            await asyncio.wait(pending)
        except asyncio.CancelledError:
            interrupted = True
        pending = [t for t in pending if not t.done()]
    if interrupted:
        raise asyncio.CancelledError


async def race(
    schedule: Schedule[SchedT],
    answers: AsyncIterator[tuple[int, Sequence[SchedT]]],
    attempt: Callable[[SchedT], Awaitable[ResultT]],
    discard: Callable[[ResultT], object],
    *,
    host: str = "",
    port: int = 0,
) -> tuple[SchedT, ResultT]:
    """Run ``schedule`` to completion; return ``(pair, result)`` of the winning attempt.

    ``answers`` yields ``(family, ranked pairs)`` per address family (see :data:`PairSource`);
    ``attempt(pair)`` connects and returns a result (a socket, a transport, ...), raising
    ``OSError`` on failure; ``discard(result)`` disposes of a result that is not returned (a
    late second winner, or any result when the race is cancelled). Other exceptions from an
    attempt propagate. Raises :class:`AllAttemptsFailedError` when every attempt failed, the
    resolution's ``gaierror`` when there was nothing to try.
    """
    loop = asyncio.get_running_loop()
    attempts: dict[asyncio.Task[ResultT], SchedT] = {}
    feeder: asyncio.Task[tuple[int, Sequence[SchedT]] | _Sentinel] | None = None
    failures: list[tuple[SchedT, OSError]] = []
    resolution_error: OSError | None = None
    winner: tuple[SchedT, ResultT] | None = None
    returned = False

    def carry_out(actions: Iterable[object]) -> bool:
        """Apply the schedule's actions; True once the race is decided."""
        for action in actions:
            if isinstance(action, StartAttempt):
                pair = cast(SchedT, action.pair)
                task = loop.create_task(_as_coroutine(attempt(pair)))
                attempts[task] = pair
            elif isinstance(action, Succeeded | GiveUp):
                return True
            else:
                assert isinstance(action, SetTimer)  # read back through schedule.timer_at
        return False

    def end_of_answers(now: float) -> bool:
        decided = False
        for family in sorted(schedule.pending_families):
            decided = carry_out(schedule.answers(family, [], now)) or decided
        return decided

    try:
        feeder = loop.create_task(_next_answer(answers))
        decided = False
        while not decided:
            waitset: set[asyncio.Future[Any]] = set(attempts)
            if feeder is not None:
                waitset.add(feeder)
            timer_at = schedule.timer_at
            delay = None if timer_at is None else max(0.0, timer_at - loop.time())
            if waitset:
                done, _ = await asyncio.wait(
                    waitset, timeout=delay, return_when=asyncio.FIRST_COMPLETED
                )
            else:
                if delay is None:  # pragma: no cover - the schedule always has a way out
                    raise RuntimeError("Happy Eyeballs race stalled")
                await asyncio.sleep(delay)
                done = set()
            now = loop.time()
            if not done:
                # The loop may wake a timer up to its clock resolution early (and virtual
                # clocks round): the timer fired, so its time has come.
                if timer_at is not None:
                    now = max(now, timer_at)
                decided = carry_out(schedule.timer(now))
                continue
            # Successes first: a failure handled before them would start a needless attempt.
            ordered = sorted(
                done,
                key=lambda t: t is feeder or t.cancelled() or t.exception() is not None,
            )
            for task in ordered:
                if task is feeder:
                    feeder = None
                    try:
                        answer = task.result()
                    except OSError as exc:  # gaierror included
                        resolution_error = exc
                        decided = end_of_answers(now) or decided
                        continue
                    if isinstance(answer, _Sentinel):
                        decided = end_of_answers(now) or decided
                        continue
                    family, pairs = answer
                    decided = carry_out(schedule.answers(family, pairs, now)) or decided
                    if not decided:
                        feeder = loop.create_task(_next_answer(answers))
                    continue
                pair = attempts.pop(task)  # type: ignore[call-overload]
                if task.cancelled():
                    # Only we cancel attempts, and not while the race runs: someone else did.
                    raise asyncio.CancelledError
                error = task.exception()
                if error is None:
                    result = task.result()
                    if winner is None:
                        winner = (pair, result)
                        decided = carry_out(schedule.attempt_succeeded(pair, now)) or decided
                    else:
                        discard(result)
                elif isinstance(error, OSError):
                    if not schedule.done:
                        failures.append((pair, error))
                        decided = carry_out(schedule.attempt_failed(pair, now)) or decided
                else:
                    raise error
        if winner is None:
            if not failures and resolution_error is not None:
                raise resolution_error
            raise AllAttemptsFailedError.from_attempts(host, port, failures)
        returned = True
        return winner
    finally:
        leftovers: list[asyncio.Future[Any]] = list(attempts)
        if feeder is not None:
            leftovers.append(feeder)
        try:
            await _wait_cancelled(leftovers)
        finally:
            for task in attempts:
                if task.cancelled():
                    continue
                if task.exception() is None:
                    discard(task.result())
            if winner is not None and not returned:
                discard(winner[1])
            aclose = getattr(answers, "aclose", None)
            if aclose is not None:
                await aclose()


async def _as_coroutine(awaitable: Awaitable[ResultT]) -> ResultT:
    return await awaitable


# -- one attempt ----------------------------------------------------------------------------


def _record(
    recorder: AttemptRecorder | None,
    pair: Any,
    port: int,
    outcome: tuple[bool, float | None, int | None],
) -> None:
    if recorder is None:
        return
    try:
        recorder.record_attempt(pair, port, *outcome)
    except Exception:
        # The service's bookkeeping must never break the application's connection.
        log.exception("record_attempt failed for %r", pair)


async def _connect_pair(
    pair: ConnectPair,
    *,
    port: int,
    bind_to: tuple[Any, ...] | None,
    recorder: AttemptRecorder | None,
    delay_override: float | None,
) -> socket.socket:
    """Connect one non-blocking TCP socket for ``pair``; the caller owns the result."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(pair.family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    started = loop.time()
    answered = False
    try:
        sock.setblocking(False)
        if bind_to is not None:
            if bind_to[1] == 0:
                # Let connect() pick the port with the full 4-tuple in mind, so many
                # concurrent attempts from one source do not exhaust its ephemeral ports.
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind(bind_to)
        started = loop.time()
        await loop.sock_connect(sock, pair.destination)
        answered = True
        _record(recorder, pair, port, (True, loop.time() - started, None))
        return sock
    except asyncio.CancelledError:
        sock.close()
        waited = loop.time() - started
        if not answered and waited > attempt_delay(pair, delay_override):
            _record(recorder, pair, port, (False, None, errno_codes.ETIMEDOUT))
        raise
    except BaseException as exc:
        sock.close()
        if not answered:
            number = getattr(exc, "errno", None)
            # A refusal is an answer from the far end: the path itself works.
            rtt = loop.time() - started if number == errno_codes.ECONNREFUSED else None
            _record(recorder, pair, port, (False, rtt, number))
        raise


# -- the default pair source ----------------------------------------------------------------


def _families_for(family: int) -> tuple[int, ...]:
    if family == socket.AF_UNSPEC:
        return (socket.AF_INET6, socket.AF_INET)
    return (family,)


async def _filtered(
    answers: AsyncIterator[tuple[int, Sequence[ConnectPair]]], families: tuple[int, ...]
) -> AsyncIterator[tuple[int, Sequence[ConnectPair]]]:
    """Drop pairs of families we cannot use (for instance with ``local_addr``)."""
    try:
        async for family, pairs in answers:
            if family in families:
                yield family, [p for p in pairs if p.family in families]
    finally:
        aclose = getattr(answers, "aclose", None)
        if aclose is not None:
            await aclose()


# -- argument checking (before any I/O) -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Options:
    host: str
    port: int
    family: int
    local_addr: tuple[str, int] | None
    happy_eyeballs_delay: float | None
    interleave: int
    timeout: float | None
    recorder: AttemptRecorder | None
    pair_source: PairSource | None
    context: PairContext


def _check_host(host: object) -> str:
    return parse_host(host).text


def _check_port(port: object) -> int:
    if isinstance(port, str) and port.isdigit():
        port = int(port)
    if isinstance(port, bool) or not isinstance(port, int):
        raise TypeError(f"port must be an int, not {type(port).__name__}")
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be in 0-65535, got {port}")
    return port


def _check_seconds(name: str, value: object, *, allow_zero: bool) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    bad = value < 0 or (value == 0 and not allow_zero)
    if bad or not math.isfinite(value):
        low = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number of seconds {low}, got {value!r}")
    return float(value)


def _options(
    host: object,
    port: object,
    *,
    family: object,
    local_addr: object,
    happy_eyeballs_delay: object,
    interleave: object,
    timeout: object,
    service: object,
    pair_source: object,
    context: object,
) -> _Options:
    checked_host = _check_host(host)
    checked_port = _check_port(port)
    if family not in (socket.AF_UNSPEC, socket.AF_INET, socket.AF_INET6):
        raise ValueError(f"family must be 0, AF_INET or AF_INET6, got {family!r}")
    checked_local: tuple[str, int] | None = None
    if local_addr is not None:
        if not isinstance(local_addr, tuple | list) or len(local_addr) != 2:
            raise TypeError("local_addr must be a (host, port) tuple")
        local_host = local_addr[0]
        if not isinstance(local_host, str) or not local_host:
            raise TypeError("local_addr host must be a non-empty str")
        checked_local = (local_host, _check_port(local_addr[1]))
    delay = _check_seconds("happy_eyeballs_delay", happy_eyeballs_delay, allow_zero=True)
    if interleave is None:
        interleave = 1
    if isinstance(interleave, bool) or not isinstance(interleave, int):
        raise TypeError(f"interleave must be an int, not {type(interleave).__name__}")
    if interleave < 1:
        raise ValueError(f"interleave must be at least 1, got {interleave}")
    checked_timeout = _check_seconds("timeout", timeout, allow_zero=False)
    if service is not None and not callable(getattr(service, "record_attempt", None)):
        raise TypeError("service must have a record_attempt(pair, port, ok, rtt, errno) method")
    if pair_source is not None and not callable(pair_source):
        raise TypeError("pair_source must be callable")
    ctx = _context_of(context, service)
    recorder = cast(AttemptRecorder | None, service)
    if recorder is None:
        recorder = ContextRecorder(ctx)
    return _Options(
        host=checked_host,
        port=checked_port,
        family=cast(int, family),
        local_addr=checked_local,
        happy_eyeballs_delay=delay,
        interleave=interleave,
        timeout=checked_timeout,
        recorder=recorder,
        pair_source=cast(PairSource | None, pair_source),
        context=ctx,
    )


@dataclass(frozen=True, slots=True)
class _TLSOptions:
    context: ssl_module.SSLContext | None
    server_hostname: str | None
    handshake_timeout: float | None
    shutdown_timeout: float | None


def _tls_options(
    host: str,
    ssl: object,
    server_hostname: object,
    ssl_handshake_timeout: object,
    ssl_shutdown_timeout: object,
) -> _TLSOptions | None:
    if ssl is None or ssl is False:
        if server_hostname is not None:
            raise ValueError("server_hostname is only meaningful with ssl")
        if ssl_handshake_timeout is not None:
            raise ValueError("ssl_handshake_timeout is only meaningful with ssl")
        if ssl_shutdown_timeout is not None:
            raise ValueError("ssl_shutdown_timeout is only meaningful with ssl")
        return None
    if ssl is True:
        context = ssl_module.create_default_context()
    elif isinstance(ssl, ssl_module.SSLContext):
        context = ssl
    else:
        raise TypeError(f"ssl must be None, a bool or an SSLContext, not {type(ssl).__name__}")
    if server_hostname is None:
        server_hostname = host.split("%", 1)[0]
    elif not isinstance(server_hostname, str):
        raise TypeError("server_hostname must be a str")
    return _TLSOptions(
        context=context,
        server_hostname=server_hostname or None,
        handshake_timeout=_check_seconds(
            "ssl_handshake_timeout", ssl_handshake_timeout, allow_zero=False
        ),
        shutdown_timeout=_check_seconds(
            "ssl_shutdown_timeout", ssl_shutdown_timeout, allow_zero=False
        ),
    )


def _pop_compat_kwds(kwds: dict[str, Any]) -> tuple[object, bool]:
    """Accept ``asyncio.loop.create_connection`` keywords that make sense here."""
    proto = kwds.pop("proto", 0)
    if proto not in (0, socket.IPPROTO_TCP):
        raise ValueError(f"proto must be 0 or IPPROTO_TCP, got {proto!r}")
    flags = kwds.pop("flags", 0)
    if isinstance(flags, bool) or not isinstance(flags, int):
        raise TypeError("flags must be an int")
    all_errors = kwds.pop("all_errors", False)
    if kwds.get("sock") is not None:
        raise ValueError("sock= is not supported: use asyncio's create_connection for it")
    kwds.pop("sock", None)
    shutdown = kwds.pop("ssl_shutdown_timeout", None)
    if kwds:
        raise TypeError(f"unexpected keyword argument(s): {', '.join(sorted(kwds))}")
    return shutdown, bool(all_errors)


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
class _Race:
    """Everything one race needs, prepared from the checked options."""

    schedule: Schedule[ConnectPair]
    answers: AsyncIterator[tuple[int, Sequence[ConnectPair]]]
    connect: Callable[[ConnectPair], Awaitable[socket.socket]]


async def _prepare(opts: _Options) -> _Race:
    families = _families_for(opts.family)
    binds: dict[int, tuple[Any, ...]] = {}
    if opts.local_addr is not None:
        binds = await _local_binds(opts.local_addr)
        families = tuple(f for f in families if f in binds)
        if not families:
            raise OSError(
                errno_codes.EAFNOSUPPORT,
                f"local_addr {opts.local_addr[0]!r} has no address of the requested family",
            )
    source: PairSource = opts.pair_source or _ranked_source(opts.context)
    # Ask only for what can be used (local_addr may rule a family out).
    family = families[0] if len(families) == 1 else opts.family
    answers = _filtered(source(opts.host, opts.port, family), families)
    schedule: Schedule[ConnectPair] = Schedule(
        families,
        happy_eyeballs_delay=opts.happy_eyeballs_delay,
        interleave=opts.interleave,
    )

    def connect(pair: ConnectPair) -> Awaitable[socket.socket]:
        return _connect_pair(
            pair,
            port=opts.port,
            bind_to=binds.get(pair.family) if binds else pair.source,
            recorder=opts.recorder,
            delay_override=opts.happy_eyeballs_delay,
        )

    return _Race(schedule, answers, connect)


def _raise_all_errors(exc: AllAttemptsFailedError, all_errors: bool) -> None:
    if all_errors and exc.attempts:
        raise exc.group from None


async def _race_sockets(opts: _Options, *, all_errors: bool) -> socket.socket:
    """Resolve and race; return the winning connected socket."""
    prepared = await _prepare(opts)
    try:
        _, sock = await race(
            prepared.schedule,
            prepared.answers,
            prepared.connect,
            _close_socket,
            host=opts.host,
            port=opts.port,
        )
    except AllAttemptsFailedError as exc:
        _raise_all_errors(exc, all_errors)
        raise
    return sock


async def _race_finished(
    opts: _Options,
    *,
    finish: Callable[[socket.socket], Awaitable[ResultT]],
    discard: Callable[[ResultT], object],
    all_errors: bool,
) -> ResultT:
    """Resolve and race, each attempt only succeeding once ``finish`` (TLS) completed."""
    prepared = await _prepare(opts)

    async def connect_and_finish(pair: ConnectPair) -> ResultT:
        return await finish(await prepared.connect(pair))

    try:
        _, result = await race(
            prepared.schedule,
            prepared.answers,
            connect_and_finish,
            discard,
            host=opts.host,
            port=opts.port,
        )
    except AllAttemptsFailedError as exc:
        _raise_all_errors(exc, all_errors)
        raise
    return result


def _close_socket(sock: socket.socket) -> None:
    sock.close()


def _ip_of(address: tuple[Any, ...] | None) -> IPAddress | None:
    if not address:
        return None
    try:
        return ipaddress.ip_address(str(address[0]).split("%", 1)[0])
    except ValueError:
        return None


class ContextRecorder:
    """An :class:`AttemptRecorder` feeding a ``PairContext``'s tables (the default when no
    ``service`` is given): failed pairs rank last for a while, a success clears that, and
    every measured RTT (a refusal's too) shapes the next ranking and attempt delay."""

    def __init__(self, context: PairContext) -> None:
        self._context = context

    def record_attempt(
        self, pair: Any, port: int, ok: bool, rtt: float | None, errno: int | None
    ) -> None:
        src = _ip_of(getattr(pair, "source", None))
        dst = _ip_of(getattr(pair, "destination", None))
        if src is None or dst is None:
            return
        ctx = self._context
        now = ctx.clock()
        if rtt is not None or not ok:
            # A refusal still measured the path; a silent attempt counts as a loss.
            ctx.latency.record(src, dst, rtt, now)
        if ok:
            ctx.failures.record_success(src, dst, port)
        else:
            name = errno_codes.errorcode.get(errno, None) if errno is not None else None
            ctx.failures.record_failure(src, dst, port, now, error=name or "failed")


def _context_of(context: object, service: object) -> PairContext:
    if context is None:
        context = getattr(service, "context", None)
    if context is None:
        return default_context()
    if not isinstance(context, PairContext):
        raise TypeError(f"context must be a PairContext, not {type(context).__name__}")
    return context


def _ranked_source(context: PairContext) -> PairSource:
    """The default pairs: ``apr_async.pairs`` ranking, one family at a time as answers come.

    With every answer at hand (a literal, the hosts file or a warm cache) the whole ranking
    comes at once, so the ranking alone decides which family goes first. Otherwise each
    family's pairs are yielded as its answer arrives, and once both are in, the re-ranking
    of all of them (from the now warm cache) so that later pairs join in rank order.
    """

    async def source(
        host: str, port: int, family: int
    ) -> AsyncIterator[tuple[int, Sequence[ConnectPair]]]:
        families = _families_for(family)
        resolver = context.get_resolver()
        if resolver.cached(host, family) is not None:
            ranked = await pairs.get_addr_pairs(host, port, family=family, context=context)
            for index, fam in enumerate(families):
                yield fam, ranked if index == 0 else []
            return
        loop = asyncio.get_running_loop()
        lookups = {
            loop.create_task(pairs.get_addr_pairs(host, port, family=fam, context=context)): fam
            for fam in families
        }
        errors: list[OSError] = []
        found = False
        try:
            pending = set(lookups)
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                ready = sorted(done, key=lambda t: families.index(lookups[t]))
                for index, task in enumerate(ready):
                    fam = lookups[task]
                    last = not pending and index == len(ready) - 1
                    try:
                        ranked = task.result()
                    except OSError as exc:  # gaierror: this family has no address
                        errors.append(exc)
                        if last and not found:
                            break  # nothing at all: raise the name's error below
                        yield fam, []
                        continue
                    if last and found and resolver.cached(host, family) is not None:
                        ranked = await pairs.get_addr_pairs(
                            host, port, family=family, context=context
                        )
                    found = found or bool(ranked)
                    yield fam, ranked
            if not found:
                errors.sort(key=lambda e: e.errno != socket.EAI_NONAME)
                if errors:
                    raise errors[0]
        finally:
            await _wait_cancelled(lookups)
            for task in lookups:
                if not task.cancelled():
                    task.exception()

    return source


async def _with_timeout(opts: _Options, work: Awaitable[ResultT]) -> ResultT:
    if opts.timeout is None:
        return await work
    scope = asyncio.timeout(opts.timeout)
    try:
        async with scope:
            return await work
    except TimeoutError as exc:
        if scope.expired():
            raise TimeoutError(
                errno_codes.ETIMEDOUT,
                f"timed out after {opts.timeout:g} s connecting to {opts.host} port {opts.port}",
            ) from exc
        raise


# -- TLS hand-over for "success means TLS completed" ------------------------------------------


class _HandshakeHolder(asyncio.Protocol):
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


ProtocolT = TypeVar("ProtocolT", bound=asyncio.BaseProtocol)


async def _wrap_socket(
    protocol_factory: Callable[[], ProtocolT],
    sock: socket.socket,
    tls: _TLSOptions | None,
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


async def _create(
    protocol_factory: Callable[[], ProtocolT],
    opts: _Options,
    tls: _TLSOptions | None,
    race_tls: bool,
    all_errors: bool,
) -> tuple[asyncio.Transport, ProtocolT]:
    if tls is None or not race_tls:
        sock = await _race_sockets(opts, all_errors=all_errors)
        return await _wrap_socket(protocol_factory, sock, tls)

    async def handshake(sock: socket.socket) -> _HandshakeHolder:
        _, holder = await _wrap_socket(_HandshakeHolder, sock, tls)
        return holder

    holder = await _race_finished(
        opts, finish=handshake, discard=_abort_holder, all_errors=all_errors
    )
    assert holder.transport is not None
    try:
        protocol = protocol_factory()
        holder.hand_over(protocol)
    except BaseException:
        _abort_holder(holder)
        raise
    return holder.transport, protocol


def _abort_holder(holder: _HandshakeHolder) -> None:
    if holder.transport is not None:
        holder.transport.abort()


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
    bounds the whole operation (``TimeoutError``); ``service`` receives every attempt's
    outcome (:class:`AttemptRecorder`); ``pair_source`` replaces the ranked pairs source.

    Raises ``socket.gaierror`` when the name does not resolve and
    :class:`~apr_async.connect_errors.AllAttemptsFailedError` (an ``OSError``) when every
    attempt failed (its ``ExceptionGroup`` instead when ``all_errors`` is true).
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

    return await _with_timeout(opts, _race_sockets(opts, all_errors=bool(all_errors)))


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
    **kwds: Any,
) -> tuple[asyncio.Transport, ProtocolT]:
    """Like ``loop.create_connection``, over ranked pairs; returns ``(transport, protocol)``.

    With ``ssl`` the TLS handshake is done on the TCP race's winner; with ``race_tls=True`` a
    pair only wins once its TLS handshake completed (Happy Eyeballs v3 semantics), so a path
    whose TLS stalls (a broken middlebox, MTU trouble) loses to a working one; the protocol
    factory is still called once, for the winner. Also accepts ``ssl_shutdown_timeout``,
    ``proto``, ``flags`` and ``all_errors`` like asyncio. Other arguments as in
    :func:`connect_socket`.
    """
    shutdown, all_errors = _pop_compat_kwds(dict(kwds))
    if not callable(protocol_factory):
        raise TypeError("protocol_factory must be callable")
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
    tls = _tls_options(opts.host, ssl, server_hostname, ssl_handshake_timeout, shutdown)
    if race_tls and tls is None:
        raise ValueError("race_tls=True needs ssl")
    return await _with_timeout(
        opts, _create(protocol_factory, opts, tls, bool(race_tls), all_errors)
    )


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
    **kwds: Any,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Like ``asyncio.open_connection``, over ranked pairs; returns ``(reader, writer)``.

    Arguments as in :func:`create_connection`, plus ``limit`` (the StreamReader buffer limit).
    """
    if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
        raise ValueError(f"limit must be a positive int, got {limit!r}")
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
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
        **kwds,
    )
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    return reader, writer
