"""The probe service's progress signals: ``ready`` after the first round (or the first shared
table), and a tick on every change, on which waiters re-check their condition."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["Progress"]


class Progress:
    """``ready`` is set once; :meth:`notify` wakes every :meth:`until` waiter once."""

    def __init__(self) -> None:
        self.ready = asyncio.Event()
        self._tick = asyncio.Event()

    def notify(self) -> None:
        # wake every waiter once; they re-check their condition and wait on the next event
        tick, self._tick = self._tick, asyncio.Event()
        tick.set()

    async def until(self, done: Callable[[], bool], closed: Callable[[], bool]) -> None:
        """Return once ``done()``; ``RuntimeError`` when ``closed()`` first."""
        while not done():
            if closed():
                raise RuntimeError("ProbeService closed")
            await self._tick.wait()

    async def wait_ready(self, timeout: float | None, closed: Callable[[], bool]) -> bool:  # noqa: ASYNC109
        """Wait for ``ready``; False on timeout or when ``closed()``."""
        if self.ready.is_set():
            return True
        if closed():
            return False
        try:
            async with asyncio.timeout(timeout):
                await self.until(self.ready.is_set, closed)
        except (TimeoutError, RuntimeError):
            return False
        return self.ready.is_set()
