"""The Happy Eyeballs race: runs a :class:`~apr_async.core.schedule.Schedule` against real
attempts, answers as they arrive and the schedule's timer, and cleans up every loser.

Ownership rules that keep this leak-free: the race owns every result (a connected socket, a
TLS transport) until it hands the winner over, and disposes of every other one, including a
late second winner; every attempt and the answer feeder are cancelled *and awaited* before the
race returns or raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Sequence
from typing import Any, Generic, TypeVar, cast

from apr_async.connect.errors import AllAttemptsFailedError, AttemptLog
from apr_async.connect.types import UNTRIED_PER_FAMILY
from apr_async.core.reach import pointless_after_refusal
from apr_async.core.schedule import GiveUp, SchedulablePair, Schedule, StartAttempt, Succeeded

__all__ = ["best_of_other_families", "race", "race_attempts", "untried_alternatives",
           "wait_cancelled"]

SchedT = TypeVar("SchedT", bound=SchedulablePair)
ResultT = TypeVar("ResultT")


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


async def wait_cancelled(tasks: Iterable[asyncio.Future[Any]]) -> None:
    """Cancel ``tasks`` and wait until all are done, even if we are cancelled meanwhile.

    Leaving a task running would leak its socket; a cancellation arriving here is re-raised
    once everything is finished.
    """
    pending = [t for t in tasks if not t.done()]
    for task in pending:
        task.cancel()
    # Attempts that close synchronously on cancel() are done already: no loop turn needed.
    pending = [t for t in pending if not t.done()]
    interrupted = False
    while pending:
        try:
            await asyncio.wait(pending)
        except asyncio.CancelledError:
            interrupted = True
        pending = [t for t in pending if not t.done()]
    if interrupted:
        raise asyncio.CancelledError


def untried_alternatives(
    schedule: Schedule[SchedT], per_family: int = UNTRIED_PER_FAMILY
) -> list[SchedT]:
    """After a won race, the best pairs it did not measure of each family other than the
    winner's, at most ``per_family`` each (best first); empty when nobody won.

    A pair still in flight when the race was won counts as unmeasured (it was cancelled, and
    reported only if it had waited past its attempt delay); it comes before the untried ones
    of its family, since attempts go in rank order. Without this, a family that always loses
    within the attempt delay is never attempted, so never measured, so never known to be
    faster.
    """
    winner = schedule.winner
    if winner is None:
        return []
    return best_of_other_families((*schedule.in_flight, *schedule.untried), winner, per_family)


def best_of_other_families(
    pairs: Iterable[SchedT], winner: SchedT, per_family: int = UNTRIED_PER_FAMILY
) -> list[SchedT]:
    """The first ``per_family`` of ``pairs`` (in their order) of each family but the
    winner's: what a won race reports as never measured."""
    taken: dict[int, int] = {}
    out: list[SchedT] = []
    for pair in pairs if per_family > 0 else ():
        family = pair.family
        if family == winner.family or pair == winner:
            continue
        count = taken.get(family, 0)
        if count < per_family:
            taken[family] = count + 1
            out.append(pair)
    return out


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

    return await race_attempts(schedule, answers, start, discard, host=host, port=port)


async def race_attempts(
    schedule: Schedule[SchedT],
    answers: AsyncIterator[tuple[int, Sequence[SchedT]]] | None,
    start: Callable[[SchedT, Callable[[], None]], asyncio.Future[ResultT]],
    discard: Callable[[ResultT], object],
    *,
    host: str,
    port: int,
    first: tuple[int, Sequence[SchedT]] | None = None,
    log: AttemptLog | None = None,
) -> tuple[SchedT, ResultT]:
    """:func:`race` over attempts that wake the race themselves (one loop turn per event).

    ``start(pair, notify)`` starts an attempt and returns its future; the attempt calls
    ``notify()`` when it ends. ``first`` is an answer already at hand (then ``answers`` may be
    ``None``). ``log`` receives each attempt's start and failure as they happen, for whoever
    must explain a race cut short from outside (a timeout).
    """
    race = _Race(schedule, answers, start, discard, host=host, port=port, log=log)
    return await race.run(first)


