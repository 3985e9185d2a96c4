"""Happy Eyeballs over ranked (source, destination) pairs: ``open_connection``,
``create_connection`` and ``connect_socket``.

The race is driven by the sans-IO :class:`apr_async.schedule.Schedule`; this module does the
I/O around it: it takes the ranked pairs from ``apr_async.pairs`` (all at once for a literal
or a warm cache, else each address family as its answer arrives), starts each attempt on a
non-blocking socket bound to the pair's source, feeds every outcome back to the schedule and
to the probe service (or the pair context's tables), and cleans up every loser.

Ownership rules that keep this leak-free: an attempt owns its socket until it succeeds, and
closes it synchronously on failure or cancellation (a cancelled attempt unregisters its
callback and closes at once, not a loop turn later); the race owns every connected socket
until it hands the winner over, and closes every other one, including a late second winner;
every task is cancelled *and awaited* before the race returns or raises.

Attempts are futures completed by a writability callback rather than tasks around
``loop.sock_connect``: the race wakes up one loop turn after the kernel answers, as plain
asyncio does, which keeps a loopback connect within a few tens of microseconds of asyncio's.
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
import threading
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, TypeVar, cast

from apr_async import pairs
from apr_async.addresses import IPAddress
from apr_async.connect_errors import AllAttemptsFailedError
from apr_async.errors import HostSpec, parse_host
from apr_async.pairs import PairContext, default_context
from apr_async.schedule import (
    GiveUp,
    SchedulablePair,
    Schedule,
    StartAttempt,
    Succeeded,
    attempt_delay,
)
from apr_async.service import implicit_service

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
    "ranked_source",
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
#: yield the caller's re-ranking of every pair known so far. ``(AF_UNSPEC, ranked_pairs)``
#: says every family's answer is in (a literal, a warm cache). It raises ``socket.gaierror``
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
    """A pair without ranking knowledge (no RTT, not failing) for custom pair sources;
    ``source`` may be ``None`` (the kernel's choice)."""

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
        return "given by a custom pair source; no ranking information"


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
    attempt: Callable[[SchedT], Coroutine[Any, Any, ResultT]],
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

    def start(pair: SchedT, notify: Callable[[], None]) -> asyncio.Future[ResultT]:
        task = loop.create_task(attempt(pair))
        task.add_done_callback(lambda _: notify())
        return task

    return await _race_core(schedule, answers, start, discard, host=host, port=port)


async def _race_core(
    schedule: Schedule[SchedT],
    answers: AsyncIterator[tuple[int, Sequence[SchedT]]] | None,
    start: Callable[[SchedT, Callable[[], None]], asyncio.Future[ResultT]],
    discard: Callable[[ResultT], object],
    *,
    host: str,
    port: int,
    first: tuple[int, Sequence[SchedT]] | None = None,
) -> tuple[SchedT, ResultT]:
    """:func:`race` over attempts that wake the race themselves (one loop turn per event).

    ``first`` is an answer already at hand (then ``answers`` may be ``None``).
    """
    loop = asyncio.get_running_loop()
    attempts: dict[asyncio.Future[ResultT], SchedT] = {}
    feeder: asyncio.Task[tuple[int, Sequence[SchedT]] | _Sentinel] | None = None
    failures: list[tuple[SchedT, OSError]] = []
    resolution_error: OSError | None = None
    winner: tuple[SchedT, ResultT] | None = None
    returned = False
    wake: asyncio.Future[None] | None = None
    timer_fired = False

    def notify(*_: object) -> None:
        if wake is not None and not wake.done():
            wake.set_result(None)

    def on_timer() -> None:
        nonlocal timer_fired
        timer_fired = True
        notify()

    def carry_out(actions: Iterable[object]) -> bool:
        """Apply the schedule's actions; True once the race is decided."""
        for action in actions:
            if isinstance(action, StartAttempt):
                pair = cast(SchedT, action.pair)
                attempts[start(pair, notify)] = pair
            elif isinstance(action, Succeeded | GiveUp):
                return True
            # SetTimer: the timer is read back through schedule.timer_at
        return False

    def take_answer(answer: tuple[int, Sequence[SchedT]] | _Sentinel, now: float) -> bool:
        """Feed one answer (or the end of answers) to the schedule; True once decided."""
        if isinstance(answer, _Sentinel):
            return carry_out(schedule.answers_all((), now))
        family, pairs = answer
        if family == socket.AF_UNSPEC:  # every family's answer at once (literal, warm cache)
            return carry_out(schedule.answers_all(pairs, now))
        return carry_out(schedule.answers(family, pairs, now))

    def next_feeder() -> None:
        nonlocal feeder
        if answers is None:
            feeder = None
            end_now = take_answer(_END, loop.time())
            assert end_now
            return
        feeder = loop.create_task(_next_answer(answers))
        feeder.add_done_callback(notify)

    try:
        opening: tuple[int, Sequence[SchedT]] | _Sentinel = _END
        if first is not None:
            opening = first
        elif answers is not None:
            # Nothing can happen before the first answer: wait for it without a task.
            try:
                opening = await _next_answer(answers)
            except OSError as exc:  # gaierror included
                resolution_error = exc
        decided = take_answer(opening, loop.time())
        if not decided and schedule.pending_families:
            next_feeder()
        if not decided and feeder is None and len(attempts) == 1 and schedule.timer_at is None:
            # The common case (one pair, all answers in): nothing to race, just wait for it.
            lone, pair = next(iter(attempts.items()))
            try:
                result = await lone
            except OSError as exc:
                del attempts[lone]
                failures.append((pair, exc))
                decided = carry_out(schedule.attempt_failed(pair, loop.time()))
            else:
                del attempts[lone]
                winner = (pair, result)
                decided = carry_out(schedule.attempt_succeeded(pair, loop.time()))
        while not decided:
            done = [f for f in attempts if f.done()]
            answered = feeder is not None and feeder.done()
            now = loop.time()
            timer_at = schedule.timer_at
            if not done and not answered:
                if timer_at is not None and (timer_fired or now >= timer_at):
                    # The loop may fire a timer up to its clock resolution early (and virtual
                    # clocks round): it fired, so its time has come.
                    timer_fired = False
                    decided = carry_out(schedule.timer(max(now, timer_at)))
                    continue
                if not attempts and feeder is None:  # pragma: no cover - cannot stall
                    raise RuntimeError("Happy Eyeballs race stalled")
                wake = loop.create_future()
                handle = loop.call_at(timer_at, on_timer) if timer_at is not None else None
                try:
                    await wake
                finally:
                    wake = None
                    if handle is not None:
                        handle.cancel()
                continue
            # Successes first: a failure handled before them would start a needless attempt.
            done.sort(key=lambda f: f.cancelled() or f.exception() is not None)
            for fut in done:
                pair = attempts.pop(fut)
                if fut.cancelled():
                    # Only we cancel attempts, and not while the race runs: someone else did.
                    raise asyncio.CancelledError
                error = fut.exception()
                if error is None:
                    result = fut.result()
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
            if answered and feeder is not None:
                task, feeder = feeder, None
                try:
                    answer = task.result()
                except OSError as exc:  # gaierror included
                    resolution_error = exc
                    answer = _END
                if not decided:
                    decided = take_answer(answer, now)
                    if not decided and schedule.pending_families:
                        next_feeder()
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
            if leftovers:
                await _wait_cancelled(leftovers)
        finally:
            for fut in leftovers:
                if not fut.cancelled() and fut.exception() is None and fut is not feeder:
                    discard(fut.result())
            if winner is not None and not returned:
                discard(winner[1])
            aclose = getattr(answers, "aclose", None)
            if aclose is not None:
                await aclose()


# -- one attempt ----------------------------------------------------------------------------


_Deferred = tuple["AttemptRecorder", Any, int, tuple[bool, float | None, int | None]]
_deferred = threading.local()


def _defer_record(loop: asyncio.AbstractEventLoop, item: _Deferred) -> None:
    """Record a success after the waiter's wake-up: bookkeeping once the caller has its
    socket. Flushed at the latest when the next connection in this thread ranks its pairs."""
    queue: list[_Deferred] | None = getattr(_deferred, "queue", None)
    if queue is None:
        queue = _deferred.queue = []
    if not queue:
        loop.call_soon(_flush_records)
    queue.append(item)


def _flush_records() -> None:
    queue: list[_Deferred] | None = getattr(_deferred, "queue", None)
    while queue:
        recorder, pair, port, outcome = queue.pop(0)
        _record(recorder, pair, port, outcome)


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


class _Connecting(asyncio.Future[socket.socket]):
    """One TCP connection attempt as a future, driven by a writability callback.

    It costs no task: the attempt wakes the race itself the moment ``connect()`` is answered.
    Cancelling it unregisters the callback and closes the socket at once (not a loop turn
    later), so a race that ends and a loop that stops right after leave nothing open.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        pair: ConnectPair,
        *,
        port: int,
        bind_to: tuple[Any, ...] | None,
        recorder: AttemptRecorder | None,
        delay_override: float | None,
        notify: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(loop=loop)
        self._loop_ref = loop
        self._pair = pair
        self._port = port
        self._recorder = recorder
        self._delay_override = delay_override
        self._notify = notify
        self._fd = -1
        self._started = loop.time()
        self._sock: socket.socket | None = socket.socket(
            pair.family, socket.SOCK_STREAM, socket.IPPROTO_TCP
        )
        sock = self._sock
        try:
            sock.setblocking(False)
            if bind_to is not None:
                if bind_to[1] == 0:
                    # Let connect() pick the port with the full 4-tuple in mind, so many
                    # concurrent attempts from one source do not exhaust its ephemeral ports.
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.IPPROTO_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
                sock.bind(bind_to)
            self._started = loop.time()
            sock.connect(pair.destination)
        except (BlockingIOError, InterruptedError):
            try:
                loop.add_writer(sock.fileno(), self._on_writable)
            except BaseException:
                self._release()
                raise
            self._fd = sock.fileno()
        except OSError as exc:
            self._fail(exc)
        except BaseException:
            self._release()
            raise
        else:
            self._succeed()

    def _release(self) -> None:
        if self._fd != -1:
            self._loop_ref.remove_writer(self._fd)
            self._fd = -1
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _fail(self, exc: OSError) -> None:
        self._release()
        number = exc.errno
        # A refusal is an answer from the far end: the path itself works.
        rtt = self._loop_ref.time() - self._started if number == errno_codes.ECONNREFUSED else None
        _record(self._recorder, self._pair, self._port, (False, rtt, number))
        self.set_exception(exc)
        if self._notify is not None:
            self._notify()

    def _succeed(self) -> None:
        sock = self._sock
        assert sock is not None
        if self._fd != -1:
            self._loop_ref.remove_writer(self._fd)
            self._fd = -1
        self._sock = None
        rtt = self._loop_ref.time() - self._started
        self.set_result(sock)
        if self._notify is not None:
            self._notify()
        if self._recorder is not None:
            _defer_record(
                self._loop_ref, (self._recorder, self._pair, self._port, (True, rtt, None))
            )

    def _on_writable(self) -> None:
        if self.done() or self._sock is None:
            return
        err = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err == 0:
            self._succeed()
        elif err not in (errno_codes.EINPROGRESS, errno_codes.EALREADY):
            self._fail(OSError(err, f"Connect call failed {self._pair.destination}"))

    def cancel(self, msg: Any | None = None) -> bool:
        """Stop the attempt: unregister, close the socket, cancel the future."""
        if self.done():
            return False
        self._release()
        waited = self._loop_ref.time() - self._started
        if waited > attempt_delay(self._pair, self._delay_override):
            _record(self._recorder, self._pair, self._port, (False, None, errno_codes.ETIMEDOUT))
        return super().cancel(msg)


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
            if family in families or family == socket.AF_UNSPEC:
                yield family, [p for p in pairs if p.family in families]
    finally:
        aclose = getattr(answers, "aclose", None)
        if aclose is not None:
            await aclose()


# -- argument checking (before any I/O) -------------------------------------------------------


@dataclass(slots=True)
class _Options:
    host: str
    spec: HostSpec
    port: int
    family: int
    local_addr: tuple[str, int] | None
    happy_eyeballs_delay: float | None
    interleave: int
    timeout: float | None
    recorder: AttemptRecorder | None
    pair_source: PairSource | None
    context: PairContext


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
    spec = parse_host(host)
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
    if service is None and context is None:
        service = _running_default_service()
    ctx = _context_of(context, service)
    recorder: AttemptRecorder
    if service is None:
        recorder = ContextRecorder(ctx)
    else:
        recorder = _ServiceRecorder(cast(AttemptRecorder, service), ctx)
    return _Options(
        host=spec.text,
        spec=spec,
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

    families: tuple[int, ...]
    answers: AsyncIterator[tuple[int, Sequence[ConnectPair]]] | None
    connect: Callable[[ConnectPair, Callable[[], None] | None], asyncio.Future[socket.socket]]
    first: tuple[int, Sequence[ConnectPair]] | None = None


async def _prepare(opts: _Options) -> _Race:
    _flush_records()  # what the last connections taught comes before this ranking
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
    # Ask only for what can be used (local_addr may rule a family out).
    family = families[0] if len(families) == 1 else opts.family
    answers: AsyncIterator[tuple[int, Sequence[ConnectPair]]] | None = None
    first: tuple[int, Sequence[ConnectPair]] | None = None
    if opts.pair_source is None and (
        opts.spec.ip is not None or opts.context.get_resolver().cached(opts.spec, family)
    ):
        # Every answer is at hand (a literal or a warm cache): rank once, no generator.
        now = opts.context.clock()
        ranked = _memo.get(opts.context, opts.host, opts.port, family, now)
        if ranked is None:
            ranked = list(
                await pairs.get_addr_pairs(
                    opts.host, opts.port, family=family, context=opts.context
                )
            )
            _memo.put(opts.context, (opts.host, opts.port, family), ranked, now)
        first = (socket.AF_UNSPEC, [p for p in ranked if p.family in families])
    else:
        source = opts.pair_source or ranked_source(opts.context)
        answers = _filtered(source(opts.host, opts.port, family), families)

    loop = asyncio.get_running_loop()

    def connect(
        pair: ConnectPair, notify: Callable[[], None] | None
    ) -> asyncio.Future[socket.socket]:
        return _Connecting(
            loop,
            pair,
            port=opts.port,
            bind_to=binds.get(pair.family) if binds else pair.source,
            recorder=opts.recorder,
            delay_override=opts.happy_eyeballs_delay,
            notify=notify,
        )

    return _Race(families, answers, connect, first)


def _schedule_for(opts: _Options, families: tuple[int, ...]) -> Schedule[ConnectPair]:
    return Schedule(
        families,
        happy_eyeballs_delay=opts.happy_eyeballs_delay,
        interleave=opts.interleave,
    )


def _raise_all_errors(exc: AllAttemptsFailedError, all_errors: bool) -> None:
    if all_errors and exc.attempts:
        raise exc.group from None


async def _race_sockets(opts: _Options, *, all_errors: bool) -> socket.socket:
    """Resolve and race; return the winning connected socket."""
    prepared = await _prepare(opts)
    if prepared.first is not None and len(prepared.first[1]) == 1:
        # One pair and every answer in (a literal host, typically): nothing to race.
        pair = prepared.first[1][0]
        try:
            return await prepared.connect(pair, None)
        except OSError as exc:
            error = AllAttemptsFailedError.from_attempts(opts.host, opts.port, [(pair, exc)])
            _raise_all_errors(error, all_errors)
            raise error from None
    try:
        _, sock = await _race_core(
            _schedule_for(opts, prepared.families),
            prepared.answers,
            prepared.connect,
            _close_socket,
            host=opts.host,
            port=opts.port,
            first=prepared.first,
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

    loop = asyncio.get_running_loop()

    async def connect_and_finish(pair: ConnectPair) -> ResultT:
        return await finish(await prepared.connect(pair, None))

    def start(pair: ConnectPair, notify: Callable[[], None]) -> asyncio.Future[ResultT]:
        task = loop.create_task(connect_and_finish(pair))
        task.add_done_callback(lambda _: notify())
        return task

    try:
        _, result = await _race_core(
            _schedule_for(opts, prepared.families),
            prepared.answers,
            start,
            discard,
            host=opts.host,
            port=opts.port,
            first=prepared.first,
        )
    except AllAttemptsFailedError as exc:
        _raise_all_errors(exc, all_errors)
        raise
    return result


def _close_socket(sock: socket.socket) -> None:
    sock.close()


_ip_cache: dict[str, IPAddress | None] = {}
_MISSING: Any = object()


def _ip_of(address: tuple[Any, ...] | None) -> IPAddress | None:
    if not address:
        return None
    text = str(address[0])
    ip = _ip_cache.get(text, _MISSING)
    if ip is _MISSING:
        try:
            ip = ipaddress.ip_address(text.split("%", 1)[0])
        except ValueError:
            ip = None
        if len(_ip_cache) > 4096:
            _ip_cache.clear()
        _ip_cache[text] = ip
    return cast(IPAddress | None, ip)


class _RankMemo:
    """Ranked pairs reused for a moment, per context, host, port and family.

    Ranking costs tens of microseconds, as much as a loopback connect itself; a client that
    connects to the same place in a loop should not pay it every time. An entry lives for
    ``TTL`` seconds and dies at once when a failure is recorded through this module (a path
    just broke: re-rank now). Measurements arriving from elsewhere (the probe service) are
    seen within ``TTL``; the interface snapshot itself is cached longer than that.
    """

    TTL = 1.0
    MAX = 1024

    def __init__(self) -> None:
        # Contexts are mutable dataclasses (unhashable): key by id, check identity by weakref.
        self._entries: dict[
            tuple[int, str, int, int],
            tuple[weakref.ref[PairContext], float, int, list[ConnectPair]],
        ] = {}
        self._epochs: dict[int, tuple[weakref.ref[PairContext], int]] = {}

    def _epoch(self, context: PairContext) -> int:
        hit = self._epochs.get(id(context))
        return hit[1] if hit is not None and hit[0]() is context else 0

    def get(
        self, context: PairContext, host: str, port: int, family: int, now: float
    ) -> list[ConnectPair] | None:
        """The ranking stored for this place, if still good."""
        hit = self._entries.get((id(context), host, port, family))
        if hit is None:
            return None
        ref, expires, epoch, ranked = hit
        if ref() is not context or now >= expires or epoch != self._epoch(context):
            return None
        return ranked

    def put(
        self, context: PairContext, key: tuple[str, int, int], ranked: list[ConnectPair], now: float
    ) -> None:
        """Store a fresh ranking."""
        if len(self._entries) >= self.MAX:
            self._entries.clear()
        entry = (weakref.ref(context), now + self.TTL, self._epoch(context), ranked)
        self._entries[(id(context), *key)] = entry

    def failure(self, context: PairContext) -> None:
        """A failure was recorded in ``context``: its stored rankings are stale."""
        if len(self._epochs) >= self.MAX:
            self._epochs = {k: v for k, v in self._epochs.items() if v[0]() is not None}
        self._epochs[id(context)] = (weakref.ref(context), self._epoch(context) + 1)


_memo = _RankMemo()


class ContextRecorder:
    """An :class:`AttemptRecorder` feeding a ``PairContext``'s tables (the default when no
    ``service`` is given): failed pairs rank last for a while, a success clears that, and
    every measured RTT (a refusal's too) shapes the next ranking and attempt delay."""

    def __init__(self, context: PairContext) -> None:
        self._context = context

    def record_attempt(
        self, pair: Any, port: int, ok: bool, rtt: float | None, errno: int | None
    ) -> None:
        """Record one attempt's outcome in the context's latency and failure tables."""
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
            _memo.failure(ctx)


def _running_default_service() -> object | None:
    """The package's default probe service for this loop: started now, in the background,
    when its configuration allows (``autostart``); ``None`` otherwise."""
    return implicit_service()


class _ServiceRecorder:
    """Forwards outcomes to a service; a failure also retires the memoised rankings."""

    def __init__(self, service: AttemptRecorder, context: PairContext) -> None:
        self._service = service
        self._context = context

    def record_attempt(
        self, pair: Any, port: int, ok: bool, rtt: float | None, errno: int | None
    ) -> None:
        self._service.record_attempt(pair, port, ok, rtt, errno)
        if not ok:
            _memo.failure(self._context)


def _context_of(context: object, service: object) -> PairContext:
    if context is None:
        context = getattr(service, "context", None)
    if context is None:
        return default_context()
    if not isinstance(context, PairContext):
        raise TypeError(f"context must be a PairContext, not {type(context).__name__}")
    return context


def ranked_source(context: PairContext) -> PairSource:
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
            yield (
                socket.AF_UNSPEC,
                await pairs.get_addr_pairs(host, port, family=family, context=context),
            )
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
    bounds the whole operation (``TimeoutError``); ``local_addr`` binds every attempt to that
    address instead of the pair's source. ``service`` receives every attempt's outcome
    (:class:`AttemptRecorder`; default: the running default probe service, else the
    context's tables are fed directly); ``context`` is the ``PairContext`` whose tables
    rank the pairs (default: the service's, else the package's); ``pair_source`` replaces
    the ranked pairs altogether (:data:`PairSource`).

    Raises ``socket.gaierror`` when the name does not resolve and
    :class:`~apr_async.connect_errors.AllAttemptsFailedError` (an ``OSError``) when every
    attempt failed (its ``ExceptionGroup`` instead when ``all_errors`` is true). Bad
    arguments raise ``TypeError``/``ValueError`` before any I/O.
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
