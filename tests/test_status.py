"""Connectivity status derivation (pure): the prototype's flags, made non-sticky."""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest

from apr_async.core.rfc6724 import SourceAddress
from apr_async.core.status import (
    PROTOTYPE_FIELDS,
    ConnectivityStatus,
    Observation,
    StatusTracker,
    derive_status,
    nat64_prefixes,
)

ip = ipaddress.ip_address
V4 = ip("10.0.1.2")
PUB4 = ip("198.51.100.7")
GUA = ip("2001:db8:c::2")
ULA = ip("fd12:3456:789a:c::2")
LLA = ip("fe80::2")
GW4 = ip("10.0.1.1")
GW6 = ip("fe80::1")
SERVER4 = ip("198.51.100.10")
SERVER6 = ip("2001:db8:5::10")
SOURCES = [V4, GUA, ULA, LLA]


def obs(src: ipaddress._BaseAddress, dst: ipaddress._BaseAddress, ok: bool = True, *,
        at: float = 100.0, offlink: bool = True, method: str = "icmp") -> Observation:
    return Observation(src, dst, ok, at, offlink, method)  # type: ignore[arg-type]


def derive(observations: list[Observation], sources: list[object] = SOURCES,
           **kw: object) -> ConnectivityStatus:
    args: dict[str, object] = {"now": 101.0, "max_age": 30.0}
    args.update(kw)
    return derive_status(observations, sources, **args)  # type: ignore[arg-type]


def test_nothing_measured_yet() -> None:
    s = derive([])
    assert not any([s.GUA_ok, s.IPv4_ok, s.IPv6_ok, s.ULA_ok, s.LLA_ok, s.NAT44, s.NPTv6])
    assert s.RFC1918 and s.ULA_present  # presence comes from the addresses alone
    assert s.observations == 0


def test_healthy_dual_stack() -> None:
    s = derive(
        [obs(V4, SERVER4), obs(GUA, SERVER6), obs(LLA, GW6, offlink=False),
         obs(V4, GW4, offlink=False)],
        gateway4="10.0.1.1", gateway6="fe80::1%up0",
    )
    assert s.GUA_ok and s.IPv4_ok and s.IPv6_ok and s.LLA_ok
    assert not s.ULA_ok and not s.NPTv6
    assert s.NAT44  # a private source reached a public destination
    assert s.def_gateway4 == "10.0.1.1" and s.def_gateway6 == "fe80::1%up0"


def test_gateway_alone_does_not_make_family_ok() -> None:
    s = derive([obs(V4, GW4, offlink=False), obs(GUA, ip("2001:db8:c::1"), offlink=False),
                obs(GUA, SERVER6, ok=False)])
    assert not s.IPv4_ok and not s.GUA_ok and not s.IPv6_ok


def test_ipv6_blackholed() -> None:
    s = derive([obs(V4, SERVER4), obs(GUA, SERVER6, ok=False), obs(ULA, SERVER6, ok=False),
                obs(LLA, GW6, offlink=False)])
    assert s.IPv4_ok and not s.GUA_ok and not s.IPv6_ok and not s.ULA_ok
    assert s.LLA_ok


def test_nptv6_and_ula_ok() -> None:
    s = derive([obs(ULA, SERVER6), obs(GUA, SERVER6)])
    assert s.NPTv6 and s.ULA_ok and s.ULA_present and s.GUA_ok


def test_ula_to_ula_is_not_nptv6() -> None:
    s = derive([obs(ULA, ip("fd99::1"))])
    assert s.ULA_ok and not s.NPTv6


def test_nat44_needs_private_source_and_public_destination() -> None:
    assert not derive([obs(V4, ip("10.9.9.9"))]).NAT44
    assert not derive([obs(PUB4, SERVER4)], sources=[PUB4]).NAT44
    assert derive([obs(ip("100.64.0.5"), SERVER4)], sources=[ip("100.64.0.5")]).NAT44
    public_only = derive([obs(PUB4, SERVER4)], sources=[PUB4])
    assert public_only.IPv4_ok and not public_only.RFC1918


def test_latest_result_wins_not_sticky() -> None:
    broken = derive([obs(GUA, SERVER6, ok=True, at=90.0), obs(GUA, SERVER6, ok=False, at=95.0)])
    assert not broken.GUA_ok
    healed = derive([obs(GUA, SERVER6, ok=False, at=90.0), obs(GUA, SERVER6, ok=True, at=95.0)])
    assert healed.GUA_ok


def test_any_method_working_proves_the_pair() -> None:
    s = derive([obs(GUA, SERVER6, ok=False, method="icmp"),
                obs(GUA, SERVER6, ok=True, method="tcp")])
    assert s.GUA_ok


