"""What the service's observations say: a figure per probed path (:func:`measurements`) and
the connectivity status (:func:`derive_status`)."""

from __future__ import annotations

import socket

from apr_async.config import Config
from apr_async.core.addresses import AddressKind, IPAddress
from apr_async.core.latency import LatencyTable
from apr_async.core.status import ConnectivityStatus, Observation, StatusTracker
from apr_async.probe.measure import PathMeasurement, gateway_texts
from apr_async.resolve import interfaces

__all__ = ["derive_status", "measurements"]


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


def derive_status(
    tracker: StatusTracker,
    snapshot: interfaces.HostSnapshot,
    config: Config,
    now: float,
    nat64_prefix: str | None,
) -> ConnectivityStatus:
    """The status the tracker's recent observations give on *snapshot*'s network."""
    gateways = gateway_texts(snapshot)
    sources = [s for s in snapshot.sources if s.kind is not AddressKind.LOOPBACK]
    return tracker.derive(
        sources,
        now=now,
        max_age=config.effective_status_max_age,
        gateway4=gateways[socket.AF_INET],
        gateway6=gateways[socket.AF_INET6],
        nat64_prefix=nat64_prefix,
    )
