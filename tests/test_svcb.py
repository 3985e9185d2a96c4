"""RFC 9460 record handling in the sans-IO core: decoding, checks, the endpoint plan.

The RDATA are built by the lab's independent encoder (``apr_async.lab.dnswire.https_rdata``),
so a round trip compares two implementations.
"""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apr_async.core.svcb import (
    MAX_ALIAS_CHAIN,
    MAX_HINTS,
    SvcbError,
    SvcbRecord,
    parse_rdata,
    parse_record,
)
from apr_async.core.svcb_plan import plan, usable_alpn
from apr_async.lab.dnswire import https_rdata

SPOKEN = ("http/1.1",)


def record(rdata: bytes, owner: str = "origin.test") -> SvcbRecord:
    priority, target, params = parse_rdata(rdata)
    return parse_record(priority, target, params, owner=owner)


def test_service_mode_fields() -> None:
    r = record(https_rdata(1, ".", alpn=("h2", "http/1.1"), port=8443, ipv4hint=("192.0.2.1",),
                           ipv6hint=("2001:db8::1",), ech=b"\x00\x01"))
    assert r.target == "origin.test"  # "." is the owner name
    assert r.alpn == ("h2", "http/1.1") and r.port == 8443 and r.ech == b"\x00\x01"
    assert r.ipv4hint == (ipaddress.IPv4Address("192.0.2.1"),)
    assert r.ipv6hint == (ipaddress.IPv6Address("2001:db8::1"),)
    assert r.protocols() == ("h2", "http/1.1")


def test_no_default_alpn_removes_http11() -> None:
    r = record(https_rdata(1, alpn=("h2",), no_default_alpn=True))
    assert r.protocols() == ("h2",)
    assert record(https_rdata(1, alpn=("h2",))).protocols() == ("h2", "http/1.1")


@pytest.mark.parametrize(("rdata", "words"), [
    (https_rdata(1, port=0), "port 0"),
    (https_rdata(1, ipv4hint=tuple(f"10.0.{i // 250}.{i % 250}" for i in range(10_000))),
     "10000 addresses"),
    (https_rdata(1, no_default_alpn=True), "no-default-alpn without alpn"),
    (https_rdata(1, mandatory=(3,)), "absent: port"),
    (b"\x00\x01\x00" + struct.pack("!HH", 3, 9) + b"\x01\xbb", "overruns"),
    (b"\x00\x01\x00" + struct.pack("!HH", 3, 2) + b"\x01\xbb" + struct.pack("!HH", 1, 3)
     + b"\x02h2", "strictly increasing"),
    (b"\x00\x01\x00" + struct.pack("!HH", 4, 5) + b"\x01\x02\x03\x04\x05", "multiple of 4"),
    (b"\x00\x01\x05abc", "overruns"),
    (b"\x00\x01\xc0\x0c", "compressed"),
])
def test_hostile_records_are_refused_with_a_reason(rdata: bytes, words: str) -> None:
    with pytest.raises(SvcbError, match=words):
        record(rdata)


def test_alias_mode_ignores_params() -> None:
    r = record(https_rdata(0, "cdn.test", port=1))
    assert r.alias and r.target == "cdn.test" and r.port is None


def test_plan_orders_by_priority_and_keeps_the_port() -> None:
    records = [record(https_rdata(2, "b.test", port=2)), record(https_rdata(1, "a.test")),
               record(https_rdata(3, port=3))]
    decided = plan("origin.test", records, port=443, spoken=SPOKEN)
    assert [(e.target, e.port, e.rank) for e in decided.endpoints] == [
        ("a.test", 443, 0), ("b.test", 2, 1), ("origin.test", 3, 2)]
    assert "port 2 from the record" in decided.endpoints[1].reason


def test_plan_skips_unknown_mandatory_keys_and_quic_only() -> None:
    unknown = record(https_rdata(1, mandatory=(9,), extra=((9, b"x"),)))
    h3 = record(https_rdata(2, alpn=("h3",), no_default_alpn=True))
    good = record(https_rdata(3, port=8443))
    decided = plan("origin.test", [unknown, h3, good], port=443, spoken=("h3", "http/1.1"))
    assert [e.port for e in decided.endpoints] == [8443]
    reasons = [why for _, why in decided.skipped]
    assert any("unknown mandatory" in w for w in reasons)
    assert any("h3 needs QUIC" in w for w in reasons)


