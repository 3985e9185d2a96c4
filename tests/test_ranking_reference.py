"""The optimised rank_pairs (plan caches, memo, internal lookups) against a plain reference.

The reference orders the pairs of levels 2 and 3 by hand from the public table API
(``FailureTable.failing``, ``LatencyTable.estimate``) on top of the table-free ranking
(levels 1 and 4, checked against RFC 6724 in test_ranking.py), with the doubtful pairs
worked out from the rules in the ranking module's documentation. The reasons are compared
with the slow path: memo off and the plan caches emptied before every call.
"""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from apr_async.core import plan, ranking
from apr_async.core.addresses import IPAddress
from apr_async.core.failures import FailureTable
from apr_async.core.latency import LatencyTable
from apr_async.core.ranking import AddrPair, Translator, rank_pairs
from apr_async.core.rfc6724 import SourceAddress

ip = ipaddress.ip_address
S = SourceAddress

ALWAYS = [
    S(ip("2001:db8:1::10"), ifindex=2, interface="eth0", prefixlen=64),
    S(ip("203.0.113.10"), ifindex=2, interface="eth0", prefixlen=24),
]
OPTIONAL = [
    S(ip("2001:db8:1::11"), ifindex=2, interface="eth0", prefixlen=64),
    S(ip("fd00:1::10"), ifindex=2, interface="eth0", prefixlen=64),  # ULA
    S(ip("192.168.1.10"), ifindex=3, interface="wlan0", prefixlen=24),  # RFC 1918
    S(ip("10.0.0.10"), ifindex=3, interface="wlan0", prefixlen=8),  # RFC 1918
]
DESTS = [
    ip(t)
    for t in (
        "2001:db8:2::1", "2001:db8:2::2", "2001:db8:3::1", "198.51.100.1", "198.51.100.2",
        "198.51.101.7",
    )
]
PRIVATE_V4 = [ipaddress.ip_network(n) for n in ("10.0.0.0/8", "192.168.0.0/16")]


def _doubtful(src: IPAddress, dst: IPAddress, sources: list[IPAddress], seen: set[str]) -> bool:
    """Level 1's "probably cannot": ULA to global IPv6 without NPTv6/NAT66; a private IPv4
    source to a public destination next to a public IPv4 source, without NAT44."""
    if src.version == 6:
        return src in ipaddress.ip_network("fc00::/7") and not seen & {"nptv6", "nat66"}
    private = any(src in net for net in PRIVATE_V4)
    public_source = any(
        s.version == 4 and not any(s in net for net in PRIVATE_V4) for s in sources
    )
    return private and public_source and "nat44" not in seen


def _reference(
    base: list[AddrPair],
    sources: list[IPAddress],
    seen: set[str],
    *,
    latency: LatencyTable,
    failures: FailureTable,
    now: float,
    bias_ms: float,
) -> list[tuple[object, ...]]:
    rows = []
    for index, pair in enumerate(base):
        src, dst = ip(pair.source[0]), ip(pair.destination[0])
        failing = failures.failing(src, dst, 443, now)
        estimate = latency.estimate(src, dst)
        rtt = None if estimate is None else estimate.rtt
        doubt = _doubtful(src, dst, sources, seen)
        if rtt is None:
            key: tuple[object, ...] = (doubt, failing, 1, 0.0, 0, index)
        else:
            effective = rtt * 1000.0 - bias_ms if dst.version == 6 else rtt * 1000.0
            key = (doubt, failing, 0, effective, 0 if dst.version == 6 else 1, index)
        rows.append((key, (tuple(pair), rtt, failing)))
    return [row for _, row in sorted(rows, key=lambda r: r[0])]


def _seen(pairs: list[AddrPair]) -> list[tuple[object, ...]]:
    return [(tuple(p), p.rtt, p.failing) for p in pairs]


