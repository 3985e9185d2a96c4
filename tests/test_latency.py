"""LatencyTable (EWMA, loss, prefix inheritance, LRU bound) and FailureTable (expiry)."""

from __future__ import annotations

import errno
import ipaddress
import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apr_async.core.failures import FailureTable
from apr_async.core.latency import LatencyTable
from apr_async.core.outcomes import record_outcome

ip = ipaddress.ip_address
SRC6 = ip("2001:db8:1::10")
SRC4 = ip("192.168.1.10")


# --- LatencyTable: one pair ---------------------------------------------------------------------


def test_ewma_last_min_samples() -> None:
    table = LatencyTable(alpha=0.5)
    dst = ip("2001:db8:2::1")
    assert table.estimate(SRC6, dst) is None
    table.record(SRC6, dst, 0.010, now=1.0)
    est = table.estimate(SRC6, dst)
    assert est is not None
    assert (est.rtt, est.last, est.min, est.samples, est.loss) == (0.010, 0.010, 0.010, 1, 0.0)
    assert not est.inherited and est.prefix is None and est.updated == 1.0
    table.record(SRC6, dst, 0.020, now=2.0)
    table.record(SRC6, dst, 0.004, now=3.0)
    est = table.estimate(SRC6, dst)
    assert est is not None
    assert est.rtt == pytest.approx(0.5 * 0.004 + 0.5 * (0.5 * 0.020 + 0.5 * 0.010))
    assert (est.last, est.min, est.samples, est.updated) == (0.004, 0.004, 3, 3.0)
    assert len(table) == 1


def test_loss_is_fraction_of_recent_window() -> None:
    table = LatencyTable(loss_window=4)
    dst = ip("192.0.2.1")
    table.record(SRC4, dst, None, now=0)
    est = table.estimate(SRC4, dst)
    assert est is not None and est.rtt is None and est.loss == 1.0 and est.samples == 0
    table.record(SRC4, dst, 0.001, now=1)
    est = table.estimate(SRC4, dst)
    assert est is not None and est.loss == 0.5 and est.rtt == 0.001
    for t in range(4):  # four successes push the loss out of the window
        table.record(SRC4, dst, 0.001, now=2 + t)
    est = table.estimate(SRC4, dst)
    assert est is not None and est.loss == 0.0
    for t in range(3):
        table.record(SRC4, dst, None, now=10 + t)
    est = table.estimate(SRC4, dst)
    assert est is not None and est.loss == 0.75 and est.rtt == pytest.approx(0.001)