def test_old_results_and_vanished_sources_ignored() -> None:
    assert not derive([obs(GUA, SERVER6, at=10.0)]).GUA_ok
    assert not derive([obs(GUA, SERVER6)], sources=[V4]).GUA_ok
    assert not derive([obs(GUA, SERVER6, at=200.0)]).GUA_ok  # from the future: ignored


def test_sources_as_source_addresses_and_zoned() -> None:
    lla = ipaddress.IPv6Address("fe80::2%up0")
    s = derive([obs(lla, GW6, offlink=False)],
               sources=[SourceAddress(LLA, interface="up0", ifindex=10)])
    assert s.LLA_ok


def test_changed_at_follows_changes_only() -> None:
    first = derive([obs(GUA, SERVER6)], now=101.0)
    assert first.changed_at == 101.0
    same = derive([obs(GUA, SERVER6, at=105.0)], now=106.0, previous=first)
    assert same.changed_at == 101.0 and same.updated_at == 106.0
    changed = derive([obs(GUA, SERVER6, ok=False, at=110.0)], now=111.0, previous=same)
    assert changed.changed_at == 111.0


def test_as_dict_uses_exactly_the_prototype_names() -> None:
    s = derive([obs(V4, SERVER4)], gateway4="10.0.1.1")
    d = s.as_dict()
    assert list(d) == list(PROTOTYPE_FIELDS) == [
        "GUA_ok", "IPv4_ok", "LLA_ok", "NAT44", "NPTv6", "RFC1918", "ULA_ok", "ULA_present",
        "def_gateway4", "def_gateway6"]
    assert d["IPv4_ok"] is True and d["def_gateway4"] == "10.0.1.1"
    full = s.as_dict(full=True)
    assert {"IPv6_ok", "NAT64_prefix", "changed_at"} <= set(full)
    assert "IPv4_ok" in s.summary()


def test_status_is_immutable() -> None:
    s = ConnectivityStatus()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.GUA_ok = True  # type: ignore[misc]


def test_bad_input() -> None:
    with pytest.raises(TypeError):
        Observation("10.0.0.1", SERVER4, True, 1.0, True)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Observation(V4, SERVER4, True, 1.0, True, "smoke")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        derive([], max_age=0)


def test_tracker_keeps_latest_bounded_and_forgets() -> None:
    t = StatusTracker(max_entries=3)
    t.observe(obs(GUA, SERVER6, ok=True, at=50.0))
    t.observe(obs(GUA, SERVER6, ok=False, at=40.0))  # older result arriving late: ignored
    assert t.derive(SOURCES, now=60.0, max_age=30.0).GUA_ok
    t.observe(obs(GUA, SERVER6, ok=False, at=55.0))
    assert not t.derive(SOURCES, now=60.0, max_age=30.0).GUA_ok
    for i in range(5):
        t.observe(obs(V4, ip(f"198.51.100.{i}"), at=56.0 + i))
    assert len(t) == 3
    t.forget(before=59.0)
    assert len(t) == 2
    t.forget()
    assert len(t) == 0
    assert t.derive(SOURCES, now=70.0, max_age=30.0).IPv4_ok is False


@pytest.mark.parametrize(
    ("answer", "prefix"),
    [
        ("64:ff9b::c000:aa", "64:ff9b::/96"),
        ("64:ff9b::192.0.0.171", "64:ff9b::/96"),
        ("2001:db8:c000:aa::", "2001:db8::/32"),      # /32: IPv4 in bits 32-63
        ("2001:db8:1c0:0:aa::", "2001:db8:100::/40"),  # /40: 24 bits, u octet, 8 bits
        ("2001:db8:122:c000:00:aa00::", "2001:db8:122::/48"),
        ("2001:db8:122:3c0:0:aa:0:0", "2001:db8:122:300::/56"),
        ("2001:db8:122:344:c0:0:aa00:0", "2001:db8:122:344::/64"),
    ],
)
def test_nat64_prefix_rfc6052_positions(answer: str, prefix: str) -> None:
    assert nat64_prefixes([ip(answer)]) == (ipaddress.IPv6Network(prefix),)


def test_nat64_prefix_none_and_dedup() -> None:
    assert nat64_prefixes([ip("2001:db8::1"), ip("192.0.0.170")]) == ()
    both = nat64_prefixes([ip("64:ff9b::c000:aa"), ip("64:ff9b::c000:ab")])
    assert both == (ipaddress.IPv6Network("64:ff9b::/96"),)
