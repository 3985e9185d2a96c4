"""rank_pairs: the four precedence levels, pair shapes, reasons, and properties."""

from __future__ import annotations

import ipaddress
import math
import pickle
import re
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apr_async.core import plan, ranking, reasons
from apr_async.core.addresses import kind_of
from apr_async.core.failures import FailureTable
from apr_async.core.latency import LatencyTable
from apr_async.core.ranking import AddrPair, Translator, rank_pairs
from apr_async.core.rfc6724 import DESTINATION_RULES, SOURCE_RULES, SourceAddress, sort_destinations

ip = ipaddress.ip_address
S = SourceAddress

GUA = S("2001:db8:1::10", ifindex=2, interface="eth0", prefixlen=64)
ULA = S("fd00:1::10", ifindex=2, interface="eth0", prefixlen=64)
LL = S("fe80::10", ifindex=2, interface="eth0", prefixlen=64)
LL3 = S("fe80::30", ifindex=3, interface="wlan0", prefixlen=64)
LO6 = S("::1", ifindex=1, interface="lo", prefixlen=128)
V4 = S("192.168.1.10", ifindex=2, interface="eth0", prefixlen=24)
V4B = S("10.0.0.10", ifindex=3, interface="wlan0", prefixlen=8)
LO4 = S("127.0.0.1", ifindex=1, interface="lo", prefixlen=8)
APIPA = S("169.254.7.7", ifindex=2, interface="eth0", prefixlen=16)
ALL = [GUA, ULA, LL, LL3, LO6, V4, V4B, LO4]

D6 = [ip("2001:db8:2::1"), ip("2001:db8:3::1")]
D4 = [ip("198.51.100.1"), ip("198.51.100.2")]


def dests(*addresses: ipaddress.IPv4Address | ipaddress.IPv6Address | str) -> list[tuple]:
    return [(ip(a) if isinstance(a, str) else a, None) for a in addresses]


def simple(pairs: list[AddrPair]) -> list[tuple[str, str]]:
    return [(p.source[0], p.destination[0]) for p in pairs]


# --- AddrPair ---------------------------------------------------------------------------------


def test_addr_pair_is_a_three_field_named_tuple_with_extras() -> None:
    pair = AddrPair(
        socket.AF_INET6,
        ("2001:db8::1", 0, 0, 0),
        ("2001:db8::2", 443, 0, 0),
        reason="because",
        rtt=0.01,
        failing=True,
    )
    af, sa, da = pair
    assert (af, sa, da) == (socket.AF_INET6, ("2001:db8::1", 0, 0, 0), ("2001:db8::2", 443, 0, 0))
    assert len(pair) == 3
    assert pair == (af, sa, da)
    assert hash(pair) == hash((af, sa, da))
    assert pair == AddrPair(af, sa, da, reason="other")  # extras are not compared
    assert (pair.family, pair.source, pair.destination) == (af, sa, da)
    assert (pair.reason, pair.rtt, pair.failing) == ("because", 0.01, True)
    with pytest.raises(AttributeError):
        pair.reason = "no"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        pair.extra = 1  # type: ignore[attr-defined]
    copy = pickle.loads(pickle.dumps(pair))
    assert copy == pair and copy.reason == "because" and copy.rtt == 0.01 and copy.failing
    assert pair._replace(family=socket.AF_INET).reason == ""  # a new pair, no extras
    assert "AddrPair(family=" in repr(pair)


# --- shapes -----------------------------------------------------------------------------------


def test_pairs_are_ready_for_bind_and_connect() -> None:
    pairs = rank_pairs(dests(D6[0], D4[0]), [GUA, V4], 443)
    assert pairs == [
        (socket.AF_INET6, ("2001:db8:1::10", 0, 0, 0), ("2001:db8:2::1", 443, 0, 0)),
        (socket.AF_INET, ("192.168.1.10", 0), ("198.51.100.1", 443)),
    ]
    for pair in pairs:
        assert pair.reason and pair.rtt is None and not pair.failing


def test_link_local_destination_with_zone_uses_that_interface() -> None:
    pairs = rank_pairs([(ip("fe80::1"), 3)], ALL, 80)
    assert pairs == [(socket.AF_INET6, ("fe80::30", 0, 0, 3), ("fe80::1", 80, 0, 3))]
    # Unknown interface for that zone: no source on it, no pair.
    assert rank_pairs([(ip("fe80::1"), 9)], ALL, 80) == []


def test_link_local_destination_without_zone_tries_each_interface() -> None:
    pairs = rank_pairs(dests("fe80::1"), ALL, 80)
    assert sorted(tuple(p) for p in pairs) == [
        (socket.AF_INET6, ("fe80::10", 0, 0, 2), ("fe80::1", 80, 0, 2)),
        (socket.AF_INET6, ("fe80::30", 0, 0, 3), ("fe80::1", 80, 0, 3)),
    ]
    # A link-local source without an interface index cannot scope the destination.
    assert rank_pairs(dests("fe80::1"), [S("fe80::5")], 80) == []
    # With a zone, a source whose index is unknown is taken on trust and the zone is used.
    assert rank_pairs([(ip("fe80::1"), 4)], [S("fe80::5")], 80) == [
        (socket.AF_INET6, ("fe80::5", 0, 0, 0), ("fe80::1", 80, 0, 4))
    ]


