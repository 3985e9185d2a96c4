"""One loop timer for many attempt delays: the lead path's wake-ups without a timer each.

Every connection on the lead path (:mod:`apr_async.connect.lead`) waits until its attempt
ends or its Connection Attempt Delay passes. With ``loop.call_later`` per connection that is a
Python ``TimerHandle``, pushed into the loop's heap and later popped from it with Python-level
comparisons (``TimerHandle.__lt__``, an ``isinstance`` each), and cancelled: about twenty
Python calls per connection, measured, on the path that must cost no more than plain asyncio.

Here a deadline is a plain tuple in a heap of our own (compared in C), behind one loop timer
set for the earliest. A wait that ended early is not taken out (its waiter is done, so waking
it is a no-op) but stops counting; once nothing waits, the heap is emptied and the timer
cancelled, so no timer outlives the waits it serves, after a failure or a cancellation too.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import weakref

__all__ = ["AlarmClock", "alarm_clock"]


class AlarmClock:
    """Wakes waiters (futures) at their deadlines, on one timer of one event loop.

    For each :meth:`wake` the caller calls :meth:`release` exactly once, when its wait is over
    (woken, or ended another way). Use :func:`alarm_clock` for the running loop's instance.
    """

    __slots__ = ("__weakref__", "_count", "_heap", "_loop", "_timer", "_timer_at", "_waiting")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # A weak reference: the per-loop registry must not keep a closed loop alive.
        self._loop = weakref.ref(loop)
        self._heap: list[tuple[float, int, asyncio.Future[None]]] = []
        self._count = itertools.count()  # ties keep insertion order, futures never compare
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._waiting = 0

    @property
    def waiting(self) -> int:
        """Waits not released yet."""
        return self._waiting

    @property
    def armed(self) -> bool:
        """Whether a loop timer is scheduled."""
        return self._timer is not None

    def wake(self, loop: asyncio.AbstractEventLoop, delay: float,
             waiter: asyncio.Future[None]) -> None:
        """Set ``waiter``'s result to ``None`` in ``delay`` seconds unless it is done by then.
        ``loop`` is this clock's loop (passed in: the caller has it at hand)."""
        when = loop.time() + delay
        heapq.heappush(self._heap, (when, next(self._count), waiter))
        self._waiting += 1
        if when < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = loop.call_at(when, self._ring)
            self._timer_at = when

    def release(self) -> None:
        """One wait is over; the last one takes the timer and the pending deadlines along."""
        self._waiting -= 1
        if self._waiting <= 0:
            self._waiting = 0
            self._heap.clear()
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._timer_at = math.inf

    def _ring(self) -> None:
        # The loop runs a timer up to its clock resolution early: everything due by the
        # deadline this timer was set for is due now.
        due = self._timer_at
        self._timer = None
        self._timer_at = math.inf
        loop = self._loop()
        if loop is None:  # pragma: no cover - a timer runs on a live loop
            return
        limit = max(due, loop.time())
        heap = self._heap
        while heap and heap[0][0] <= limit:
            waiter = heapq.heappop(heap)[2]
            if not waiter.done():
                waiter.set_result(None)
        if heap:
            self._timer_at = heap[0][0]
            self._timer = loop.call_at(self._timer_at, self._ring)


_clocks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AlarmClock] = (
    weakref.WeakKeyDictionary())
_last: list[AlarmClock] = []  # the clock asked for last (at most one)


def alarm_clock(loop: asyncio.AbstractEventLoop) -> AlarmClock:
    """``loop``'s clock, created on first use (the last one asked is found without a lookup:
    one loop per thread is the common case)."""
    if _last and _last[0]._loop() is loop:
        return _last[0]
    clock = _clocks.get(loop)
    if clock is None:
        clock = _clocks[loop] = AlarmClock(loop)
    _last[:] = [clock]
    return clock
