"""A snapshot of what apr_async did and measured, for dashboards and exporters.

:func:`snapshot` copies a handful of counters (kept by one call per finished race, in
:mod:`apr_async.connect.stats`) and, when a probe service is given or runs on this loop, its
per-path RTTs (``measurements()``) and status flags (``status()``). It does no I/O and costs
O(paths + distinct errnos), so calling it every second is fine::

    from apr_async import metrics
    snap = metrics.snapshot()
    print(snap.connections, snap.fallbacks, snap.attempt_failures)

:mod:`apr_async.metrics_prometheus` exposes the same figures to ``prometheus-client``; nothing
here imports a monitoring library.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

from apr_async.connect.stats import stats
from apr_async.probe.default import current_service
from apr_async.probe.service import ProbeService

__all__ = ["PathRTT", "Snapshot", "reset", "snapshot"]


@dataclass(frozen=True, slots=True)
class PathRTT:
    """One probed (source, target) path: ``rtt`` (EWMA) and ``min_rtt`` in seconds (``None``
    until measured), ``loss`` (fraction of recent probes lost), ``ok`` (the path works)."""

    source: str
    target: str
    rtt: float | None
    min_rtt: float | None
    loss: float
    ok: bool


def _frozen(counter: Any) -> MappingProxyType[Any, int]:
    return MappingProxyType(dict(counter))


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The figures at one moment (all counters are totals since start or :func:`reset`).

    ``connections``: races won, per winning family (``ipv4``/``ipv6``); ``failed_races``:
    races that raised or were cancelled; ``attempts_per_race``: how many races started
    exactly N attempts (key N); ``fallbacks``: races won by another family than their first
    attempt's, per winning family; ``attempt_failures``: failed attempts by errno name
    (``ETIMEDOUT``, ``ECONNREFUSED``, ``none`` for TLS and other errno-less failures);
    ``paths``: the probe service's paths (empty without one); ``status``: its boolean
    connectivity flags (``IPv6_ok``, ``IPv4_ok``, ``GUA_ok``, ``NAT44``...; empty without
    one).
    """

    connections: MappingProxyType[str, int]
    failed_races: int
    attempts_per_race: MappingProxyType[int, int]
    fallbacks: MappingProxyType[str, int]
    attempt_failures: MappingProxyType[str, int]
    paths: tuple[PathRTT, ...] = ()
    status: MappingProxyType[str, bool] = field(
        default_factory=lambda: MappingProxyType({}))

    @property
    def races(self) -> int:
        """Races finished: won and failed."""
        return sum(self.connections.values()) + self.failed_races

    @property
    def attempts(self) -> int:
        """Attempts started, over all races."""
        return sum(n * count for n, count in self.attempts_per_race.items())


def _status_flags(service: ProbeService) -> dict[str, bool]:
    status = service.status()
    return {f.name: getattr(status, f.name) for f in fields(status)
            if isinstance(getattr(status, f.name), bool)}


def snapshot(service: ProbeService | None = None) -> Snapshot:
    """The current figures; probe paths and status from ``service`` (default: the probe
    service running on this event loop, if any)."""
    if service is None:
        service = current_service()
    elif not isinstance(service, ProbeService):
        raise TypeError(f"service must be a ProbeService, not {type(service).__name__}")
    paths: tuple[PathRTT, ...] = ()
    flags: dict[str, bool] = {}
    if service is not None:
        paths = tuple(
            PathRTT(m.source, m.destination, m.rtt, m.min_rtt, m.loss, m.ok)
            for m in service.measurements()
        )
        flags = _status_flags(service)
    return Snapshot(
        connections=_frozen(stats.connections),
        failed_races=stats.failed,
        attempts_per_race=_frozen(stats.attempts),
        fallbacks=_frozen(stats.fallbacks),
        attempt_failures=_frozen(stats.attempt_failures),
        paths=paths,
        status=MappingProxyType(flags),
    )


def reset() -> None:
    """Set every race counter back to zero (probe figures are the service's own)."""
    stats.reset()