def test_zone_is_ignored_for_global_destinations_and_duplicates_dropped() -> None:
    pairs = rank_pairs([(D6[0], 5), (D6[0], None), (D6[0], 5)], [GUA], 80)
    assert pairs == [(socket.AF_INET6, ("2001:db8:1::10", 0, 0, 0), ("2001:db8:2::1", 80, 0, 0))]


def test_ipv4_mapped_destination_becomes_ipv4() -> None:
    pairs = rank_pairs(dests("::ffff:198.51.100.1"), [GUA, V4], 80)
    assert pairs == [(socket.AF_INET, ("192.168.1.10", 0), ("198.51.100.1", 80))]


# --- level 1: reachability --------------------------------------------------------------------


def test_family_without_usable_source_yields_no_pair() -> None:
    # IPv4-only host (with the ever-present link-local IPv6): no IPv6 pair at all.
    pairs = rank_pairs(dests(*D6, *D4), [LL, V4, LO4], 443)
    assert {p.family for p in pairs} == {socket.AF_INET}
    assert simple(pairs) == [("192.168.1.10", "198.51.100.1"), ("192.168.1.10", "198.51.100.2")]
    # IPv6-only host.
    pairs = rank_pairs(dests(*D4, *D6), [GUA, LL, LO6], 443)
    assert {p.family for p in pairs} == {socket.AF_INET6}
    assert rank_pairs(dests(*D6), [], 443) == []


def test_scope_mismatches_are_dropped() -> None:
    assert rank_pairs(dests("198.51.100.1"), [APIPA, LO4], 80) == []
    assert rank_pairs(dests("2001:db8::1"), [LL, LO6, S("fec0::1")], 80) == []
    # ... but 169.254/16 reaches a link-local IPv4 neighbour, and so does a routable source.
    pairs = rank_pairs(dests("169.254.1.1"), [APIPA, V4], 80)
    assert simple(pairs) == [("169.254.7.7", "169.254.1.1"), ("192.168.1.10", "169.254.1.1")]


def test_ula_source_to_gua_goes_last_unless_a_translator_was_seen() -> None:
    pairs = rank_pairs(dests(*D6, *D4), [ULA, V4], 443)
    assert simple(pairs) == [
        ("192.168.1.10", "198.51.100.1"),
        ("192.168.1.10", "198.51.100.2"),
        ("fd00:1::10", "2001:db8:2::1"),
        ("fd00:1::10", "2001:db8:3::1"),
    ]
    assert pairs[2].reason.startswith("ULA -> GUA: last: needs NPTv6/NAT66, none seen; ")
    for translator in (Translator.NPTV6, "nat66"):
        pairs = rank_pairs(dests(*D6, *D4), [ULA, V4], 443, translators_seen={translator})
        assert simple(pairs)[0] == ("192.168.1.10", "198.51.100.1")  # RFC 6724 rule 5 label
        assert "last:" not in pairs[2].reason
    pairs = rank_pairs(dests(*D6, *D4), [ULA, V4], 443, translators_seen={Translator.NAT64})
    assert "last: needs NPTv6/NAT66" in pairs[2].reason
    # The GUA source comes first whatever the kernel would have picked.
    pairs = rank_pairs(dests(D6[0]), [ULA, GUA], 443, kernel_sources={D6[0]: ULA.address})
    assert simple(pairs) == [("2001:db8:1::10", "2001:db8:2::1"), ("fd00:1::10", "2001:db8:2::1")]


PUB4 = S("203.0.113.194", ifindex=2, interface="eth0", prefixlen=24)
CGN4 = S("100.64.3.4", ifindex=3, interface="wwan0", prefixlen=10)


def test_private_ipv4_source_next_to_a_public_one_goes_last_unless_nat44_was_seen() -> None:
    # A routed host (public IPv4 source) with a private one too: without a NAT44 seen, the
    # private source's packets probably leave untranslated and die, like a ULA's without NPTv6.
    for private in (V4, V4B, CGN4):
        pairs = rank_pairs(dests(*D4), [private, PUB4], 443)
        assert simple(pairs) == [
            ("203.0.113.194", "198.51.100.1"),
            ("203.0.113.194", "198.51.100.2"),
            (private.text, "198.51.100.1"),
            (private.text, "198.51.100.2"),
        ]
        head = f"{private.kind} -> public IPv4: last: needs NAT44, none seen; "
        assert pairs[2].reason.startswith(head), pairs[2].reason
        assert "last:" not in pairs[0].reason
    # A NAT44 seen: the private source is an ordinary alternative again (RFC 6724 order).
    pairs = rank_pairs(dests(*D4), [V4, PUB4], 443, translators_seen={Translator.NAT44})
    assert "last:" not in " ".join(p.reason for p in pairs)
    # (192.168.1.10 shares 5 leading bits with 198.51.100.1, 203.0.113.194 only 4: rule 8.)
    assert simple(pairs)[0] == ("192.168.1.10", "198.51.100.1")
    # Other translators do not make a private IPv4 source work.
    pairs = rank_pairs(dests(*D4), [V4, PUB4], 443, translators_seen={Translator.NPTV6})
    assert "last: needs NAT44" in pairs[2].reason
    # Private destinations stay reachable from the private source (same site).
    pairs = rank_pairs(dests("10.9.9.9"), [V4B, PUB4], 443)
    assert all("last:" not in p.reason for p in pairs)


