"""A probe service's part in host sharing (:class:`HostShare`): solo, leader or follower, the
follower's poll-and-takeover loop, and the fall-back to probing alone when sharing fails.

The :class:`~apr_async.probe.sharing.Sharing` object does the sharing; this is the glue the
service talks to, so that it never has to ask whether it shares at all.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from apr_async.core.addresses import IPAddress
from apr_async.core.failures import FailureTable
from apr_async.core.latency import LatencyTable
from apr_async.core.status import ConnectivityStatus
from apr_async.probe import table_codec as codec
from apr_async.probe.shared import ShareUnavailable
from apr_async.probe.sharing import APPLY_SPACING, POLL, Sharing

#: A follower's applies of the shared table take at most 1/APPLY_SHARE of its loop's time.
APPLY_SHARE = 10.0

__all__ = ["HostShare"]

log = logging.getLogger("apr_async.probe")


class HostShare:
    """The service's :class:`Sharing`, or none (``solo``); ``on_refresh()`` is called when a
    follower applied a newer shared table."""

    def __init__(self, on_refresh: Callable[[], None]) -> None:
        self.sharing: Sharing | None = None
        self._on_refresh = on_refresh
        self._loop: asyncio.AbstractEventLoop | None = None
        self._apply: asyncio.TimerHandle | None = None
        self._next_apply = 0.0  # loop time before which check() does not apply again

    @property
    def role(self) -> Literal["solo", "leader", "follower"]:
        """``leader``/``follower`` of the host's shared service, or ``solo`` (not sharing)."""
        if self.sharing is None:
            return "solo"
        return "leader" if self.sharing.leader else "follower"

    @property
    def leader_status(self) -> ConnectivityStatus | None:
        """A follower's copy of the leader's status (``None``: leading, solo, or none yet)."""
        sharing = self.sharing
        return None if sharing is None or sharing.leader else sharing.status

    @property
    def following(self) -> bool:
        """True for a follower: it does not probe."""
        return self.sharing is not None and not self.sharing.leader

    def start(
        self,
        loop: asyncio.AbstractEventLoop,
        directory: Path,
        *,
        tables: tuple[LatencyTable, FailureTable],
        clock: Callable[[], float],
        fingerprint: str,
        on_outcome: Callable[[codec.Outcome], None],
        status_of: Callable[[], ConnectivityStatus],
    ) -> None:
        """Share through *directory*: lead if the lock is free, else follow (warm from the
        shared table at once)."""
        self._loop = loop
        try:
            sharing = Sharing(directory, tables[0], tables[1], clock)
            sharing.set_network(fingerprint)
            sharing.on_outcome = on_outcome
            sharing.status_of = status_of
            self.sharing = sharing
            if not sharing.try_lead(loop):
                self.sync()  # warm from the first ranking on
        except ShareUnavailable as exc:
            self.failed(exc)

    def failed(self, exc: OSError) -> None:
        """Stop sharing after *exc*; the service probes on its own."""
        log.warning("apr_async: not sharing probes with other processes (%s); probing "
                    "on our own", exc)
        self._cancel_apply()
        if self.sharing is not None:
            self.sharing.close(self._loop)
        self.sharing = None

    def close(self) -> None:
        """Release the lock, the mapping and the sockets (a leader publishes a last time)."""
        self._cancel_apply()
        if self.sharing is not None:
            self.sharing.close(self._loop)

    def _cancel_apply(self) -> None:
        if self._apply is not None:
            self._apply.cancel()
            self._apply = None

    def set_network(self, fingerprint: str) -> None:
        if self.sharing is not None:
            self.sharing.set_network(fingerprint)

    def changed(self) -> None:
        """The tables changed: a leader publishes them soon."""
        if self.sharing is not None and self._loop is not None:
            self.sharing.mark_dirty(self._loop)

    def publish(self) -> None:
        """A leader publishes its tables now (a finished round)."""
        if self.sharing is not None and self.sharing.leader:
            self.sharing.publish()

    def sync(self) -> bool:
        """A follower applies the shared table if the leader published since; True (and
        ``on_refresh()``) when the tables changed."""
        sharing = self.sharing
        if sharing is None or sharing.leader:
            return False
        started = time.perf_counter()
        changed = sharing.refresh()
        cost = time.perf_counter() - started
        sharing.apply_seconds += cost
        if self._loop is not None:
            # at most every APPLY_SPACING, and never more than a tenth of the loop's time
            self._next_apply = self._loop.time() + max(APPLY_SPACING, APPLY_SHARE * cost)
        if not changed:
            return False
        self._on_refresh()
        return True

    def check(self) -> None:
        """The hot path (every module-level call): when the leader published, schedule
        :meth:`sync` on the loop instead of applying inside the caller's call.

        Applying a table costs ~8 us per row (16 ms for 2000 rows, more on a loaded host);
        the caller's ranking would pay it whole. Deferred, it runs between calls, coalesced,
        at most every :data:`~apr_async.probe.sharing.APPLY_SPACING` and at most a tenth of
        the loop's time (the next apply waits ten times the last one's cost), and the call
        ranks with the tables it has: what it costs here is one 8-byte read.
        """
        sharing = self.sharing
        if (sharing is None or sharing.leader or self._apply is not None
                or self._loop is None or not sharing.changed()):
            return
        delay = max(0.0, self._next_apply - self._loop.time())
        self._apply = self._loop.call_later(delay, self._apply_now)

    def _apply_now(self) -> None:
        self._apply = None
        self.sync()

    def report(self, kind: int, src: IPAddress, dst: IPAddress, port: int, *, ok: bool,
               rtt: float | None, errno: int | None) -> None:
        """A follower sends one outcome to the leader (nothing otherwise)."""
        sharing = self.sharing
        if sharing is not None and not sharing.leader:
            sharing.report(kind, src, dst, port, ok=ok, rtt=rtt, errno=errno)

    async def follow(self, interval: float) -> None:
        """Follow until this process leads or sharing failed: :meth:`sync` every
        :data:`POLL` of *interval*, and try the lock twice per interval."""
        loop = asyncio.get_running_loop()
        next_try = loop.time() + interval / 2
        while self.sharing is not None:
            await asyncio.sleep(interval * POLL)
            if loop.time() >= self._next_apply:  # the same bound on the loop's time
                self.sync()
            if loop.time() < next_try:
                continue
            # two attempts per interval: a takeover within one interval of the exit
            next_try = loop.time() + interval / 2
            try:
                if self.sharing.try_lead(loop):
                    log.info("apr_async: this process now probes for the host")
                    return
            except ShareUnavailable as exc:
                self.failed(exc)
