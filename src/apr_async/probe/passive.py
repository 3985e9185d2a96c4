"""Passive samples: what the application's own connection attempts tell the service.

:func:`record_passive` puts one attempt's outcome into the tables, the tracker and the
recently used destinations; :func:`untried_destinations` picks the destinations a won race
never tried that are worth a probe.

:meth:`ProbeService.record_attempt <apr_async.probe.service.ProbeService.record_attempt>` takes
every connection attempt made by ``open_connection`` and friends, and ``record_untried`` the
best pair of each family a won race never tried, re-probed like a used destination so that a
family that always loses within the attempt delay gets measured all the same.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from apr_async.core.addresses import IPAddress
from apr_async.core.failures import FailureTable
from apr_async.core.latency import LatencyTable
from apr_async.core.outcomes import record_outcome
from apr_async.core.status import Observation, StatusTracker
from apr_async.probe.measure import ip_of
from apr_async.probe.plan import RecentDestinations, is_offlink
from apr_async.resolve import interfaces

__all__ = ["UNTRIED_PER_FAMILY", "pair_addresses", "record_passive", "untried_destinations"]

#: Untried destinations of one family kept from one ``record_untried`` call.
UNTRIED_PER_FAMILY = 2


def pair_addresses(pair: object) -> tuple[IPAddress, IPAddress, int | None] | None:
    """A pair's source, destination and the destination's scope id; ``None`` if unreadable."""
    src_info = ip_of(getattr(pair, "source", None))
    dst_info = ip_of(getattr(pair, "destination", None))
    if src_info is None or dst_info is None:
        return None
    return src_info[0], dst_info[0], dst_info[1]


def record_passive(
    tables: tuple[LatencyTable, FailureTable],
    tracker: StatusTracker,
    recent: RecentDestinations,
    snapshot: interfaces.HostSnapshot | None,
    sample: tuple[IPAddress, IPAddress, int | None, int],
    *,
    ok: bool,
    rtt: float | None,
    errno: int | None,
    now: float,
) -> bool:
    """One attempt (*sample* is source, destination, its scope id, port) into the tables;
    False when the sample cannot be right (it is then dropped)."""
    src, dst, scope, port = sample
    if not record_outcome(
        tables[0], tables[1], src, dst, port, ok=ok, rtt=rtt, errno=errno, now=now
    ):
        return False  # a sample that cannot be right is dropped; the connector must not fail
    tracker.observe(
        Observation(src, dst, ok or rtt is not None, now, is_offlink(dst, snapshot), "passive")
    )
    recent.note(dst, scope, port, now)
    return True


def untried_destinations(
    pairs: Sequence[object], per_family: int = UNTRIED_PER_FAMILY
) -> Iterator[tuple[IPAddress, int | None]]:
    """The destinations (with scope id) of *pairs*, at most *per_family* of each family."""
    taken: dict[int, int] = {}
    for pair in pairs:
        dst_info = ip_of(getattr(pair, "destination", None))
        if dst_info is None:
            continue
        dst, scope = dst_info
        count = taken.get(dst.version, 0)
        if count >= per_family:
            continue
        taken[dst.version] = count + 1
        yield dst, scope
