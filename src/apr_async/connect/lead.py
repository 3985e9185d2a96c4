"""Several ranked pairs, the first one healthy: its attempt alone, the race only if needed.

A host with two sources of one family (a public and a private IPv4 address, a GUA and a ULA)
ranks two pairs for every destination, so the one-pair fast path never applied there and
every connection paid for the schedule, the race and its log, although the first attempt
answers long before anything else would start. What RFC 8305 asks for in that time is
nothing but the first attempt: the next one starts only when it failed or its Connection
Attempt Delay passed. So the lead pair is connected with the race's own :class:`Connecting`
attempt and a timer (on the loop's shared :mod:`~apr_async.connect.alarms` clock); only when
the timer fires or the attempt fails do the remaining pairs race
(:func:`apr_async.connect.general.race_pairs`), in the order the full schedule would have
tried them, with the lead attempt, if still in flight, racing on beside them. The
outcome, the error (every attempt's failure, in order), the metrics and the report of
untried families to a probe service are those of the general path. One difference, in that
rare case only: when the lead, still in flight, fails after the others started, their race
does not hear of it, so their next attempt waits for its own delay where the full schedule
would have started it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import socket
from collections.abc import Sequence

from apr_async.connect import general
from apr_async.connect.alarms import alarm_clock
from apr_async.connect.attempt import Connecting, dispose
from apr_async.connect.errors import AllAttemptsFailedError, AttemptLog
from apr_async.connect.options import Options
from apr_async.connect.race import best_of_other_families
from apr_async.connect.recorders import report_untried
from apr_async.connect.stats import race_finished, single_finished
from apr_async.connect.types import ConnectPair
from apr_async.core.reach import pointless_after_refusal
from apr_async.core.schedule import attempt_delay

__all__ = ["connect_lead"]


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


async def connect_lead(
    opts: Options, ranked: Sequence[ConnectPair], loop: asyncio.AbstractEventLoop
) -> tuple[socket.socket, ConnectPair | None]:
    """Connect ``ranked[0]``; race the others only after its failure or attempt delay.

    Returns the socket and, when the lead won alone, the lead: the caller counts that win
    (:func:`~apr_async.connect.stats.single_finished`) once its transport exists, as the
    general path counts a race after its transport (see :func:`apr_async.connect.fast.
    open_single` for why). ``None`` when a race decided, already counted. ``loop`` is the
    running loop."""
    lead = ranked[0]
    waiter: asyncio.Future[None] = loop.create_future()
    attempt = Connecting(loop, lead, port=opts.port, bind_to=lead.source,
                         recorder=opts.recorder, delay_override=None,
                         notify=functools.partial(_wake, waiter))
    # The attempt delay on the loop's shared alarm clock, not a timer of its own: see
    # apr_async.connect.alarms for why (this runs on every such connection).
    clock = alarm_clock(loop)
    clock.wake(loop, attempt_delay(lead), waiter)
    try:
        await waiter
    except BaseException as exc:
        _abandon(attempt)
        single_finished(lead, exc)
        raise
    finally:
        clock.release()
    failure = attempt.exception() if attempt.done() else None
    if attempt.done() and failure is None:
        # The common case, a one-attempt race (no attempt log needed; counted by the caller).
        # As after a won race: the best pairs of the other families, never measured (the
        # recorder check inline: this runs on every such connection).
        if callable(getattr(opts.recorder, "record_untried", None)):
            report_untried(opts.recorder, best_of_other_families(ranked, lead), opts.port)
        return attempt.result(), lead
    log = AttemptLog()  # the others race: from here on, as the general path logs a race
    log.started(lead)
    if failure is None:
        return await _with_lead_in_flight(opts, log, ranked, attempt), None
    assert isinstance(failure, OSError)  # Connecting fails with OSError only
    log.failed(lead, failure)
    rest = _after(ranked, lead)
    if failure.errno == errno.ECONNREFUSED:  # as the race drops them (see race.py)
        rest = [p for p in rest if not pointless_after_refusal(lead, p)]
    if not rest:
        race_finished(log, failure)
        raise AllAttemptsFailedError.from_attempts(opts.host, opts.port, [(lead, failure)])
    try:
        sock = await general.race_pairs(opts, log, rest)
    except AllAttemptsFailedError as error:
        race_finished(log, error)
        raise AllAttemptsFailedError.from_attempts(
            opts.host, opts.port, [(lead, failure), *error.attempts]) from None
    except BaseException as error:
        race_finished(log, error)
        raise
    race_finished(log, None)
    return sock, None


async def _with_lead_in_flight(
    opts: Options, log: AttemptLog, ranked: Sequence[ConnectPair], attempt: Connecting
) -> socket.socket:
    """The lead's attempt delay passed: the others race, the lead attempt goes on; the first
    connected socket wins and everything else is closed."""
    lead = ranked[0]
    rest = asyncio.ensure_future(general.race_pairs(opts, log, _after(ranked, lead)))
    lead_error: OSError | None = None
    try:
        while True:
            pending = {f for f in (attempt, rest) if not f.done()}
            if pending:
                await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if attempt.done() and lead_error is None and attempt.exception() is None:
                await _cancel(rest)
                for pair in log.unfinished:
                    if pair is not lead:
                        log.dropped(pair)
                race_finished(log, None)
                return attempt.result()
            if attempt.done() and lead_error is None:
                error = attempt.exception()
                assert isinstance(error, OSError)
                lead_error = error
                log.failed(lead, error)
            if rest.done():
                rest_error = rest.exception()
                if rest_error is None:
                    _abandon(attempt)
                    log.dropped(lead)
                    race_finished(log, None)
                    return rest.result()
                if not isinstance(rest_error, AllAttemptsFailedError):
                    raise rest_error
                if lead_error is not None:
                    failed = [(lead, lead_error), *rest_error.attempts]
                    raise AllAttemptsFailedError.from_attempts(opts.host, opts.port, failed)
    except BaseException as exc:
        _abandon(attempt)
        await _cancel(rest)
        race_finished(log, exc)
        raise


def _after(ranked: Sequence[ConnectPair], lead: ConnectPair) -> list[ConnectPair]:
    """The other pairs in the order the schedule tries them once the lead has started: with
    one attempt per family first (RFC 8305's First Address Family Count of 1), the best
    usable pair of another family comes next, then rank order (a fresh schedule over this
    list picks exactly the pairs the full schedule would have picked after the lead)."""
    rest = list(ranked[1:])
    for index, pair in enumerate(rest):
        if pair.family != lead.family and not pair.failing:
            return [pair, *rest[:index], *rest[index + 1:]]
    return rest


def _abandon(attempt: Connecting) -> None:
    """The attempt lost or its caller left: cancel it, or close the socket nobody takes."""
    dispose(attempt, socket.socket.close)


async def _cancel(task: asyncio.Future[socket.socket]) -> None:
    """Cancel the race of the others and wait for it (it closes its own attempts); a socket
    it won in the same loop turn is closed."""
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, OSError):
            await task
    if task.done() and not task.cancelled() and task.exception() is None:
        task.result().close()
