"""What the service's observations say: a figure per probed path (:func:`measurements`) and
the connectivity status (:class:`StatusKeeper`)."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable

from apr_async.config import Config
from apr_async.core.addresses import AddressKind, IPAddress
from apr_async.core.latency import LatencyTable
from apr_async.core.status import ConnectivityStatus, Observation, StatusTracker
from apr_async.probe.measure import PathMeasurement, gateway_texts
from apr_async.resolve import interfaces

__all__ = ["StatusKeeper", "measurements"]

log = logging.getLogger("apr_async.probe")


def measurements(tracker: StatusTracker, latency: LatencyTable, now: float
                 ) -> list[PathMeasurement]:
    """The latest result and latency figures of every observed path, best first."""
    by_pair: dict[tuple[IPAddress, IPAddress], list[Observation]] = {}
    for obs in tracker.observations():
        by_pair.setdefault((obs.source, obs.destination), []).append(obs)
    out: list[PathMeasurement] = []
    for (src, dst), items in by_pair.items():
        latest = max(items, key=lambda o: o.at)
        estimate = latency.estimate(src, dst)
        if estimate is not None and estimate.inherited:
            estimate = None  # a path's own figures only, never its prefix's
        out.append(
            PathMeasurement(
                source=str(src),
                destination=str(dst),
                methods=tuple(sorted({o.method for o in items})),
                ok=any(o.ok for o in items),
                rtt=estimate.rtt if estimate is not None else None,
                min_rtt=estimate.min if estimate is not None else None,
                loss=estimate.loss if estimate is not None else 0.0,
                samples=estimate.samples if estimate is not None else 0,
                age=now - latest.at,
                last_rtt=estimate.last if estimate is not None else None,
            )
        )
    out.sort(key=lambda m: (not m.ok, m.rtt if m.rtt is not None else float("inf")))
    return out


class StatusKeeper:
    """The tracker of recent observations and the status last derived from them; ``dirty``
    when an observation came in since."""

    def __init__(self, config: Config, clock: Callable[[], float]) -> None:
        self.config = config
        self._clock = clock
        self.tracker = StatusTracker(max_entries=config.table_size)
        self.status = ConnectivityStatus()
        self.dirty = True

    def derive(self, snapshot: interfaces.HostSnapshot, nat64_prefix: str | None
               ) -> ConnectivityStatus:
        """The status now, on *snapshot*'s network; logged when its flags changed."""
        gateways = gateway_texts(snapshot)
        sources = [s for s in snapshot.sources if s.kind is not AddressKind.LOOPBACK]
        before = self.status
        status = self.tracker.derive(
            sources,
            now=self._clock(),
            max_age=self.config.effective_status_max_age,
            gateway4=gateways[socket.AF_INET],
            gateway6=gateways[socket.AF_INET6],
            nat64_prefix=nat64_prefix,
        )
        self.status = status
        self.dirty = False
        if not before.same_flags(status) and status.observations:
            log.info("apr_async connectivity: %s", status.summary())
        return status