def test_record_validates_before_storing() -> None:
    table = LatencyTable()
    dst = ip("192.0.2.1")
    with pytest.raises(TypeError):
        table.record("192.168.1.10", dst, 0.1, now=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        table.record(SRC6, dst, 0.1, now=0)
    for rtt in (-0.1, math.nan, math.inf, True):
        with pytest.raises(ValueError):
            table.record(SRC4, dst, rtt, now=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        table.record(SRC4, dst, 0.1, now=math.nan)
    assert len(table) == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"prefix_v6": 129},
        {"prefix_v4": -1},
        {"alpha": 0},
        {"alpha": 1.5},
        {"max_entries": 0},
        {"loss_window": 0},
    ],
)
def test_constructor_validates(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        LatencyTable(**kwargs)  # type: ignore[arg-type]


def test_zone_on_address_is_ignored_when_recording() -> None:
    table = LatencyTable()
    table.record(
        ipaddress.IPv6Address("fe80::1%eth0"), ipaddress.IPv6Address("fe80::2%eth0"), 0.001, 0
    )
    assert table.estimate(ip("fe80::1"), ip("fe80::2")) is not None


# --- prefix inheritance -----------------------------------------------------------------------


def test_unmeasured_destination_inherits_longest_matching_prefix() -> None:
    table = LatencyTable()
    table.record(SRC6, ip("2001:db8:aa:1::1"), 0.050, now=1)
    table.record(SRC6, ip("2001:db8:aa:1::2"), 0.030, now=2)
    table.record(SRC6, ip("2001:db8:bb::1"), 0.200, now=3)
    est = table.estimate(SRC6, ip("2001:db8:aa:1::99"))
    assert est is not None and est.inherited
    # The two under 2001:db8:aa:1::/120 (they share 126 bits, the query 120).
    assert est.destinations == 2
    assert est.rtt == pytest.approx(0.040)
    assert est.min == 0.030 and est.last == 0.030 and est.updated == 2
    assert est.prefix == ipaddress.ip_network("2001:db8:aa:1::/120")
    # Further away, every destination under the common /32 counts.
    est = table.estimate(SRC6, ip("2001:db8:ff00::1"))
    assert est is not None and est.destinations == 3
    assert est.prefix_len == 32
    assert est.rtt == pytest.approx((0.050 + 0.030 + 0.200) / 3)
    assert est.prefix == ipaddress.ip_network("2001:db8::/32")


def test_inheritance_stops_at_configured_prefix_lengths() -> None:
    table = LatencyTable()
    table.record(SRC6, ip("2001:db8::1"), 0.01, now=0)
    assert table.estimate(SRC6, ip("2001:db8:ffff::1")) is not None  # shares /32
    assert table.estimate(SRC6, ip("2001:db9::1")) is None  # shares /31
    table.record(SRC4, ip("198.51.100.1"), 0.01, now=0)
    est = table.estimate(SRC4, ip("198.51.111.254"))
    assert est is not None and est.prefix == ipaddress.ip_network("198.51.96.0/20")
    assert table.estimate(SRC4, ip("198.51.112.1")) is None  # shares /19 only
    tight = LatencyTable(prefix_v6=64, prefix_v4=24)
    tight.record(SRC6, ip("2001:db8::1"), 0.01, now=0)
    assert tight.estimate(SRC6, ip("2001:db8:0:1::1")) is None


def test_inheritance_only_from_the_same_source_and_family() -> None:
    table = LatencyTable()
    table.record(SRC6, ip("2001:db8:2::1"), 0.01, now=0)
    assert table.estimate(ip("2001:db8:1::11"), ip("2001:db8:2::2")) is None
    assert table.estimate(SRC4, ip("192.0.2.1")) is None
    lookup = table.for_source(SRC6)
    assert lookup is not None
    assert lookup(ip("2001:db8:2::2")) is not None
    assert table.for_source(SRC4) is None


def test_lru_eviction_also_updates_prefix_index() -> None:
    table = LatencyTable(max_entries=2)
    a, b, c = ip("2001:db8:1::1"), ip("2001:db8:1::2"), ip("2001:db8:9::1")
    table.record(SRC6, a, 0.100, now=0)
    table.record(SRC6, b, 0.200, now=1)
    table.record(SRC6, a, 0.100, now=2)  # refreshes a: b is now the oldest
    table.record(SRC6, c, 0.300, now=3)
    assert len(table) == 2
    assert table.estimate(SRC6, a) is not None and not table.estimate(SRC6, a).inherited  # type: ignore[union-attr]
    est_b = table.estimate(SRC6, b)
    assert est_b is not None and est_b.inherited and est_b.rtt == pytest.approx(0.100)
    near = table.estimate(SRC6, ip("2001:db8:1::77"))
    assert near is not None and near.destinations == 1 and near.rtt == pytest.approx(0.100)
    table.clear()
    assert len(table) == 0 and table.estimate(SRC6, a) is None


# Reference model: brute force over every stored measurement.
def _reference(
    records: dict[tuple[object, object], list[float | None]],
    alpha: float,
    src: object,
    dst: ipaddress.IPv6Address | ipaddress.IPv4Address,
    min_len: int,
) -> tuple[float | None, int, int] | None:
    def ewma(samples: list[float | None]) -> float | None:
        value = None
        for s in samples:
            if s is not None:
                value = s if value is None else alpha * s + (1 - alpha) * value
        return value

    if (src, dst) in records:
        return ewma(records[(src, dst)]), dst.max_prefixlen, 1
    mine = [d for (s, d) in records if s == src and d.version == dst.version]  # type: ignore[attr-defined]
    if not mine:
        return None
    bits = dst.max_prefixlen
    lengths = {d: bits - (int(d) ^ int(dst)).bit_length() for d in mine}  # type: ignore[call-overload]
    best = max(lengths.values())
    if best < min_len:
        return None
    members = [d for d, n in lengths.items() if n == best]
    values = [v for v in (ewma(records[(src, d)]) for d in members) if v is not None]
    return (sum(values) / len(values) if values else None), best, len(members)


addresses_v6 = st.integers(0, 2**16 - 1).map(
    lambda n: ipaddress.IPv6Address((0x20010DB8 << 96) | ((n & 0xFF00) << 64) | (n & 0xFF))
)
addresses_v4 = st.integers(0, 2**12 - 1).map(lambda n: ipaddress.IPv4Address(0xC6336000 | n))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([SRC6, ip("2001:db8:1::11")]),
            addresses_v6,
            st.none() | st.floats(0.0001, 1.0),
        ),
        max_size=40,
    ),
    st.lists(addresses_v6, min_size=1, max_size=10),
    st.integers(0, 100),
)
def test_trie_matches_brute_force(
    records: list[tuple[ipaddress.IPv6Address, ipaddress.IPv6Address, float | None]],
    queries: list[ipaddress.IPv6Address],
    min_len: int,
) -> None:
    table = LatencyTable(prefix_v6=min_len)
    model: dict[tuple[object, object], list[float | None]] = {}
    for t, (src, dst, rtt) in enumerate(records):
        table.record(src, dst, rtt, now=t)
        model.setdefault((src, dst), []).append(rtt)
    for dst in queries:
        expected = _reference(model, 0.3, SRC6, dst, min_len)
        est = table.estimate(SRC6, dst)
        if expected is None:
            assert est is None
            continue
        assert est is not None
        rtt, length, members = expected
        assert est.rtt == pytest.approx(rtt)
        if est.inherited:
            assert (est.prefix_len, est.destinations) == (length, members)
            assert dst in est.prefix  # type: ignore[operator]


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(addresses_v4, st.floats(0.0001, 1.0)), max_size=60),
    st.integers(1, 8),
    st.lists(addresses_v4, min_size=1, max_size=5),
)
def test_eviction_keeps_trie_consistent(
    records: list[tuple[ipaddress.IPv4Address, float]],
    max_entries: int,
    queries: list[ipaddress.IPv4Address],
) -> None:
    table = LatencyTable(max_entries=max_entries, prefix_v4=0)
    order: list[ipaddress.IPv4Address] = []
    model: dict[tuple[object, object], list[float | None]] = {}
    for t, (dst, rtt) in enumerate(records):
        table.record(SRC4, dst, rtt, now=t)
        model.setdefault((SRC4, dst), []).append(rtt)
        if dst in order:
            order.remove(dst)
        order.append(dst)
        while len(order) > max_entries:
            del model[(SRC4, order.pop(0))]
    assert len(table) == len(order)
    for dst in queries + order:
        expected = _reference(model, 0.3, SRC4, dst, 0)
        est = table.estimate(SRC4, dst)
        assert (est is None) == (expected is None)
        if est is not None and expected is not None:
            assert est.rtt == pytest.approx(expected[0])
            assert est.destinations == expected[2]