PAIRS = [(s, d) for s in [*ALWAYS, *OPTIONAL] for d in DESTS if s.address.version == d.version]
ops = st.lists(
    st.one_of(
        st.tuples(st.just("rtt"), st.integers(0, len(PAIRS) - 1), st.integers(0, 30)),
        st.tuples(st.just("loss"), st.integers(0, len(PAIRS) - 1), st.just(0)),
        st.tuples(st.just("fail"), st.integers(0, len(PAIRS) - 1), st.integers(0, 3)),
        st.tuples(st.just("success"), st.integers(0, len(PAIRS) - 1), st.just(0)),
        st.tuples(st.just("time"), st.just(0), st.integers(0, 4)),
    ),
    max_size=30,
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from(OPTIONAL), unique=True),
    st.sets(st.sampled_from([t.value for t in Translator])),
    st.sampled_from([0.0, 5.0, 12.5]),
    st.integers(1, 4),
    ops,
)
def test_optimised_ranking_equals_the_plain_reference(
    optional: list[SourceAddress],
    seen: set[str],
    bias: float,
    prefix: int,
    ops: list[tuple[str, int, int]],
) -> None:
    sources = [*ALWAYS, *optional]
    addresses = [s.address for s in sources]
    d = [(dst, None) for dst in DESTS]
    latency = LatencyTable(prefix_v6=prefix * 16, prefix_v4=prefix * 8)
    failures = FailureTable(ttl=6)
    now = 0.0
    for op, index, value in [*ops, ("time", 0, 0)]:
        src, dst = PAIRS[index]
        if op == "rtt":
            latency.record(src.address, dst, value / 1000, now)
        elif op == "loss":
            latency.record(src.address, dst, None, now)
        elif op == "fail":
            now += value
            failures.record_failure(src.address, dst, 443, now, error="ECONNREFUSED")
        elif op == "success":
            failures.record_success(src.address, dst, 443)
        else:
            now += value

        def ranked(now: float = now) -> list[AddrPair]:
            return rank_pairs(
                d, sources, 443, latency=latency, failures=failures, now=now,
                ipv6_bias_ms=bias, translators_seen=frozenset(seen),
            )

        base = rank_pairs(d, sources, 443, translators_seen=frozenset(seen))
        for _ in range(2):  # the second call is the one that hits the memo
            fast = ranked()
            expected = _reference(
                base, addresses, seen, latency=latency, failures=failures, now=now, bias_ms=bias
            )
            assert _seen(fast) == expected, op
        plan._PLANS.clear()
        plan._PLANS_BY_VALUE.clear()
        ranking._MEMOISE = False
        try:
            slow = ranked()
        finally:
            ranking._MEMOISE = True
        assert [(tuple(p), p.reason, p.rtt, p.failing) for p in fast] == [
            (tuple(p), p.reason, p.rtt, p.failing) for p in slow
        ]


def test_kernel_choices_rank_as_the_plain_mapping() -> None:
    from apr_async.core.plan_cache import KernelChoices

    d = tuple((dst, None) for dst in DESTS)
    kernel = {DESTS[0]: OPTIONAL[0].address, DESTS[3]: ip("203.0.113.10")}
    choices = KernelChoices(d, kernel)
    assert dict(choices) == kernel and len(choices) == 2 and choices[DESTS[0]] == kernel[DESTS[0]]
    sources = [*ALWAYS, *OPTIONAL]
    plain = rank_pairs(list(d), sources, 443, kernel_sources=kernel)
    for given_dests in (d, list(d), d[::-1]):  # its own tuple, or another sequence
        plan._PLANS.clear()
        plan._PLANS_BY_VALUE.clear()
        expected = rank_pairs(list(given_dests), sources, 443, kernel_sources=kernel)
        got = rank_pairs(given_dests, sources, 443, kernel_sources=choices)
        assert [(tuple(p), p.reason) for p in got] == [(tuple(p), p.reason) for p in expected]
    assert rank_pairs(d, sources, 443, kernel_sources=KernelChoices(d, {})) == rank_pairs(
        d, sources, 443
    )
    assert plain[0].source[0] == OPTIONAL[0].address.compressed
