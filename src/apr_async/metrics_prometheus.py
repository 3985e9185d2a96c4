"""Prometheus collector for :mod:`apr_async.metrics` (the ``prometheus`` extra)::

    from prometheus_client import REGISTRY
    from apr_async.metrics_prometheus import AprCollector
    REGISTRY.register(AprCollector())

Each scrape reads one :func:`apr_async.metrics.snapshot`; the metrics are named
``apr_async_*`` (see :meth:`AprCollector.collect`). Importing :mod:`apr_async` never imports
``prometheus_client``; this module does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from apr_async.metrics import Snapshot, snapshot
from apr_async.probe.service import ProbeService

__all__ = ["AprCollector"]


class AprCollector(Collector):
    """A ``prometheus_client`` collector of apr_async's figures.

    ``service``: the probe service whose paths and status to export (default: the one
    running on the scraping thread's event loop, if any; a scrape from the exporter's own
    thread sees none, so pass the service when you run one). ``source`` replaces
    :func:`~apr_async.metrics.snapshot` (tests).
    """

    def __init__(
        self,
        service: ProbeService | None = None,
        *,
        source: Callable[[], Snapshot] | None = None,
    ) -> None:
        if service is not None and not isinstance(service, ProbeService):
            raise TypeError(f"service must be a ProbeService, not {type(service).__name__}")
        self._source = source or (lambda: snapshot(service))

    def collect(self) -> Iterator[Metric]:
        """``apr_async_connections_total{family}``, ``apr_async_failed_races_total``,
        ``apr_async_races_by_attempts_total{attempts}``, ``apr_async_fallbacks_total{family}``,
        ``apr_async_attempt_failures_total{errno}``, ``apr_async_path_rtt_seconds{source,
        target}``, ``apr_async_path_min_rtt_seconds``, ``apr_async_path_loss_ratio``,
        ``apr_async_path_ok`` and ``apr_async_status{flag}`` (1 or 0)."""
        snap = self._source()
        connections = CounterMetricFamily(
            "apr_async_connections", "Races won, by winning address family", labels=["family"])
        for family, count in sorted(snap.connections.items()):
            connections.add_metric([family], count)
        yield connections
        yield CounterMetricFamily(
            "apr_async_failed_races", "Races that raised or were cancelled",
            value=snap.failed_races)
        attempts = CounterMetricFamily(
            "apr_async_races_by_attempts", "Races by the number of attempts they started",
            labels=["attempts"])
        for n, count in sorted(snap.attempts_per_race.items()):
            attempts.add_metric([str(n)], count)
        yield attempts
        fallbacks = CounterMetricFamily(
            "apr_async_fallbacks",
            "Races won by another family than their first attempt's, by winning family",
            labels=["family"])
        for family, count in sorted(snap.fallbacks.items()):
            fallbacks.add_metric([family], count)
        yield fallbacks
        failures = CounterMetricFamily(
            "apr_async_attempt_failures", "Failed connection attempts by errno",
            labels=["errno"])
        for name, count in sorted(snap.attempt_failures.items()):
            failures.add_metric([name], count)
        yield failures
        yield from _path_metrics(snap)
        status = GaugeMetricFamily(
            "apr_async_status", "Connectivity status flags (1 true, 0 false)", labels=["flag"])
        for flag, value in sorted(snap.status.items()):
            status.add_metric([flag], 1.0 if value else 0.0)
        yield status


def _path_metrics(snap: Snapshot) -> Iterator[Metric]:
    labels = ["source", "target"]
    rtt = GaugeMetricFamily(
        "apr_async_path_rtt_seconds", "Probe RTT (EWMA) per source and target", labels=labels)
    min_rtt = GaugeMetricFamily(
        "apr_async_path_min_rtt_seconds", "Smallest probe RTT per source and target",
        labels=labels)
    loss = GaugeMetricFamily(
        "apr_async_path_loss_ratio", "Recent probe loss per source and target", labels=labels)
    ok = GaugeMetricFamily(
        "apr_async_path_ok", "1 when the path works per the latest probes", labels=labels)
    for path in snap.paths:
        key = [path.source, path.target]
        if path.rtt is not None:
            rtt.add_metric(key, path.rtt)
        if path.min_rtt is not None:
            min_rtt.add_metric(key, path.min_rtt)
        loss.add_metric(key, path.loss)
        ok.add_metric(key, 1.0 if path.ok else 0.0)
    yield from (rtt, min_rtt, loss, ok)