def test_only_private_ipv4_sources_are_the_usual_nat44_home() -> None:
    # No public source to compare with: NAT44 is the normal case, nothing is doubtful, and the
    # pairs are exactly the ones (and in the order) they were before private sources had doubts.
    for sources in ([V4], [V4, V4B], [CGN4], [V4, GUA]):
        pairs = rank_pairs(dests(*D4), sources, 443)
        assert pairs and all("last:" not in p.reason for p in pairs), pairs
        assert [p.reason for p in pairs] == [
            p.reason for p in rank_pairs(dests(*D4), sources, 443, translators_seen={"nat44"})
        ]


def test_ula_source_reaches_ula_and_nat64_destinations() -> None:
    pairs = rank_pairs(dests("fd00:2::1", "64:ff9b::c633:6401"), [ULA], 443)
    assert len(pairs) == 2
    assert all("last:" not in p.reason for p in pairs)


def test_loopback_destination_prefers_loopback_source() -> None:
    pairs = rank_pairs(dests("::1", "127.0.0.1"), ALL, 8080)
    assert simple(pairs) == [("::1", "::1"), ("127.0.0.1", "127.0.0.1")]
    # Without a loopback source, the others are kept, last.
    pairs = rank_pairs(dests("::1", "198.51.100.1"), [GUA, V4], 8080)
    assert simple(pairs) == [("192.168.1.10", "198.51.100.1"), ("2001:db8:1::10", "::1")]
    assert pairs[1].reason.startswith("GUA -> loopback: last: not a loopback source; ")
    # A loopback source never goes anywhere else.
    assert all(p.source[0] not in ("::1", "127.0.0.1") for p in rank_pairs(dests(*D6, *D4), ALL, 1))


# --- level 2: failures ------------------------------------------------------------------------


def test_failing_pairs_move_after_the_others_until_they_expire() -> None:
    failures = FailureTable(ttl=600)
    failures.record_failure(GUA.address, D6[0], 443, now=100, error="ECONNREFUSED")
    pairs = rank_pairs(dests(*D6, *D4), [GUA, V4], 443, failures=failures, now=112)
    assert simple(pairs) == [
        ("2001:db8:1::10", "2001:db8:3::1"),
        ("192.168.1.10", "198.51.100.1"),
        ("192.168.1.10", "198.51.100.2"),
        ("2001:db8:1::10", "2001:db8:2::1"),
    ]
    last = pairs[-1]
    assert last.failing and not pairs[0].failing
    assert last.reason == (
        "GUA -> GUA: after the others: failed 12 s ago (ECONNREFUSED); no RTT yet; "
        "RFC 6724: before 2001:db8:3::1 (destination rule 10, input order), only usable source"
    )
    # Other ports are not affected, and the entry expires 600 s after the failure.
    assert simple(rank_pairs(dests(*D6), [GUA], 80, failures=failures, now=112))[0][1] == str(D6[0])
    later = rank_pairs(dests(*D6, *D4), [GUA, V4], 443, failures=failures, now=700)
    assert simple(later)[0] == ("2001:db8:1::10", "2001:db8:2::1")
    assert not any(p.failing for p in later)


def test_failing_usable_pair_still_before_doubtful_pairs() -> None:
    failures = FailureTable()
    failures.record_failure(V4.address, D4[0], 443, now=0)
    pairs = rank_pairs(dests(D6[0], D4[0]), [ULA, V4], 443, failures=failures, now=1)
    assert simple(pairs) == [("192.168.1.10", "198.51.100.1"), ("fd00:1::10", "2001:db8:2::1")]
    assert pairs[0].failing


def test_ranking_with_a_recent_failure_is_memoised_and_says_the_age_now() -> None:
    latency, failures = LatencyTable(), FailureTable(ttl=600)
    d = dests(*D6, *D4)
    for dst in (*D6, *D4):
        latency.record(GUA.address if dst.version == 6 else V4.address, dst, 0.010, now=0)
    failures.record_failure(GUA.address, D6[0], 443, now=100, error="ECONNREFUSED")
    first = rank_pairs(d, [GUA, V4], 443, latency=latency, failures=failures, now=110)
    again = rank_pairs(d, [GUA, V4], 443, latency=latency, failures=failures, now=160)
    assert again == first and again[0] is first[0]  # the same pair objects: a memo hit
    assert first[-1].failing and "failed 10 s ago (ECONNREFUSED)" in first[-1].reason
    assert again[-1].failing and "failed 60 s ago (ECONNREFUSED)" in again[-1].reason
    # A change of either table, or the failure's expiry, is seen at once.
    failures.record_failure(V4.address, D4[0], 443, now=170)
    moved = rank_pairs(d, [GUA, V4], 443, latency=latency, failures=failures, now=170)
    assert [p.failing for p in moved] == [False, False, True, True]
    latency.record(GUA.address, D6[1], 0.050, now=170)
    slower = rank_pairs(d, [GUA, V4], 443, latency=latency, failures=failures, now=170)
    assert simple(slower)[0] == ("192.168.1.10", "198.51.100.2")
    before = rank_pairs(d, [GUA, V4], 443, latency=latency, failures=failures, now=699.5)
    assert [p.failing for p in before] == [False, False, True, True]
    expired = rank_pairs(d, [GUA, V4], 443, latency=latency, failures=failures, now=700)
    assert [p.failing for p in expired] == [False, False, False, True]
    assert simple(expired)[0] == (str(GUA.address), str(D6[0]))  # IPv6 ahead, as fast
    # An emptied failure table is no table: the memo holds (it was missed on every call).
    failures.record_success(V4.address, D4[0], 443)
    empty = rank_pairs(d, [GUA, V4], 443, latency=latency, failures=failures, now=710)
    assert not any(p.failing for p in empty)
    assert rank_pairs(d, [GUA, V4], 443, latency=latency, failures=failures, now=720)[0] is empty[0]