def test_snapshot_restore_round_trip_through_json() -> None:
    table = LatencyTable(max_entries=3)
    table.record(SRC6, ip("2001:db8:2::1"), 0.010, now=100)
    table.record(SRC6, ip("2001:db8:2::1"), None, now=101)
    table.record(SRC4, ip("192.0.2.1"), 0.020, now=102)
    table.record(SRC4, ip("192.0.2.2"), 0.030, now=103)
    data = json.loads(json.dumps(table.snapshot(now=110)))
    other = LatencyTable(max_entries=3)
    other.restore(data, now=1000)
    assert len(other) == 3
    est = other.estimate(SRC6, ip("2001:db8:2::1"))
    assert est is not None
    assert (est.rtt, est.loss, est.samples, est.updated) == (0.010, 0.5, 1, 991)
    inherited = other.estimate(SRC4, ip("192.0.2.5"))
    assert inherited is not None and inherited.rtt == pytest.approx(0.025)
    # Eviction order survived: the IPv6 entry is the oldest.
    other.record(SRC4, ip("192.0.2.9"), 0.001, now=1001)
    assert other.estimate(SRC6, ip("2001:db8:2::1")) is None


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"kind": "apr_async.latency", "version": 99, "entries": []},
        {"kind": "apr_async.latency", "version": 1},
        {"kind": "apr_async.latency", "version": 1, "entries": [["x"]]},
        {
            "kind": "apr_async.latency",
            "version": 1,
            "entries": [["10.0.0.1", "::1", 0.1, 0.1, 0.1, 1, 0, 1, 0]],
        },
        {
            "kind": "apr_async.latency",
            "version": 1,
            "entries": [["10.0.0.1", "10.0.0.2", -1, 0.1, 0.1, 1, 0, 1, 0]],
        },
        {
            "kind": "apr_async.latency",
            "version": 1,
            "entries": [["10.0.0.1", "10.0.0.2", 0.1, 0.1, 0.1, 1, 0, 1, "old"]],
        },
    ],
)
def test_restore_rejects_malformed_and_keeps_contents(data: dict[str, object]) -> None:
    table = LatencyTable()
    table.record(SRC4, ip("192.0.2.1"), 0.020, now=0)
    with pytest.raises(ValueError):
        table.restore(data, now=1)
    assert len(table) == 1


