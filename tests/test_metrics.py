"""apr_async.metrics counts real races on loopback; the Prometheus collector's text exposition
parses back (prometheus-client's own parser) to the same figures."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from apr_async import Config, PairContext, ProbeService, connect_socket, metrics
from apr_async.resolve.resolver import Resolver


def quiet_config() -> Config:
    return Config(targets=(), probe_gateways=False, autostart=False,  # type: ignore[call-arg]
                  nameservers=("127.0.0.1:9",))


@pytest.fixture(autouse=True)
def fresh_counters() -> Iterator[None]:
    metrics.reset()
    yield
    metrics.reset()


def _listener(host: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.bind((host, 0))
    sock.listen(8)
    return sock


async def _races(tmp_path: Path, service: ProbeService | None = None) -> None:
    """One direct IPv4 win, one refused race, one IPv6 -> IPv4 fallback."""
    listener = _listener("127.0.0.1")
    port = listener.getsockname()[1]
    hosts = tmp_path / "hosts"
    hosts.write_text("::1 dual.test\n127.0.0.1 dual.test\n")
    resolver = Resolver(["127.0.0.1:9"], hosts_path=str(hosts))
    context = service.context if service is not None else PairContext(resolver=resolver)
    try:
        sock = await connect_socket("127.0.0.1", port, context=context, service=service)
        sock.close()
        with pytest.raises(ConnectionRefusedError):
            await connect_socket("127.0.0.1", 9, context=context, service=service)
        # ::1 is ranked first and refused (nothing listens there); 127.0.0.1 wins.
        sock = await connect_socket(
            "dual.test", port, context=PairContext(resolver=resolver), service=service)
        assert sock.family == socket.AF_INET
        sock.close()
    finally:
        listener.close()
        await resolver.close()
    await asyncio.sleep(0)  # (a success is recorded before the caller has its connection)


async def test_snapshot_counts_wins_failures_fallbacks_and_errnos(tmp_path: Path) -> None:
    await _races(tmp_path)
    snap = metrics.snapshot()
    assert dict(snap.connections) == {"ipv4": 2}
    assert snap.failed_races == 1
    assert dict(snap.attempts_per_race) == {1: 2, 2: 1}
    assert snap.races == 3 and snap.attempts == 4
    assert dict(snap.fallbacks) == {"ipv4": 1}
    assert dict(snap.attempt_failures) == {"ECONNREFUSED": 2}
    assert snap.paths == () and dict(snap.status) == {}  # no probe service runs here


async def test_snapshot_takes_paths_and_status_from_a_service(tmp_path: Path) -> None:
    service = ProbeService(quiet_config(), install=False)
    await _races(tmp_path, service)
    snap = metrics.snapshot(service)
    assert "IPv6_ok" in snap.status and "IPv4_ok" in snap.status
    assert all(isinstance(v, bool) for v in snap.status.values())
    assert any(p.target == "127.0.0.1" and p.ok for p in snap.paths), snap.paths
    with pytest.raises(TypeError):
        metrics.snapshot("nope")  # type: ignore[arg-type]


async def test_prometheus_exposition_parses_back(tmp_path: Path) -> None:
    from apr_async.metrics_prometheus import AprCollector

    service = ProbeService(quiet_config(), install=False)
    await _races(tmp_path, service)
    registry = CollectorRegistry()
    registry.register(AprCollector(service))
    text = generate_latest(registry).decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("apr_async_connections_total", (("family", "ipv4"),))] == 2
    assert samples[("apr_async_failed_races_total", ())] == 1
    assert samples[("apr_async_races_by_attempts_total", (("attempts", "2"),))] == 1
    assert samples[("apr_async_fallbacks_total", (("family", "ipv4"),))] == 1
    assert samples[("apr_async_attempt_failures_total", (("errno", "ECONNREFUSED"),))] == 2
    assert samples[("apr_async_status", (("flag", "IPv4_ok"),))] in (0.0, 1.0)
    ok = [v for (name, labels), v in samples.items()
          if name == "apr_async_path_ok" and ("target", "127.0.0.1") in labels]
    assert ok == [1.0]
    with pytest.raises(TypeError):
        AprCollector("nope")  # type: ignore[arg-type]


async def test_opentelemetry_instruments_read_by_the_sdk(tmp_path: Path) -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from apr_async.metrics_otel import instrument

    service = ProbeService(quiet_config(), install=False)
    await _races(tmp_path, service)
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    try:
        instrument(provider.get_meter("test"), service=service)
        data = reader.get_metrics_data()
    finally:
        provider.shutdown()
    assert data is not None
    points = {
        (metric.name, tuple(sorted((point.attributes or {}).items()))): point.value
        for rm in data.resource_metrics for sm in rm.scope_metrics for metric in sm.metrics
        for point in metric.data.data_points  # type: ignore[union-attr]
    }
    assert points[("apr_async.connections", (("family", "ipv4"),))] == 2
    assert points[("apr_async.failed_races", ())] == 1
    assert points[("apr_async.fallbacks", (("family", "ipv4"),))] == 1
    assert points[("apr_async.attempt_failures", (("errno", "ECONNREFUSED"),))] == 2
    assert points[("apr_async.races_by_attempts", (("attempts", "2"),))] == 1
    assert ("apr_async.status", (("flag", "IPv4_ok"),)) in points
    with pytest.raises(TypeError):
        instrument(provider.get_meter("test"), service="nope")  # type: ignore[arg-type]


async def test_fast_path_connections_are_counted_and_name_their_winner() -> None:
    # open_connection to a literal with default arguments takes the one-pair fast path
    # (apr_async.connect.fast), which bypasses the race: it must be counted all the same,
    # and integrations must still learn which pair won (the aiohttp trace, httpx's apr_pair).
    from apr_async import open_connection
    from apr_async.connect.stats import last_winner

    listener = _listener("127.0.0.1")
    port = listener.getsockname()[1]
    context = PairContext(resolver=Resolver(["127.0.0.1:9"]))
    try:
        for _ in range(3):  # the first call warms the memo; the others take the fast path
            _, writer = await open_connection("127.0.0.1", port, context=context)
            writer.close()
            await writer.wait_closed()
            assert last_winner.get().destination[0] == "127.0.0.1"
        with pytest.raises(ConnectionRefusedError):
            await open_connection("127.0.0.1", 9, context=context)
        with pytest.raises(ConnectionRefusedError):
            await open_connection("127.0.0.1", 9, context=context)
    finally:
        listener.close()
        await context.get_resolver().close()
    snap = metrics.snapshot()
    assert dict(snap.connections) == {"ipv4": 3}
    assert snap.failed_races == 2
    assert dict(snap.attempts_per_race) == {1: 5}
    assert dict(snap.attempt_failures) == {"ECONNREFUSED": 2}