# --- level 3: latency -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("v6_ms", "v6_first"), [(4.9, True), (5.0, True), (5.1, False), (-3.0, True), (30.0, False)]
)
def test_ipv6_bias(v6_ms: float, v6_first: bool) -> None:
    latency = LatencyTable()
    latency.record(V4.address, D4[0], 0.010, now=0)
    latency.record(GUA.address, D6[0], 0.010 + v6_ms / 1000, now=0)
    pairs = rank_pairs(dests(D6[0], D4[0]), [GUA, V4], 443, latency=latency)
    assert (pairs[0].family == socket.AF_INET6) is v6_first
    assert pairs[0].rtt is not None and pairs[1].rtt is not None
    v6 = next(p for p in pairs if p.family == socket.AF_INET6)
    if 0 < v6_ms <= 5:
        assert v6.reason.endswith(", IPv6 preferred: within the 5 ms bias")
    if v6_ms > 5:
        assert v6.reason.endswith(f", IPv6 {v6_ms:.1f} ms slower than IPv4, beyond the 5 ms bias")
    if v6_ms < 0:
        assert v6.reason.endswith(", faster than IPv4")


def test_bias_is_configurable() -> None:
    latency = LatencyTable()
    latency.record(V4.address, D4[0], 0.010, now=0)
    latency.record(GUA.address, D6[0], 0.012, now=0)
    pairs = rank_pairs(dests(D6[0], D4[0]), [GUA, V4], 443, latency=latency, ipv6_bias_ms=0)
    assert pairs[0].family == socket.AF_INET
    assert pairs[0].reason == (
        "RFC 1918 -> public IPv4: RTT 10.0 ms (1 sample), "
        "ahead of IPv6: IPv6 2.0 ms slower, beyond the 0 ms bias"
    )
    assert pairs[1].reason == "GUA -> GUA: RTT 12.0 ms (1 sample), IPv6 2.0 ms slower than IPv4, " \
        "beyond the 0 ms bias"


def test_measured_pairs_come_first_fastest_first() -> None:
    latency = LatencyTable()
    latency.record(V4.address, D4[1], 0.030, now=0)
    latency.record(V4B.address, D4[0], 0.020, now=0)
    pairs = rank_pairs(dests(*D4), [V4, V4B], 443, latency=latency)
    assert simple(pairs) == [
        ("10.0.0.10", "198.51.100.1"),  # 20 ms
        ("10.0.0.10", "198.51.100.2"),  # 20 ms inherited (same /20)
        ("192.168.1.10", "198.51.100.1"),  # 30 ms inherited
        ("192.168.1.10", "198.51.100.2"),  # 30 ms
    ]
    assert pairs[0].reason == "RFC 1918 -> public IPv4: RTT 20.0 ms (1 sample)"
    assert pairs[1].reason == (
        "RFC 1918 -> public IPv4: RTT 20.0 ms inherited from 198.51.100.0/30 (1 destination)"
    )
    assert pairs[1].rtt == pytest.approx(0.020)


def test_unmeasured_pairs_follow_measured_ones_in_rfc_order() -> None:
    latency = LatencyTable()
    latency.record(V4.address, D4[1], 0.300, now=0)
    pairs = rank_pairs(dests(*D6, D4[1]), [GUA, V4], 443, latency=latency)
    assert simple(pairs) == [
        ("192.168.1.10", "198.51.100.2"),
        ("2001:db8:1::10", "2001:db8:2::1"),
        ("2001:db8:1::10", "2001:db8:3::1"),
    ]
    assert pairs[1].rtt is None
    assert pairs[1].reason.startswith("GUA -> GUA: no RTT yet; RFC 6724: ")


def test_all_probes_lost_counts_as_unmeasured() -> None:
    latency = LatencyTable()
    latency.record(V4.address, D4[0], None, now=0)
    latency.record(GUA.address, D6[0], 0.5, now=0)
    pairs = rank_pairs(dests(D4[0], D6[0]), [GUA, V4], 443, latency=latency)
    assert simple(pairs)[0] == ("2001:db8:1::10", "2001:db8:2::1")
    assert pairs[1].reason.startswith(
        "RFC 1918 -> public IPv4: no RTT: 100% probe loss; RFC 6724: "
    )