# --- FailureTable ---------------------------------------------------------------------------


def test_failure_expires_ttl_after_the_last_failure() -> None:
    table = FailureTable(ttl=600)
    dst = ip("192.0.2.1")
    assert not table.failing(SRC4, dst, 443, now=0)
    table.record_failure(SRC4, dst, 443, now=0, error="ECONNREFUSED")
    table.record_failure(SRC4, dst, 443, now=500, error="ETIMEDOUT")
    assert table.failing(SRC4, dst, 443, now=1000)  # 600 s after the first, 500 after the last
    failure = table.failure(SRC4, dst, 443, now=1000)
    assert failure is not None
    assert (failure.last, failure.count, failure.error) == (500, 2, "ETIMEDOUT")
    assert not table.failing(SRC4, dst, 80, now=1000)
    assert not table.failing(SRC4, ip("192.0.2.2"), 443, now=1000)
    assert not table.failing(SRC4, dst, 443, now=1100)
    assert len(table) == 0
    # After expiry the count starts again.
    table.record_failure(SRC4, dst, 443, now=2000)
    table.record_failure(SRC4, dst, 443, now=2700)
    assert table.failure(SRC4, dst, 443, now=2700).count == 1  # type: ignore[union-attr]


def test_success_clears_and_clear_drops_everything() -> None:
    table = FailureTable()
    dst = ip("2001:db8::1")
    table.record_failure(SRC6, dst, 443, now=0)
    table.record_failure(SRC6, dst, 80, now=0)
    table.record_success(SRC6, dst, 443)
    assert not table.failing(SRC6, dst, 443, now=1)
    assert table.failing(SRC6, dst, 80, now=1)
    table.clear()
    assert len(table) == 0


def test_failure_table_is_bounded_and_prunes() -> None:
    table = FailureTable(ttl=10, max_entries=3)
    for port in range(5):
        table.record_failure(SRC4, ip("192.0.2.1"), port, now=port)
    assert len(table) == 3
    assert not table.failing(SRC4, ip("192.0.2.1"), 0, now=5)
    assert table.failing(SRC4, ip("192.0.2.1"), 4, now=5)
    assert table.prune(now=12.5) == 1  # port 2 failed at t=2
    assert len(table) == 2


