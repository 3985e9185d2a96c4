"""LatencyTable.record's fast path (the same address objects again) changes nothing visible:
a table fed the very same objects and one fed fresh copies end up identical, evictions and
clear() included, and bad values are still rejected."""

from __future__ import annotations

import ipaddress
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apr_async.core.addresses import IPAddress
from apr_async.core.failures import FailureTable
from apr_async.core.latency import LatencyTable
from apr_async.core.outcomes import record_outcome

SOURCES = [ipaddress.ip_address(t) for t in ("192.0.2.1", "192.0.2.2", "2001:db8::1")]
DESTS = [
    ipaddress.ip_address(t)
    for t in ("198.51.100.1", "198.51.100.2", "198.51.101.9", "2001:db8:1::1", "2001:db8:1::2")
]

Op = tuple[str, int, int, float | None]

ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("record"),
            st.integers(0, len(SOURCES) - 1),
            st.integers(0, len(DESTS) - 1),
            st.none() | st.floats(0.0, 2.0) | st.integers(0, 2).map(float),
        ),
        st.tuples(st.just("clear"), st.just(0), st.just(0), st.none()),
    ),
    max_size=60,
)


def _fresh(ip: IPAddress) -> IPAddress:
    return ipaddress.ip_address(str(ip))


def _state(table: LatencyTable) -> object:
    estimates = [
        table.estimate(src, dst) for src in SOURCES for dst in [*DESTS, *map(_fresh, DESTS)]
    ]
    return table.snapshot(1000.0), estimates, table.version, len(table)


@settings(max_examples=200, deadline=None)
@given(ops, st.integers(1, 6))
def test_same_objects_and_fresh_copies_give_the_same_table(ops: list[Op], bound: int) -> None:
    shared = LatencyTable(max_entries=bound, prefix_v4=16, prefix_v6=32)
    fresh = LatencyTable(max_entries=bound, prefix_v4=16, prefix_v6=32)
    for now, (kind, s, d, rtt) in enumerate(ops):
        if kind == "clear":
            shared.clear()
            fresh.clear()
            continue
        src, dst = SOURCES[s], DESTS[d]
        if src.version != dst.version:
            continue
        shared.record(src, dst, rtt, float(now))
        fresh.record(_fresh(src), _fresh(dst), rtt, float(now))
        assert _state(shared) == _state(fresh)
    assert _state(shared) == _state(fresh)


def test_a_repeated_pair_is_still_checked() -> None:
    table = LatencyTable()
    src, dst = SOURCES[0], DESTS[0]
    table.record(src, dst, 0.001, 1.0)
    for rtt, now in ((math.nan, 2.0), (-0.001, 2.0), (math.inf, 2.0), (0.001, math.nan)):
        with pytest.raises(ValueError):
            table.record(src, dst, rtt, now)
    with pytest.raises(ValueError):
        table.record(src, dst, 0.001, math.inf)
    table.record(src, dst, 2, 3)  # ints are still taken (the general path converts them)
    est = table.estimate(src, dst)
    assert est is not None and est.samples == 2 and est.last == 2.0 and est.updated == 3.0


def test_record_outcome_success_with_and_without_failures() -> None:
    latency, failures = LatencyTable(), FailureTable()
    src, dst = SOURCES[0], DESTS[0]
    assert record_outcome(latency, failures, src, dst, 80, ok=True, rtt=0.001, errno=None, now=1)
    failures.record_failure(src, dst, 80, 1.0)
    assert record_outcome(latency, failures, src, dst, 80, ok=True, rtt=0.001, errno=None, now=2)
    assert len(failures) == 0
    assert not record_outcome(latency, failures, src, DESTS[3], 80, ok=True, rtt=0.001,
                              errno=None, now=3)
    with pytest.raises(TypeError):
        failures.record_success("192.0.2.1", dst, 80)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        failures.record_success(src, dst, True)