def test_results_follow_table_changes() -> None:
    latency = LatencyTable()
    d = dests(D6[0], D4[0])
    assert rank_pairs(d, [GUA, V4], 443, latency=latency)[0].family == socket.AF_INET6
    latency.record(V4.address, D4[0], 0.010, now=0)
    latency.record(GUA.address, D6[0], 0.050, now=0)
    assert rank_pairs(d, [GUA, V4], 443, latency=latency)[0].family == socket.AF_INET
    for t in range(10):  # the EWMA falls from 50 ms to about 2 ms
        latency.record(GUA.address, D6[0], 0.001, now=1 + t)
    assert rank_pairs(d, [GUA, V4], 443, latency=latency)[0].family == socket.AF_INET6
    latency.clear()
    pairs = rank_pairs(d, [GUA, V4], 443, latency=latency)
    assert pairs[0].family == socket.AF_INET6 and pairs[0].rtt is None


# --- level 4: RFC 6724 ------------------------------------------------------------------------


def test_rfc_order_without_measurements_matches_sort_destinations() -> None:
    destinations = [ip("198.51.100.1"), ip("2002:c633:6401::1"), ip("2001:db8:2::1")]
    sources = [GUA, V4, S("2002:c633:6401::2")]
    expected = [str(d) for d, _ in sort_destinations(destinations, sources)]
    pairs = rank_pairs(dests(*destinations), sources, 443)
    order = list(dict.fromkeys(p.destination[0] for p in pairs))
    assert order == expected
    assert "(destination rule 6, higher precedence)" in pairs[-1].reason


def test_rfc_source_first_then_other_sources() -> None:
    near = S("2001:db8:2::99", prefixlen=64)
    pairs = rank_pairs(dests(D6[0]), [GUA, near], 443)
    assert simple(pairs) == [
        ("2001:db8:2::99", "2001:db8:2::1"),
        ("2001:db8:1::10", "2001:db8:2::1"),
    ]
    assert pairs[0].reason.endswith(
        "source over 2001:db8:1::10 (source rule 8, longest matching prefix)"
    )
    assert pairs[1].reason.endswith(
        "alternative to 2001:db8:2::99 (source rule 8, longest matching prefix)"
    )


def test_kernel_choice_breaks_ties_between_equal_sources() -> None:
    a = S("2001:db8:1::10", prefixlen=64)
    b = S("2001:db8:1::20", prefixlen=64)
    d = dests("2001:db8:9::1")
    assert simple(rank_pairs(d, [a, b], 443))[0][0] == "2001:db8:1::10"
    pairs = rank_pairs(d, [a, b], 443, kernel_sources={d[0][0]: b.address})
    assert simple(pairs)[0][0] == "2001:db8:1::20"
    assert pairs[0].reason.endswith("source over 2001:db8:1::10 (kernel's choice, RFC 6724 tie)")
    assert pairs[1].reason.endswith(
        "alternative to 2001:db8:1::20 (kernel's choice, RFC 6724 tie)"
    )
    assert rank_pairs(d, [a, b], 443)[0].reason.endswith(
        "source over 2001:db8:1::20 (input order, RFC 6724 tie)"
    )
    # The kernel cannot override a real RFC 6724 preference (rule 3, deprecated).
    old = S("2001:db8:1::30", prefixlen=64, deprecated=True)
    pairs = rank_pairs(d, [a, old], 443, kernel_sources={d[0][0]: old.address})
    assert simple(pairs)[0][0] == "2001:db8:1::10"


def test_kernel_outgoing_interface_drives_source_rule_5() -> None:
    a = S("2001:db8:1::10", ifindex=2, prefixlen=64)
    b = S("2001:db8:2::10", ifindex=3, prefixlen=64)
    d = dests("2001:db8:1::1")
    assert simple(rank_pairs(d, [a, b], 443))[0][0] == "2001:db8:1::10"  # rule 8
    other_b = S("2001:db8:2::11", ifindex=3, prefixlen=64)
    pairs = rank_pairs(d, [a, b, other_b], 443, kernel_sources={d[0][0]: other_b})
    assert simple(pairs)[0][0] == "2001:db8:2::11"
    assert simple(pairs)[1][0] == "2001:db8:2::10"  # also on the outgoing interface


def test_mobility_flags_use_pairwise_rule_4() -> None:
    home = S("2001:db8:3::1", home=True)
    coa = S("2001:db8:1::2", care_of=True)
    pairs = rank_pairs(
        dests("2001:db8:1::1", "fe80::1"), [coa, home, S("fe80::2", ifindex=2, care_of=True)], 80
    )
    assert simple(pairs)[0] == ("2001:db8:3::1", "2001:db8:1::1")
    assert "(source rule 4, prefer home addresses)" in pairs[0].reason


