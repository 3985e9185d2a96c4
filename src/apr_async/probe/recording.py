"""The part of :class:`~apr_async.probe.service.ProbeService` the connection side talks to:
passive samples of the application's own attempts, untried destinations, and the outcomes
followers send a leader (:class:`PassiveSamples`, a mixin).

Every sample goes into the same tables the probes fill, so an attempt that failed reorders
the next ranking at once; a follower also sends it to the host's leader (:mod:`.host_share`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

from apr_async.core.addresses import IPAddress, parse_address
from apr_async.core.failures import FailureTable
from apr_async.core.latency import LatencyTable
from apr_async.core.status import StatusTracker
from apr_async.probe import table_codec as codec
from apr_async.probe.host_share import HostShare
from apr_async.probe.observed import StatusKeeper
from apr_async.probe.passive import pair_addresses, record_passive, untried_destinations
from apr_async.probe.plan import RecentDestinations
from apr_async.probe.progress import Progress
from apr_async.resolve import interfaces

__all__ = ["PassiveSamples"]


class PassiveSamples:
    """Recording the application's outcomes; mixed into the probe service, whose state it
    uses (the tables, the recent destinations, the status keeper, the host share)."""

    latency: LatencyTable
    failures: FailureTable
    _clock: Callable[[], float]
    _recent: RecentDestinations
    _snapshot: interfaces.HostSnapshot | None
    _observed: StatusKeeper
    _tracker: StatusTracker
    _share: HostShare
    _progress: Progress

    def record_attempt(
        self, pair: object, port: int, ok: bool, rtt: float | None, errno: int | None
    ) -> None:
        """Passive sample: one connection attempt's outcome (see ``connect.AttemptRecorder``).

        A refusal (``ok`` false with an ``rtt``) proves the path; a silent failure counts as
        a loss. The destination joins the recently used ones, re-probed on ``port``.
        """
        addresses = pair_addresses(pair)
        if addresses is None:
            return
        src, dst, scope = addresses
        if self._record_passive(src, dst, scope, port, ok=ok, rtt=rtt, errno=errno):
            self._share.report(0, src, dst, port, ok=ok, rtt=rtt, errno=errno)

    def _record_passive(self, src: IPAddress, dst: IPAddress, scope: int | None, port: int, *,
                        ok: bool, rtt: float | None, errno: int | None) -> bool:
        if not record_passive((self.latency, self.failures), self._tracker, self._recent,
                              self._snapshot, (src, dst, scope, port), ok=ok, rtt=rtt,
                              errno=errno, now=self._clock()):
            return False
        self._observed.dirty = True
        self._share.changed()
        self._progress.notify()
        return True

    def record_untried(self, pairs: Sequence[object], port: int) -> None:
        """Pairs a won connection race never tried (see ``connect_types.UntriedRecorder``):
        their destinations join the recently used ones, due for a probe on ``port`` in the
        next round and then rate-limited like any other. No sample: nothing was sent.

        The connector gives the best untried pair of each family other than the winner's;
        without it a family that always loses within the attempt delay would never be
        measured, so the ranking could never learn that it is faster. At most
        ``UNTRIED_PER_FAMILY`` per family of each call are kept, whoever the caller is.
        """
        now = self._clock()
        for dst, scope in untried_destinations(pairs):
            self._recent.note(dst, scope, port, now, measured=False)
            if self._share.following:
                unspecified = parse_address("::" if dst.version == 6 else "0.0.0.0")[0]
                self._share.report(1, unspecified, dst, port, ok=False, rtt=None, errno=None)

    def note_destination(self, destination: IPAddress, port: int, *, ifindex: int | None = None,
                         now: float | None = None) -> None:
        """Add a destination the application uses to the re-probed set (no sample)."""
        self._recent.note(destination, ifindex, port, self._clock() if now is None else now)

    def _on_shared_outcome(self, outcome: codec.Outcome) -> None:
        if outcome.kind == 1:
            self._recent.note(outcome.destination, None, outcome.port, self._clock(),
                              measured=False)
            return
        with contextlib.suppress(ValueError, TypeError):
            self._record_passive(outcome.source, outcome.destination, None, outcome.port,
                                 ok=outcome.ok, rtt=outcome.rtt, errno=outcome.errno)
