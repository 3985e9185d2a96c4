"""The probe service's side of host sharing: leader or follower, and the switch between them.

A :class:`ProbeService` with sharing on makes one :class:`Sharing`. At start it tries the
leader lock (:mod:`apr_async.probe.shared`):

* **leader**: it probes as a service on its own does, publishes its tables into the shared
  table (coalesced, at most every :data:`PUBLISH_DELAY`) and applies the outcomes followers
  send to its socket as its own passive samples;
* **follower**: it never probes, so its status is the leader's (published with the tables).
  It reads the shared table at start (so its first ranking is
  warm), soon after a module-level call saw the generation move (scheduled on the loop, never
  inside that call, at most every :data:`APPLY_SPACING`), and every :data:`POLL` of the probe
  interval otherwise; it records its own outcomes at once and sends them to the leader;
  and it tries the lock twice per probe interval, so it takes over within one interval of the
  leader's exit.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from pathlib import Path

from apr_async.core.addresses import IPAddress
from apr_async.core.failures import FailureTable
from apr_async.core.latency import LatencyTable
from apr_async.core.outcomes import record_outcome
from apr_async.core.status import ConnectivityStatus
from apr_async.probe import shared
from apr_async.probe import table_codec as codec

__all__ = ["APPLY_SPACING", "MAX_AGE", "POLL", "PUBLISH_DELAY", "Sharing"]

log = logging.getLogger("apr_async.probe")

#: Seconds a leader waits to gather more changes into one publication.
PUBLISH_DELAY = 0.02
#: A follower polls the shared table this often, as a fraction of the probe interval.
POLL = 0.25
#: A follower applies a newer shared table at most this often (seconds). The leader may
#: publish every PUBLISH_DELAY on a busy host; applying costs ~20 us per row, so without a
#: floor a follower with a large table would spend its loop re-applying it.
APPLY_SPACING = 0.1
#: Shared latency entries older than this (seconds) are not used: a remembered fastest path
#: is a stickiness and privacy risk, so it expires.
MAX_AGE = 3600.0
#: A follower's own outcomes replayed onto a snapshot the leader may have published before it
#: received them (seconds before the publication, and how many at most).
_REPLAY_WINDOW = 0.5
_REPLAY_MAX = 64

_Own = tuple[float, IPAddress, IPAddress, int, bool, float | None, int | None]


class Sharing:
    """Leader election, publication and following for one service (see the module)."""

    def __init__(self, directory: Path, latency: LatencyTable, failures: FailureTable,
                 clock: Callable[[], float]) -> None:
        self.directory = shared.prepare_directory(directory)
        ns = shared.namespace_id()
        self.lock = shared.LeaderLock(directory / f"{ns}.lock")
        self.table_path = directory / f"{ns}.table"
        self.socket_path = directory / f"{ns}.sock"
        self._latency, self._failures, self._clock = latency, failures, clock
        self._reader: shared.TableReader | None = shared.TableReader(self.table_path)
        self._writer: shared.TableWriter | None = None
        self._receiver: shared.OutcomeReceiver | None = None
        self._sender: shared.OutcomeSender | None = None
        self._netid = b""
        self._boot = shared.boot_id()
        self._publish_handle: asyncio.TimerHandle | None = None
        self._own: collections.deque[_Own] = collections.deque(maxlen=_REPLAY_MAX)
        self._corrupt_warned = False
        #: Called with each outcome a follower sent (the leader's service records it).
        self.on_outcome: Callable[[codec.Outcome], None] | None = None
        #: The leader's status, published with its tables (the leader's service sets it).
        self.status_of: Callable[[], ConnectivityStatus] | None = None
        #: A follower's copy of the leader's last published status.
        self.status: ConnectivityStatus | None = None
        #: Snapshots applied and publications made (diagnostics, tests).
        self.applied = 0
        self.published = 0
        #: Seconds spent reading and applying shared tables (a follower's cost of sharing).
        self.apply_seconds = 0.0

    @property
    def leader(self) -> bool:
        """True while this process leads."""
        return self._writer is not None

    def set_network(self, fingerprint: str) -> None:
        """The current network: only records of this network are read or published."""
        self._netid = shared.network_id(fingerprint)

    # ----------------------------------------------------------------- election

    def try_lead(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Take the lock if free and become the leader; True when this process leads."""
        if self.leader:
            return True
        if not self.lock.try_acquire():
            if self._sender is None:
                self._sender = shared.OutcomeSender(self.socket_path)
            return False
        try:
            self.refresh()  # what the previous leader knew, before we overwrite it
            self._writer = shared.TableWriter(self.table_path)
            self._receiver = shared.OutcomeReceiver(self.socket_path)
        except BaseException:
            self._drop_leader()
            raise
        loop.add_reader(self._receiver.sock, self._on_readable)
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._sender is not None:
            self._sender.close()
            self._sender = None
        self.mark_dirty(loop)
        return True

    def _drop_leader(self) -> None:
        if self._publish_handle is not None:
            self._publish_handle.cancel()
            self._publish_handle = None
        if self._receiver is not None:
            self._receiver.close()
            self._receiver = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self.lock.release()

    def close(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """Publish a last time (leader), then release everything. Idempotent."""
        if self._writer is not None:
            self.publish()
        if self._receiver is not None and loop is not None and not loop.is_closed():
            loop.remove_reader(self._receiver.sock)
        self._drop_leader()
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._sender is not None:
            self._sender.close()
            self._sender = None

    # ----------------------------------------------------------------- leader side

    def mark_dirty(self, loop: asyncio.AbstractEventLoop) -> None:
        """The tables changed: publish soon (coalesced)."""
        if self._writer is None or self._publish_handle is not None:
            return
        self._publish_handle = loop.call_later(PUBLISH_DELAY, self.publish)

    def publish(self) -> None:
        """Write the tables into the shared table now."""
        if self._publish_handle is not None:
            self._publish_handle.cancel()
            self._publish_handle = None
        if self._writer is None:
            return
        rows = shared.rows_of(self._latency, self._failures, self._clock(), time.monotonic())
        status = codec.encode_status(self.status_of()) if self.status_of is not None else b""
        self._writer.publish(rows, netid=self._netid, boot=self._boot, status=status)
        self.published += 1

    def _on_readable(self) -> None:
        if self._receiver is None:
            return
        for outcome in self._receiver.drain():
            if self.on_outcome is not None:
                self.on_outcome(outcome)

    # ----------------------------------------------------------------- follower side

    def changed(self) -> bool:
        """Whether the leader published since the last :meth:`refresh` (one 8-byte read of the
        mapped file). A table that cannot be read says True: :meth:`refresh` reports it."""
        reader = self._reader
        if reader is None:
            return False
        try:
            return reader.changed()
        except (codec.TableCorruptError, shared.ShareUnavailable, OSError):
            return True

    def refresh(self) -> bool:
        """Apply the shared table if its generation moved; True when the tables changed.

        The hot path: when nothing moved this is one 8-byte read of the mapped file.
        """
        reader = self._reader
        if reader is None:
            return False
        try:
            if not reader.changed():
                return False
            snap = reader.read()
        except (codec.TableCorruptError, shared.ShareUnavailable, OSError) as exc:
            if not self._corrupt_warned:
                log.warning("apr_async shared table %s ignored: %s", self.table_path, exc)
                self._corrupt_warned = True
            reader.close()  # the leader rewrites it whole; map it again next time
            return False
        if snap is None or snap.netid != self._netid or snap.boot_id != self._boot:
            return False  # another network or boot: never use its history
        mono, now = time.monotonic(), self._clock()
        self.status = snap.status
        shared.apply_snapshot(snap, self._latency, self._failures, now, mono, max_age=MAX_AGE)
        for at, src, dst, port, ok, rtt, errno in self._own:
            if at >= snap.published_at - _REPLAY_WINDOW:
                record_outcome(self._latency, self._failures, src, dst, port, ok=ok, rtt=rtt,
                               errno=errno, now=now - (mono - at))
        self.applied += 1
        return True

    def report(self, kind: int, src: IPAddress, dst: IPAddress, port: int, *, ok: bool,
               rtt: float | None, errno: int | None) -> None:
        """A follower's own outcome: remembered for replay and sent to the leader."""
        if self._sender is None:
            return
        if kind == 0:
            self._own.append((time.monotonic(), src, dst, port, ok, rtt, errno))
        self._sender.send(codec.Outcome(kind, src, dst, port, ok, rtt, errno))