# --- input checks -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "kwargs", "error"),
    [
        ((dests("10.0.0.1"), [V4], True), {}, TypeError),
        ((dests("10.0.0.1"), [V4], "443"), {}, TypeError),
        ((dests("10.0.0.1"), [V4], -1), {}, ValueError),
        ((dests("10.0.0.1"), [V4], 65536), {}, ValueError),
        (([("10.0.0.1", None)], [V4], 80), {}, TypeError),
        (([ip("10.0.0.1")], [V4], 80), {}, TypeError),
        (([[ip("10.0.0.1"), None]], [V4], 80), {}, TypeError),
        (([(ip("fe80::1"), -2)], [LL], 80), {}, ValueError),
        (([(ip("fe80::1"), "eth0")], [LL], 80), {}, ValueError),
        (([(ipaddress.IPv6Address("fe80::1%eth0"), None)], [LL], 80), {}, ValueError),
        ((dests("10.0.0.1"), ["192.168.1.10"], 80), {}, TypeError),
        ((dests("10.0.0.1"), [V4], 80), {"ipv6_bias_ms": math.nan}, ValueError),
        ((dests("10.0.0.1"), [V4], 80), {"ipv6_bias_ms": "5"}, TypeError),
        ((dests("10.0.0.1"), [V4], 80), {"now": math.inf}, ValueError),
        ((dests("10.0.0.1"), [V4], 80), {"policy": "default"}, TypeError),
        ((dests("10.0.0.1"), [V4], 80), {"kernel_sources": {ip("10.0.0.1"): "x"}}, TypeError),
        ((dests("10.0.0.1"), [V4], 80), {"skip_rule9_prefixes": ["2001:db8::/32"]}, TypeError),
    ],
)
def test_bad_input_raises_clear_errors(
    args: tuple[object, ...], kwargs: dict[str, object], error: type
) -> None:
    with pytest.raises(error):
        rank_pairs(*args, **kwargs)  # type: ignore[arg-type]


def test_cache_gives_the_same_answer_for_equal_inputs() -> None:
    first = rank_pairs(dests(*D6, *D4), ALL, 443)
    again = rank_pairs(dests(*D6, *D4), ALL, 443)  # the same objects: cached plan
    fresh = rank_pairs(
        dests(*(ip(str(a)) for a in [*D6, *D4])),
        [S(str(s), ifindex=s.ifindex, interface=s.interface, prefixlen=s.prefixlen) for s in ALL],
        443,
    )
    assert first == again == fresh
    assert [p.reason for p in first] == [p.reason for p in fresh]
    assert rank_pairs(dests(*D6, *D4), ALL, 444)[0].destination[1] == 444


def test_identity_cache_never_serves_a_plan_to_new_objects() -> None:
    # A fresh source each round, dropped right after: CPython hands its memory, hence its
    # id, to the next round's source. Only the anchors kept next to each cached plan stop a
    # later round from getting an earlier round's plan. The value-keyed cache also holds
    # sources, but it is bounded and cleared on its own schedule: emptied here each round so
    # that nothing else keeps them alive.
    dst = D4[0]
    for i in range(300):
        plan._PLANS_BY_VALUE.clear()
        src = S(f"10.{i // 250}.{i % 250}.1", prefixlen=8)
        pairs = rank_pairs([(dst, None)], [src], 443)
        assert pairs == [(socket.AF_INET, (str(src), 0), (str(dst), 443))]
        del src, pairs


def test_identity_cache_tells_a_kernel_choice_from_one_more_source() -> None:
    a = S("2001:db8:1::10", prefixlen=64)
    b = S("2001:db8:1::20", prefixlen=64)
    d = dests("2001:db8:9::1")
    assert simple(rank_pairs(d, [a, b], 443)) == [
        ("2001:db8:1::10", "2001:db8:9::1"),
        ("2001:db8:1::20", "2001:db8:9::1"),
    ]
    # The same objects in the same order, cut differently: b is now the kernel's choice.
    assert simple(rank_pairs(d, [a], 443, kernel_sources={d[0][0]: b})) == [
        ("2001:db8:1::10", "2001:db8:9::1")
    ]


def test_destinations_may_be_any_iterable_once() -> None:
    pairs = rank_pairs(iter(dests(*D6)), iter([GUA]), 443)  # type: ignore[arg-type]
    assert simple(pairs) == [("2001:db8:1::10", str(D6[0])), ("2001:db8:1::10", str(D6[1]))]


# --- properties -------------------------------------------------------------------------------

SOURCE_POOL = [
    *ALL,
    APIPA,
    S("fe80::10", ifindex=3),
    S("2001:db8:1::99", temporary=True),
    S("2001:db8:2::77", deprecated=True),
    PUB4,
    CGN4,
]
DEST_POOL = [
    "2001:db8:1::1",
    "2001:db8:2::1",
    "2001:db8:1:ffff::1",
    "2002:c633:6401::1",
    "fd00:1::1",
    "fd00:9::1",
    "64:ff9b::c633:6401",
    "fe80::1",
    "::1",
    "198.51.100.1",
    "198.51.100.77",
    "192.168.1.1",
    "10.9.9.9",
    "169.254.3.3",
    "127.0.0.1",
    "100.64.0.1",
]

sources_st = st.lists(st.sampled_from(SOURCE_POOL), max_size=6, unique=True)
dests_st = st.lists(
    st.tuples(st.sampled_from(DEST_POOL).map(ip), st.sampled_from([None, None, 2, 3])),
    max_size=8,
)
measure_st = st.lists(
    st.tuples(
        st.sampled_from(SOURCE_POOL), st.sampled_from(DEST_POOL).map(ip), st.floats(0.0005, 0.2)
    ),
    max_size=6,
)
fail_st = st.lists(
    st.tuples(st.sampled_from(SOURCE_POOL), st.sampled_from(DEST_POOL).map(ip)), max_size=4
)