def test_plan_alias_loop_and_chain_bound() -> None:
    alias = record(https_rdata(0, "a.test"))
    assert plan("b.test", [alias], port=443, spoken=SPOKEN).alias == "a.test"
    looped = plan("b.test", [alias], port=443, spoken=SPOKEN, chain=["a.test"])
    assert looped.alias is None and not looped.endpoints
    long = plan("b.test", [alias], port=443, spoken=SPOKEN,
                chain=[f"n{i}.test" for i in range(MAX_ALIAS_CHAIN)])
    assert long.alias is None and "chain longer" in long.skipped[-1][1]


def test_alias_to_root_means_no_service() -> None:
    decided = plan("o.test", [record(https_rdata(0, "."))], port=443, spoken=SPOKEN)
    assert decided.alias is None and not decided.endpoints
    assert "does not exist" in decided.skipped[0][1]


def test_service_mode_wins_over_alias_in_one_set() -> None:
    decided = plan("o.test", [record(https_rdata(0, "x.test")), record(https_rdata(1))],
                   port=443, spoken=SPOKEN)
    assert decided.alias is None and len(decided.endpoints) == 1


def test_usable_alpn_keeps_the_endpoint_order() -> None:
    assert usable_alpn(("h3", "h2", "http/1.1"), ("http/1.1", "h2", "h3")) == ("h2", "http/1.1")


labels = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=20)
names = st.lists(labels, min_size=1, max_size=4).map(".".join)
v4 = st.ip_addresses(v=4).map(str)
v6 = st.ip_addresses(v=6).map(str)
alpn_ids = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789/.-", min_size=1, max_size=12)


@given(priority=st.integers(1, 0xFFFF), target=names,
       alpn=st.lists(alpn_ids, max_size=4).map(tuple),
       port=st.none() | st.integers(1, 65535),
       hints4=st.lists(v4, max_size=MAX_HINTS).map(tuple),
       hints6=st.lists(v6, max_size=MAX_HINTS).map(tuple),
       ech=st.none() | st.binary(min_size=1, max_size=64))
def test_round_trip_through_the_lab_encoder(  # noqa: PLR0917 - hypothesis arguments
    priority: int, target: str, alpn: tuple[str, ...], port: int | None,
    hints4: tuple[str, ...], hints6: tuple[str, ...], ech: bytes | None,
) -> None:
    r = record(https_rdata(priority, target, alpn=alpn, port=port, ipv4hint=hints4,
                           ipv6hint=hints6, ech=ech))
    assert (r.priority, r.target, r.alpn, r.port, r.ech) == (priority, target, alpn, port, ech)
    assert [str(a) for a in r.ipv4hint] == [str(ipaddress.ip_address(a)) for a in hints4]
    assert [str(a) for a in r.ipv6hint] == [str(ipaddress.ip_address(a)) for a in hints6]
    decided = plan("origin.test", [r], port=443, spoken=SPOKEN)
    assert all(e.port == (port or 443) and e.alpn == ("http/1.1",) for e in decided.endpoints)


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_any_bytes_give_a_record_or_a_clear_error(data: bytes) -> None:
    try:
        r = record(data)
    except SvcbError as exc:
        assert str(exc)
        return
    assert 0 <= r.priority <= 0xFFFF and r.port != 0
    assert len(r.ipv4hint) <= MAX_HINTS and len(r.ipv6hint) <= MAX_HINTS


@given(st.lists(st.tuples(st.integers(0, 20), names), max_size=12))
def test_plan_is_priority_ordered_and_never_lists_an_alias(
    entries: list[tuple[int, str]],
) -> None:
    records = [record(https_rdata(p, t)) for p, t in entries]
    decided = plan("origin.test", records, port=443, spoken=SPOKEN)
    priorities = [e.record.priority for e in decided.endpoints]
    assert priorities == sorted(priorities) and 0 not in priorities
    if any(p for p, _ in entries):
        assert decided.alias is None
    assert len(decided.endpoints) + len(decided.skipped) <= len(records)