class _Race(Generic[SchedT, ResultT]):
    """One run of :func:`race_attempts`: the attempts in flight, the answer feeder, the
    timer, and what happened so far."""

    def __init__(
        self,
        schedule: Schedule[SchedT],
        answers: AsyncIterator[tuple[int, Sequence[SchedT]]] | None,
        start: Callable[[SchedT, Callable[[], None]], asyncio.Future[ResultT]],
        discard: Callable[[ResultT], object],
        *,
        host: str,
        port: int,
        log: AttemptLog | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._schedule = schedule
        self._answers = answers
        self._start = start
        self._discard = discard
        self._host = host
        self._port = port
        self._attempts: dict[asyncio.Future[ResultT], SchedT] = {}
        self._feeder: asyncio.Task[tuple[int, Sequence[SchedT]] | _Sentinel] | None = None
        self._log = log if log is not None else AttemptLog()
        self._failures: list[tuple[SchedT, OSError]] = []
        self._rejected: ssl.SSLCertVerificationError | None = None
        self._resolution_error: OSError | None = None
        self._winner: tuple[SchedT, ResultT] | None = None
        self._wake: asyncio.Future[None] | None = None
        self._timer_fired = False

    async def run(self, first: tuple[int, Sequence[SchedT]] | None) -> tuple[SchedT, ResultT]:
        try:
            decided = await self._open(first)
            if not decided and self._lone_attempt() is not None:
                decided = await self._await_lone_attempt()
            while not decided:
                decided = await self._step()
            winner = self._verdict()
        except BaseException:
            await self._clean_up(keep_winner=False)
            raise
        await self._clean_up(keep_winner=True)
        return winner

    # -- events ----------------------------------------------------------------------------

    def _notify(self, *_: object) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    def _on_timer(self) -> None:
        self._timer_fired = True
        self._notify()

    def _carry_out(self, actions: Iterable[object]) -> bool:
        """Apply the schedule's actions; True once the race is decided."""
        for action in actions:
            if isinstance(action, StartAttempt):
                pair = cast(SchedT, action.pair)
                self._log.started(pair)
                self._attempts[self._start(pair, self._notify)] = pair
            elif isinstance(action, Succeeded | GiveUp):
                return True
            # SetTimer: the timer is read back through schedule.timer_at
        return False

    def _take_answer(self, answer: tuple[int, Sequence[SchedT]] | _Sentinel, now: float) -> bool:
        """Feed one answer (or the end of answers) to the schedule; True once decided."""
        schedule = self._schedule
        if isinstance(answer, _Sentinel):
            return self._carry_out(schedule.answers_all((), now))
        family, pairs = answer
        if family == socket.AF_UNSPEC:  # every family's answer at once (literal, warm cache)
            return self._carry_out(schedule.answers_all(pairs, now))
        return self._carry_out(schedule.answers(family, pairs, now))

    def _next_feeder(self) -> bool:
        """Start waiting for the next answer; True if that decided the race (no answers)."""
        if self._answers is None:
            self._feeder = None
            return self._take_answer(_END, self._loop.time())
        self._feeder = self._loop.create_task(_next_answer(self._answers))
        self._feeder.add_done_callback(self._notify)
        return False

    def _attempt_ended(self, fut: asyncio.Future[ResultT], now: float) -> bool:
        pair = self._attempts.pop(fut)
        if fut.cancelled():
            # Only we cancel attempts, and not while the race runs: someone else did.
            raise asyncio.CancelledError
        error = fut.exception()
        if error is None:
            result = fut.result()
            if self._winner is not None:
                self._log.dropped(pair)
                self._discard(result)
                return False
            self._winner = (pair, result)
            return self._carry_out(self._schedule.attempt_succeeded(pair, now))
        if not isinstance(error, OSError):
            raise error
        if self._schedule.done:
            self._log.dropped(pair)
            return False
        self._failures.append((pair, error))
        self._log.failed(pair, error)
        if isinstance(error, ssl.SSLCertVerificationError):
            # The server's certificate does not fit the name: a property of the name, not of
            # the path, so no other pair can do better. Waiting for them (a blackholed one
            # until the timeout) would only hide this answer.
            self._rejected = error
            return True
        if error.errno == errno.ECONNREFUSED:
            self._schedule.drop_untried(functools.partial(pointless_after_refusal, pair))
        return self._carry_out(self._schedule.attempt_failed(pair, now))

    # -- phases ----------------------------------------------------------------------------

    async def _open(self, first: tuple[int, Sequence[SchedT]] | None) -> bool:
        """Take the first answer; True if that decided the race."""
        opening: tuple[int, Sequence[SchedT]] | _Sentinel = _END
        if first is not None:
            opening = first
        elif self._answers is not None:
            # Nothing can happen before the first answer: wait for it without a task.
            try:
                opening = await _next_answer(self._answers)
            except OSError as exc:  # gaierror included
                self._resolution_error = exc
        decided = self._take_answer(opening, self._loop.time())
        if not decided and self._schedule.pending_families:
            decided = self._next_feeder()
        return decided

    def _lone_attempt(self) -> asyncio.Future[ResultT] | None:
        """The only attempt when nothing else can happen (one pair, all answers in)."""
        if self._feeder is not None or len(self._attempts) != 1:
            return None
        if self._schedule.timer_at is not None:
            return None
        return next(iter(self._attempts))

    async def _await_lone_attempt(self) -> bool:
        """The common case has nothing to race: wait for the attempt without a wake-up
        future or a timer."""
        lone = self._lone_attempt()
        assert lone is not None
        with contextlib.suppress(OSError):
            await lone
        return self._attempt_ended(lone, self._loop.time())

    async def _step(self) -> bool:
        """Handle what happened (attempts ended, an answer, the timer), or wait for it."""
        done = [f for f in self._attempts if f.done()]
        feeder = self._feeder
        answered = feeder is not None and feeder.done()
        now = self._loop.time()
        if not done and not answered:
            timer_at = self._schedule.timer_at
            if timer_at is not None and (self._timer_fired or now >= timer_at):
                # The loop may fire a timer up to its clock resolution early (and virtual
                # clocks round): it fired, so its time has come.
                self._timer_fired = False
                return self._carry_out(self._schedule.timer(max(now, timer_at)))
            await self._wait(timer_at)
            return False
        decided = False
        # Successes first: a failure handled before them would start a needless attempt.
        done.sort(key=lambda f: f.cancelled() or f.exception() is not None)
        for fut in done:
            decided = self._attempt_ended(fut, now) or decided
        if answered and feeder is not None:
            self._feeder = None
            answer: tuple[int, Sequence[SchedT]] | _Sentinel
            try:
                answer = feeder.result()
            except OSError as exc:  # gaierror included
                self._resolution_error = exc
                answer = _END
            if not decided:
                decided = self._take_answer(answer, now)
                if not decided and self._schedule.pending_families:
                    decided = self._next_feeder()
        return decided

    async def _wait(self, timer_at: float | None) -> None:
        if not self._attempts and self._feeder is None:  # pragma: no cover - cannot stall
            raise RuntimeError("Happy Eyeballs race stalled")
        self._wake = self._loop.create_future()
        handle = self._loop.call_at(timer_at, self._on_timer) if timer_at is not None else None
        try:
            await self._wake
        finally:
            self._wake = None
            if handle is not None:
                handle.cancel()

    def _verdict(self) -> tuple[SchedT, ResultT]:
        if self._winner is None:
            if self._rejected is not None:
                raise AllAttemptsFailedError.from_attempts(
                    self._host,
                    self._port,
                    self._failures,
                    cause=self._rejected,
                    summary="the server's certificate was rejected, which no other pair can change",
                )
            if not self._failures and self._resolution_error is not None:
                raise self._resolution_error
            raise AllAttemptsFailedError.from_attempts(self._host, self._port, self._failures)
        return self._winner

    async def _clean_up(self, *, keep_winner: bool) -> None:
        """Cancel and await what is still running, dispose of every result but the winner's,
        and of the winner's too unless it is kept and the clean-up was not interrupted (a
        cancellation arriving here propagates: the winner would then belong to no one)."""
        leftovers: list[asyncio.Future[Any]] = list(self._attempts)
        feeder = self._feeder
        if feeder is not None:
            leftovers.append(feeder)
        if self._winner is not None or self._rejected is not None:
            # Cancelled because the race is decided: these attempts have nothing to tell. When
            # it is cut short from outside (a timeout), they stay in the log as abandoned.
            for pair in self._attempts.values():
                self._log.dropped(pair)
        kept = False
        try:
            try:
                if leftovers:
                    await wait_cancelled(leftovers)
            finally:
                for fut in leftovers:
                    if not fut.cancelled() and fut.exception() is None and fut is not feeder:
                        self._discard(fut.result())
                aclose = getattr(self._answers, "aclose", None)
                if aclose is not None:
                    await aclose()
            kept = keep_winner
        finally:
            if self._winner is not None and not kept:
                self._discard(self._winner[1])