_ADDRESS_TEXT = re.compile(r"[0-9a-f]*[:.][0-9a-f:.]+(/[0-9]+)?")
_RFC_CLAUSE = re.compile(
    r"RFC 6724: (?:only destination|(?:before|after) (?P<other>[0-9a-f:.]+) "
    r"\(destination rule (?P<rule>\d+), (?P<name>[^)]+)\)), "
    r"(?:only usable source|(?:source over|alternative to) (?P<source>[0-9a-f:.]+) "
    r"\((?P<why>[^)]+)\))"
)
_SOURCE_WHYS = {
    *(reasons.source_rule(rule) for rule in SOURCE_RULES),
    reasons.KERNEL_TIE,
    reasons.ORDER_TIE,
}


def check_reason(pair: AddrPair) -> None:
    """One short clause per level that applies, in the order of the levels, none repeated."""
    source, destination = ip(pair.source[0]), ip(pair.destination[0])
    head, _, rest = pair.reason.partition(": ")
    assert head == f"{kind_of(source)} -> {kind_of(destination)}", pair.reason
    clauses = rest.split("; ")
    level = 0
    for clause in clauses:
        if clause.startswith("last: "):
            this = 1
        elif clause.startswith("after the others: failed "):
            this = 2
            assert pair.failing, pair.reason
        elif clause.startswith(("RTT ", "no RTT")):
            this = 3
            assert clause.startswith("no RTT") == (pair.rtt is None), pair.reason
        else:
            # The RFC 6724 clause is made of rule names and addresses only: check its grammar
            # (its length bound below then follows from the vocabulary).
            match = _RFC_CLAUSE.fullmatch(clause)
            assert match, pair.reason
            if match["rule"] is not None:
                assert DESTINATION_RULES[int(match["rule"])] == match["name"], clause
                ip(match["other"])
            if match["why"] is not None:
                assert match["why"] in _SOURCE_WHYS, clause
                assert ip(match["source"]).version == source.version, clause
            this = 4
            assert pair.rtt is None, pair.reason  # latency decided: RFC 6724 did not
        assert this > level, f"clauses out of order or repeated: {pair.reason}"
        level = this
    assert pair.failing == ("after the others: " in pair.reason)
    assert sum(c.startswith(("RTT ", "no RTT")) for c in clauses) == 1, pair.reason
    # Each clause is read at a glance: besides the addresses it names, no longer than the
    # longest RFC 6724 clause (destination rule 1 and "alternative to" with source rule 3 or
    # 7: 128 characters; rule 1 never shows, so the longest possible is 127).
    for clause in clauses:
        assert len(_ADDRESS_TEXT.sub("", clause)) <= 128, clause


# print_blob: a rare counterexample found once must be replayable anywhere
# (@reproduce_failure), not only from the local example database.
@settings(max_examples=300, deadline=None, print_blob=True)
@given(dests_st, sources_st, measure_st, fail_st, st.floats(-5, 20))
def test_ranking_properties(
    destinations: list[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int | None]],
    sources: list[SourceAddress],
    measurements: list[tuple[SourceAddress, ipaddress.IPv4Address | ipaddress.IPv6Address, float]],
    failed: list[tuple[SourceAddress, ipaddress.IPv4Address | ipaddress.IPv6Address]],
    bias: float,
) -> None:
    latency = LatencyTable()
    for src, dst, rtt in measurements:
        if src.address.version == dst.version:
            latency.record(src.address, dst, rtt, now=0)
    failures = FailureTable()
    for src, dst in failed:
        if src.address.version == dst.version:
            failures.record_failure(src.address, dst, 443, now=0)
    plain = rank_pairs(destinations, sources, 443)
    pairs = rank_pairs(
        destinations, sources, 443, latency=latency, failures=failures, now=1, ipv6_bias_ms=bias
    )
    # Levels 2 and 3 reorder, never add or remove.
    assert sorted(pairs) == sorted(plain)
    assert len(set(pairs)) == len(pairs)
    local = {str(s.address): s for s in sources}
    given_dests = {str(d.ipv4_mapped or d) if d.version == 6 else str(d) for d, _ in destinations}  # type: ignore[union-attr]
    for pair in [*pairs, *plain]:
        af, sa, da = pair
        check_reason(pair)
        assert sa[0] in local and da[0] in given_dests and da[1] == 443
        assert len(sa) == len(da) == (4 if af == socket.AF_INET6 else 2)
        assert local[sa[0]].address.version == (6 if af == socket.AF_INET6 else 4)
    # A family without any source of that family gives no pair of that family.
    for version, family in ((4, socket.AF_INET), (6, socket.AF_INET6)):
        if not any(s.address.version == version for s in sources):
            assert all(p.family != family for p in pairs)
    # Precedence: usable before doubtful; within them, non-failing before failing; then
    # measured before unmeasured, by RTT with the IPv6 bias.
    levels = [("last:" in p.reason, p.failing) for p in pairs]
    assert levels == sorted(levels)
    for (d1, f1), (d2, f2), a, b in zip(levels, levels[1:], pairs, pairs[1:], strict=False):
        if (d1, f1) != (d2, f2):
            continue
        if a.rtt is None:
            assert b.rtt is None
        elif b.rtt is not None:
            ea = a.rtt * 1000 - (bias if a.family == socket.AF_INET6 else 0)
            eb = b.rtt * 1000 - (bias if b.family == socket.AF_INET6 else 0)
            assert ea <= eb + 1e-9
    # Without measurements the plain order is RFC 6724 order: destinations in the order of
    # sort_destinations over the sources each one can use.
    assert all(p.rtt is None and not p.failing for p in plain)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from([d for d in DEST_POOL if ":" in d]).map(ip), st.none()),
        max_size=6,
    ),
    st.lists(
        st.sampled_from([s for s in SOURCE_POOL if s.address.version == 6]), max_size=5, unique=True
    ),
)
def test_comparator_path_agrees_with_key_path(
    destinations: list[tuple[ipaddress.IPv6Address, None]], sources: list[SourceAddress]
) -> None:
    # Any mobility flag switches rule 4 to pairwise comparisons; an IPv4 home address cannot
    # change the ranking of IPv6 destinations, so both paths must agree exactly.
    fast = rank_pairs(destinations, sources, 443)
    slow = rank_pairs(destinations, [*sources, S("192.0.2.200", home=True)], 443)
    assert fast == slow
    assert [p.reason for p in fast] == [p.reason for p in slow]


