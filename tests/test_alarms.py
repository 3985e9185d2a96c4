"""The lead path's shared alarm clock: deadlines on one loop timer (virtual time: schedule
logic only, no sockets)."""

from __future__ import annotations

import asyncio
import gc

import pytest

from apr_async.connect.alarms import AlarmClock, alarm_clock


def live_timers(loop: asyncio.AbstractEventLoop) -> int:
    return sum(1 for handle in loop._scheduled if not handle.cancelled())  # type: ignore[attr-defined]


@pytest.mark.looptime
async def test_waiters_wake_at_their_deadlines_in_any_order() -> None:
    loop = asyncio.get_running_loop()
    clock = AlarmClock(loop)
    start = loop.time()
    woke: dict[str, float] = {}

    async def wait(name: str, delay: float) -> None:
        waiter: asyncio.Future[None] = loop.create_future()
        clock.wake(loop, delay, waiter)
        try:
            await waiter
            woke[name] = round(loop.time() - start, 6)
        finally:
            clock.release()

    # Later deadlines first, then an earlier one: the timer moves to the earliest.
    await asyncio.gather(wait("c", 0.3), wait("b", 0.2), wait("a", 0.1), wait("a2", 0.1))
    assert woke == {"a": 0.1, "a2": 0.1, "b": 0.2, "c": 0.3}
    assert clock.waiting == 0 and not clock.armed
    assert live_timers(loop) == 0


@pytest.mark.looptime
async def test_a_wait_that_ended_early_is_not_woken_and_the_last_release_disarms() -> None:
    loop = asyncio.get_running_loop()
    clock = AlarmClock(loop)
    early: asyncio.Future[None] = loop.create_future()
    late: asyncio.Future[None] = loop.create_future()
    clock.wake(loop, 0.1, early)
    clock.wake(loop, 0.5, late)
    early.set_result(None)  # its attempt finished first (notify)
    clock.release()
    assert clock.armed  # the other one still waits
    await asyncio.sleep(0.2)  # the early deadline passes: no error for a done waiter
    assert not late.done() and clock.armed
    late.cancel()  # its caller was cancelled
    clock.release()
    assert not clock.armed and live_timers(loop) == 0  # nothing left behind


@pytest.mark.looptime
async def test_every_wait_released_before_its_deadline_leaves_no_timer() -> None:
    loop = asyncio.get_running_loop()
    clock = AlarmClock(loop)
    waiters = [loop.create_future() for _ in range(3)]
    for delay, waiter in zip((0.3, 0.1, 0.2), waiters, strict=True):
        clock.wake(loop, delay, waiter)
    assert live_timers(loop) == 1  # one loop timer for all three
    for waiter in waiters:
        waiter.set_result(None)
        clock.release()
    assert live_timers(loop) == 0
    await asyncio.sleep(0.5)
    assert clock.waiting == 0


async def test_one_clock_per_loop_and_a_closed_loop_is_not_kept() -> None:
    loop = asyncio.get_running_loop()
    assert alarm_clock(loop) is alarm_clock(loop)
    other = asyncio.new_event_loop()
    try:
        theirs = alarm_clock(other)
        assert theirs is not alarm_clock(loop)
        assert alarm_clock(other) is theirs
    finally:
        other.close()
    del other
    alarm_clock(loop)  # the registry's shortcut now points at this loop's clock again
    gc.collect()
    assert theirs._loop() is None  # the registry held the other loop weakly