def test_failure_table_validates() -> None:
    with pytest.raises(ValueError):
        FailureTable(ttl=0)
    with pytest.raises(ValueError):
        FailureTable(max_entries=0)
    table = FailureTable()
    with pytest.raises(ValueError):
        table.record_failure(SRC4, ip("192.0.2.1"), 70000, now=0)
    with pytest.raises(TypeError):
        table.record_failure(SRC4, "192.0.2.1", 80, now=0)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        table.record_failure(SRC4, ip("192.0.2.1"), 80, now=0, error=111)  # type: ignore[arg-type]
    assert len(table) == 0


def test_failure_snapshot_round_trip_and_expiry() -> None:
    table = FailureTable(ttl=600)
    table.record_failure(SRC4, ip("192.0.2.1"), 443, now=1000, error="EHOSTUNREACH")
    table.record_failure(SRC6, ip("2001:db8::1"), 443, now=300)  # expired at 1000
    data = json.loads(json.dumps(table.snapshot(now=1000)))
    assert len(data["entries"]) == 1
    other = FailureTable(ttl=600)
    other.restore(data, now=50)
    failure = other.failure(SRC4, ip("192.0.2.1"), 443, now=50)
    assert failure is not None and failure.error == "EHOSTUNREACH" and failure.last == 50
    assert not other.failing(SRC4, ip("192.0.2.1"), 443, now=650)
    with pytest.raises(ValueError):
        other.restore({"kind": "apr_async.failures", "version": 1, "entries": [[1]]}, now=0)
    with pytest.raises(ValueError):
        other.restore({"kind": "nope"}, now=0)


def test_failure_table_version_moves_with_every_change_and_expiry() -> None:
    table = FailureTable(ttl=600)
    dst = ip("192.0.2.1")
    assert table.next_expiry == math.inf
    seen = [table.version]

    def moved() -> bool:
        changed = table.version != seen[-1]
        seen.append(table.version)
        return changed

    table.record_failure(SRC4, dst, 443, now=100)
    assert moved() and table.next_expiry == 700
    table.record_failure(SRC4, dst, 80, now=150)
    assert moved() and table.next_expiry == 700
    table.record_failure(SRC4, dst, 443, now=200)  # refreshed: port 80 is now the earliest
    assert moved() and table.next_expiry == 750
    # Reading, a success for a triple that never failed, and an early prune change nothing.
    assert table.failing(SRC4, dst, 443, now=749) and table.generation(749) == table.version
    table.record_success(SRC4, ip("192.0.2.9"), 443)
    assert table.prune(now=749) == 0
    assert not moved()
    # The generation moves when an entry expires, at exactly next_expiry.
    assert table.generation(750) != seen[-1] and moved()
    assert len(table) == 1 and table.next_expiry == 800
    table.record_success(SRC4, dst, 443)
    assert moved() and len(table) == 0 and table.next_expiry == math.inf
    table.clear()
    assert moved()
    table.restore({"kind": "apr_async.failures", "version": 1, "entries": []}, now=0)
    assert moved()


def test_failure_table_next_expiry_with_a_clock_that_goes_back() -> None:
    table = FailureTable(ttl=10)
    table.record_failure(SRC4, ip("192.0.2.1"), 1, now=50)
    table.record_failure(SRC4, ip("192.0.2.2"), 1, now=20)  # out of order
    table.record_failure(SRC4, ip("192.0.2.3"), 1, now=35)
    assert table.next_expiry == 30
    version = table.generation(29.5)
    assert table.generation(30) != version and len(table) == 2 and table.next_expiry == 45
    assert table.prune(now=60) == 2 and table.next_expiry == math.inf