# --- the memo of levels 2 and 3 ---------------------------------------------------------------

MEMO_SOURCES = [GUA, ULA, V4, V4B]
MEMO_DESTS = [*D6, ip("2001:db8:2::99"), *D4, ip("198.51.100.77")]
MEMO_PAIRS = [
    (s.address, d) for s in MEMO_SOURCES for d in MEMO_DESTS if s.address.version == d.version
]
_memo_times = st.integers(-4, 24).map(lambda t: t / 4)  # ties, exact expiries, going back
memo_ops_st = st.lists(
    st.one_of(
        st.tuples(st.just("fail"), st.integers(0, len(MEMO_PAIRS) - 1), _memo_times),
        st.tuples(st.just("fail other port"), st.integers(0, len(MEMO_PAIRS) - 1), _memo_times),
        st.tuples(st.just("success"), st.integers(0, len(MEMO_PAIRS) - 1), st.just(0.0)),
        st.tuples(st.just("rtt"), st.integers(0, len(MEMO_PAIRS) - 1), st.integers(0, 40)),
        st.tuples(st.just("loss"), st.integers(0, len(MEMO_PAIRS) - 1), st.just(0)),
        st.tuples(st.just("time"), st.just(0), _memo_times),
        st.tuples(st.just("prune"), st.just(0), st.just(0)),
        st.tuples(st.just("clear failures"), st.just(0), st.just(0)),
        st.tuples(st.just("clear latency"), st.just(0), st.just(0)),
        st.tuples(st.just("other tables"), st.just(0), st.just(0)),
        st.tuples(st.just("bias"), st.just(0), st.sampled_from([0.0, 5.0, 20.0])),
    ),
    max_size=40,
)


def _seen(pairs: list[AddrPair]) -> list[tuple[object, ...]]:
    return [(tuple(p), p.reason, p.rtt, p.failing) for p in pairs]


@settings(max_examples=300, deadline=None, print_blob=True)
@given(memo_ops_st)
def test_memoised_rankings_equal_fresh_ones(ops: list[tuple[str, int, float]]) -> None:
    # Two sets of tables (two contexts) take turns, so the memo also sees other tables.
    tables = [(LatencyTable(), FailureTable(ttl=5)), (LatencyTable(), FailureTable(ttl=5))]
    active, now, bias = 0, 0.0, 5.0
    d = dests(*MEMO_DESTS)
    for op, index, value in ops:
        latency, failures = tables[active]
        src, dst = MEMO_PAIRS[index]
        if op == "fail":
            now += value
            failures.record_failure(src, dst, 443, now, error="ECONNREFUSED")
        elif op == "fail other port":
            now += value
            failures.record_failure(src, dst, 80, now)
        elif op == "success":
            failures.record_success(src, dst, 443)
        elif op == "rtt":
            latency.record(src, dst, value / 1000, now)
        elif op == "loss":
            latency.record(src, dst, None, now)
        elif op == "time":
            now += value
        elif op == "prune":
            failures.prune(now)
        elif op == "clear failures":
            failures.clear()
        elif op == "clear latency":
            latency.clear()
        elif op == "other tables":
            active = 1 - active
        else:
            bias = value
        latency, failures = tables[active]
        for _ in range(2):  # the second call is the one most likely to hit the memo
            memoised = rank_pairs(
                d, MEMO_SOURCES, 443, latency=latency, failures=failures, now=now,
                ipv6_bias_ms=bias,
            )
            ranking._MEMOISE = False
            try:
                fresh = rank_pairs(
                    d, MEMO_SOURCES, 443, latency=latency, failures=failures, now=now,
                    ipv6_bias_ms=bias,
                )
            finally:
                ranking._MEMOISE = True
            assert _seen(memoised) == _seen(fresh), op
