"""Which ranking context the module-level functions use, and the service's memory bounds.

Loopback only: the services here probe nothing but a closed port on 127.0.0.1.
"""

from __future__ import annotations

import gc
import ipaddress
import socket
import tracemalloc
from collections.abc import Iterator

import pytest

from apr_async.config import Config
from apr_async.core.ranking import AddrPair
from apr_async.probe import default as service
from apr_async.probe.service import ProbeService
from apr_async.resolve import pairs


def quiet_config(**changes: object) -> Config:
    values: dict[str, object] = {
        "targets": ("127.0.0.1:9",),
        "probe_gateways": False,
        "nat64_discovery": False,
        "icmp": "off",
        "netwatch": "off",
        "probe_interval": 60.0,
        "autostart": False,
    }
    values.update(changes)
    return Config(**values)  # type: ignore[arg-type]


@pytest.fixture
def restore_defaults(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(service, "_default_config", None)
    before = pairs.default_context()
    yield
    service.configure()  # the environment's (test) configuration again
    pairs.set_default_context(before)


@pytest.mark.usefixtures("restore_defaults")
async def test_configure_applies_resolver_and_bias_without_a_service() -> None:
    cfg = quiet_config(nameservers=("127.0.0.1:5353", "[::1]:5353"), dns_timeout=0.7,
                       ipv6_bias_ms=12.0, table_size=64)
    service.configure(cfg)
    assert service.implicit_service() is None  # autostart off: nothing runs
    ctx = pairs.implicit_context()
    resolver = ctx.get_resolver()
    assert resolver.nameservers is not None and len(resolver.nameservers) == 2
    assert all("5353" in ns for ns in resolver.nameservers)
    assert resolver.timeout == 0.7
    assert ctx.ipv6_bias_ms == 12.0
    assert ctx.latency.max_entries == 64
    service.configure(quiet_config())
    assert pairs.default_context() is not ctx
    assert pairs.default_context().get_resolver().nameservers is None  # the system's again


@pytest.mark.usefixtures("restore_defaults")
async def test_default_context_never_falls_back_to_a_closed_service() -> None:
    service.configure(quiet_config())
    fallback = pairs.default_context()
    first = ProbeService(quiet_config())
    second = ProbeService(quiet_config())
    await first.start()
    await second.start()
    assert pairs.default_context() is second.context
    await first.aclose()  # closed out of order: the second still ranks
    assert pairs.default_context() is second.context
    await second.aclose()
    assert pairs.default_context() is fallback

    # configure() while a service runs: the service keeps ranking, the new configuration's
    # context takes over when it closes
    third = ProbeService(quiet_config())
    await third.start()
    service.configure(quiet_config(ipv6_bias_ms=9.0))
    assert pairs.default_context() is third.context
    await third.aclose()
    assert pairs.default_context().ipv6_bias_ms == 9.0


async def test_tables_stay_within_table_size() -> None:
    size = 32
    svc = ProbeService(quiet_config(table_size=size, recent_destinations=4), install=False)
    try:
        src = "10.0.0.10"
        for i in range(4 * size):
            dst = str(ipaddress.IPv4Address("198.51.100.0") + i)
            pair = AddrPair(socket.AF_INET, (src, 0), (dst, 443))
            svc.record_attempt(pair, 443, False, None, 110)
            svc.record_attempt(pair, 443, False, 0.01, 111)  # a refusal: an RTT too
        assert len(svc.latency) == size
        assert len(svc.failures) <= size
        assert len(svc._tracker) <= size
        assert len(svc._recent) == 4
        # the newest survive: a bound evicts the least recent, not the latest
        newest = ipaddress.IPv4Address("198.51.100.0") + 4 * size - 1
        assert svc.latency.estimate(ipaddress.IPv4Address(src), newest) is not None
    finally:
        await svc.aclose()


def fill(svc: ProbeService, count: int) -> None:
    """Passive samples (refusals) from four sources to ``count`` distinct destinations."""
    sources = [f"10.0.{i}.10" for i in range(4)]
    for i in range(count):
        dst = str(ipaddress.IPv4Address("198.51.100.0") + i)
        svc.record_attempt(AddrPair(socket.AF_INET, (sources[i % 4], 0), (dst, 443)), 443,
                           False, 0.01, 111)


async def test_full_tables_at_the_default_bound_stay_small() -> None:
    size = Config().table_size
    # the address classifiers' process-wide caches (bounded on their own) are not the
    # service's: warm them with the same addresses first
    warm = ProbeService(quiet_config(), install=False)
    fill(warm, 2 * size)
    await warm.aclose()
    svc = ProbeService(quiet_config(), install=False)
    try:
        tracemalloc.start()
        try:
            gc.collect()
            before = tracemalloc.get_traced_memory()[0]
            fill(svc, 2 * size)
            gc.collect()
            used = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert len(svc.latency) == size and len(svc._tracker) == size
        # latency, failure and status tables full: about 1.9 kB per entry, 2.5 MB at most
        assert used < 2.5 * 1024 * 1024, used
    finally:
        await svc.aclose()
