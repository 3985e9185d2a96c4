"""OpenTelemetry instruments for :mod:`apr_async.metrics` (the ``otel`` extra)::

    from apr_async.metrics_otel import instrument
    instrument()  # on the global MeterProvider's meter "apr_async"

Registers observable instruments whose callbacks read one
:func:`apr_async.metrics.snapshot` per collection: counters ``apr_async.connections``
(attribute ``family``), ``apr_async.failed_races``, ``apr_async.fallbacks`` (``family``),
``apr_async.attempt_failures`` (``errno``), ``apr_async.races_by_attempts`` (``attempts``),
and gauges ``apr_async.path.rtt`` / ``apr_async.path.loss`` (``source``, ``target``) and
``apr_async.status`` (``flag``). Only ``opentelemetry-api`` is needed; the application's SDK
(or none: then nothing is recorded) does the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from opentelemetry import metrics as otel_metrics
from opentelemetry.metrics import CallbackOptions, Instrument, Meter, Observation

from apr_async.metrics import Snapshot, snapshot
from apr_async.probe.service import ProbeService

__all__ = ["instrument"]


def instrument(
    meter: Meter | None = None, *, service: ProbeService | None = None
) -> list[Instrument]:
    """Create apr_async's observable instruments on ``meter`` (default: the global
    provider's ``apr_async`` meter), for ``service``'s probe figures (default: the one
    running on the collecting thread's loop, if any). Returns the instruments."""
    if service is not None and not isinstance(service, ProbeService):
        raise TypeError(f"service must be a ProbeService, not {type(service).__name__}")
    if meter is None:
        meter = otel_metrics.get_meter("apr_async")

    def observe(read: Callable[[Snapshot], Iterable[Observation]]) -> Callable[
            [CallbackOptions], Iterable[Observation]]:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            return list(read(snapshot(service)))
        return callback

    def by(key: str, values: dict[str, int] | dict[int, int]) -> list[Observation]:
        return [Observation(count, {key: str(name)}) for name, count in values.items()]

    return [
        meter.create_observable_counter(
            "apr_async.connections", [observe(lambda s: by("family", dict(s.connections)))],
            description="Races won, by winning address family"),
        meter.create_observable_counter(
            "apr_async.failed_races", [observe(lambda s: [Observation(s.failed_races)])],
            description="Races that raised or were cancelled"),
        meter.create_observable_counter(
            "apr_async.fallbacks", [observe(lambda s: by("family", dict(s.fallbacks)))],
            description="Races won by another family than their first attempt's"),
        meter.create_observable_counter(
            "apr_async.attempt_failures",
            [observe(lambda s: by("errno", dict(s.attempt_failures)))],
            description="Failed connection attempts by errno"),
        meter.create_observable_counter(
            "apr_async.races_by_attempts",
            [observe(lambda s: by("attempts", dict(s.attempts_per_race)))],
            description="Races by the number of attempts they started"),
        meter.create_observable_gauge(
            "apr_async.path.rtt",
            [observe(lambda s: [Observation(p.rtt, {"source": p.source, "target": p.target})
                                for p in s.paths if p.rtt is not None])],
            unit="s", description="Probe RTT (EWMA) per source and target"),
        meter.create_observable_gauge(
            "apr_async.path.loss",
            [observe(lambda s: [Observation(p.loss, {"source": p.source, "target": p.target})
                                for p in s.paths])],
            description="Recent probe loss per source and target"),
        meter.create_observable_gauge(
            "apr_async.status",
            [observe(lambda s: [Observation(1 if v else 0, {"flag": k})
                                for k, v in s.status.items()])],
            description="Connectivity status flags (1 true, 0 false)"),
    ]