# Failure times on a coarse grid (ties and exact expiries), going back now and then.
_failure_ops = st.lists(
    st.one_of(
        st.tuples(st.just("fail"), st.integers(0, 3), st.integers(-3, 12).map(lambda t: t / 4)),
        st.tuples(st.just("success"), st.integers(0, 3), st.just(0.0)),
        st.tuples(st.just("prune"), st.just(0), st.integers(-3, 12).map(lambda t: t / 4)),
        st.tuples(st.just("generation"), st.just(0), st.integers(-3, 12).map(lambda t: t / 4)),
        st.tuples(st.just("clear"), st.just(0), st.just(0.0)),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(_failure_ops)
def test_failure_table_version_and_next_expiry_follow_a_model(
    ops: list[tuple[str, int, float]],
) -> None:
    ttl = 1.0
    table = FailureTable(ttl=ttl, max_entries=3)
    model: dict[int, tuple[float, int]] = {}  # port -> (last failure, count), oldest first
    now = 0.0
    dst = ip("2001:db8::1")
    for op, port, dt in ops:
        before, version = dict(model), table.version
        now += dt
        if op == "fail":
            previous = model.pop(port, None)
            count = previous[1] + 1 if previous and now - previous[0] < ttl else 1
            model[port] = (now, count)
            if len(model) > 3:
                del model[next(iter(model))]
            table.record_failure(SRC6, dst, port, now)
        elif op == "success":
            model.pop(port, None)
            table.record_success(SRC6, dst, port)
        elif op == "clear":
            model.clear()
            table.clear()
        else:
            if op == "prune" or any(now - last >= ttl for last, _ in model.values()):
                model = {k: v for k, v in model.items() if now - v[0] < ttl}
            if op == "prune":
                table.prune(now)
            else:
                table.generation(now)
        assert (table.version != version) == (model != before or op == "clear"), op
        assert len(table) == len(model)
        earliest = min((last for last, _ in model.values()), default=math.inf)
        assert table.next_expiry == earliest + ttl
        for key, (last, count) in model.items():
            found = table.failure(SRC6, dst, key, now=last)
            assert found is not None and (found.last, found.count) == (last, count)


# --- record_outcome: one attempt into both tables -----------------------------------------------


def test_record_outcome_feeds_both_tables() -> None:
    latency, failures = LatencyTable(), FailureTable()
    src, dst = ipaddress.ip_address("2001:db8:1::10"), ipaddress.ip_address("2001:db8:2::1")
    # A refusal measured the path and is a failure.
    assert record_outcome(latency, failures, src, dst, 443, ok=False, rtt=0.02,
                          errno=errno.ECONNREFUSED, now=1.0)
    estimate = latency.estimate(src, dst)
    assert estimate is not None and estimate.rtt == pytest.approx(0.02)
    failure = failures.failure(src, dst, 443, now=2.0)
    assert failure is not None and failure.error == "ECONNREFUSED"
    # A silent failure is a loss, under a generic name when there is no errno.
    assert record_outcome(latency, failures, src, dst, 443, ok=False, rtt=None, errno=None,
                          now=3.0)
    estimate = latency.estimate(src, dst)
    assert estimate is not None and estimate.loss > 0
    failure = failures.failure(src, dst, 443, now=3.0)
    assert failure is not None and failure.count == 2 and failure.error == "failed"
    # A success clears the failure and adds its RTT.
    assert record_outcome(latency, failures, src, dst, 443, ok=True, rtt=0.01, errno=None,
                          now=4.0)
    assert not failures.failing(src, dst, 443, now=4.0)
    estimate = latency.estimate(src, dst)
    assert estimate is not None and estimate.samples == 2


@pytest.mark.parametrize(
    ("src", "port", "rtt"),
    [
        ("192.0.2.1", 443, 0.01),  # families differ
        ("2001:db8::1", 0, 0.01),
        ("2001:db8::1", 65536, 0.01),
        ("2001:db8::1", True, 0.01),
        ("2001:db8::1", 443, -0.001),
        ("2001:db8::1", 443, math.nan),
        ("2001:db8::1", 443, math.inf),
        ("2001:db8::1", 443, 3600.0),
        ("2001:db8::1", 443, True),
    ],
)
def test_record_outcome_drops_a_sample_that_cannot_be_right(
    src: str, port: int, rtt: float
) -> None:
    latency, failures = LatencyTable(), FailureTable()
    dst = ipaddress.ip_address("2001:db8::2")
    for ok in (True, False):
        assert not record_outcome(latency, failures, ipaddress.ip_address(src), dst, port,
                                  ok=ok, rtt=rtt, errno=errno.ETIMEDOUT, now=1.0)
    assert len(latency) == 0 and len(failures) == 0
