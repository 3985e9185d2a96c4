"""Address classification: scope (RFC 6724/4291) and kind, and address literal parsing."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from apr_async.core.addresses import (
    AddressKind,
    Scope,
    common_prefix_len,
    ipv4_mapped_to_ipv4,
    kind_of,
    parse_address,
    scope_of,
)

ip = ipaddress.ip_address

KINDS = [
    ("::", AddressKind.UNSPECIFIED, Scope.GLOBAL),
    ("::1", AddressKind.LOOPBACK, Scope.LINK_LOCAL),
    ("fe80::1", AddressKind.LINK_LOCAL, Scope.LINK_LOCAL),
    ("febf:ffff::1", AddressKind.LINK_LOCAL, Scope.LINK_LOCAL),
    ("fec0::1", AddressKind.SITE_LOCAL, Scope.SITE_LOCAL),
    ("fd00:1::1", AddressKind.ULA, Scope.GLOBAL),
    ("fc00::1", AddressKind.ULA, Scope.GLOBAL),
    ("2001:db8::1", AddressKind.GUA, Scope.GLOBAL),
    ("2a00:1450::1", AddressKind.GUA, Scope.GLOBAL),
    ("3fff::1", AddressKind.GUA, Scope.GLOBAL),
    ("2002:c633:6401::1", AddressKind.SIXTO4, Scope.GLOBAL),
    ("2001:0:4136:e378::1", AddressKind.TEREDO, Scope.GLOBAL),
    ("64:ff9b::192.0.2.33", AddressKind.NAT64, Scope.GLOBAL),
    ("64:ff9b:1::1", AddressKind.NAT64, Scope.GLOBAL),
    ("64:ff9b:2::1", AddressKind.RESERVED, Scope.GLOBAL),
    ("::ffff:10.0.0.1", AddressKind.IPV4_MAPPED, Scope.GLOBAL),
    ("::ffff:169.254.1.1", AddressKind.IPV4_MAPPED, Scope.LINK_LOCAL),
    ("4000::1", AddressKind.RESERVED, Scope.GLOBAL),
    ("ff02::1", AddressKind.MULTICAST, Scope.LINK_LOCAL),
    ("ff05::1:3", AddressKind.MULTICAST, Scope.SITE_LOCAL),
    ("ff0e::1", AddressKind.MULTICAST, Scope.GLOBAL),
    ("ff18::1", AddressKind.MULTICAST, Scope.ORGANIZATION_LOCAL),
    ("ff01::1", AddressKind.MULTICAST, Scope.INTERFACE_LOCAL),
    ("ff06::1", AddressKind.MULTICAST, Scope.UNASSIGNED_6),
    ("0.0.0.0", AddressKind.UNSPECIFIED, Scope.GLOBAL),
    ("127.0.0.1", AddressKind.LOOPBACK, Scope.LINK_LOCAL),
    ("127.255.0.9", AddressKind.LOOPBACK, Scope.LINK_LOCAL),
    ("169.254.13.78", AddressKind.LINK_LOCAL, Scope.LINK_LOCAL),
    ("10.1.2.3", AddressKind.RFC1918, Scope.GLOBAL),
    ("172.16.0.1", AddressKind.RFC1918, Scope.GLOBAL),
    ("172.31.255.255", AddressKind.RFC1918, Scope.GLOBAL),
    ("172.32.0.1", AddressKind.PUBLIC_IPV4, Scope.GLOBAL),
    ("192.168.1.1", AddressKind.RFC1918, Scope.GLOBAL),
    ("100.64.0.1", AddressKind.CGN, Scope.GLOBAL),
    ("100.127.255.254", AddressKind.CGN, Scope.GLOBAL),
    ("100.128.0.1", AddressKind.PUBLIC_IPV4, Scope.GLOBAL),
    ("198.51.100.121", AddressKind.PUBLIC_IPV4, Scope.GLOBAL),
    ("8.8.8.8", AddressKind.PUBLIC_IPV4, Scope.GLOBAL),
    ("224.0.0.1", AddressKind.MULTICAST, Scope.GLOBAL),
    ("240.0.0.1", AddressKind.RESERVED, Scope.GLOBAL),
    ("255.255.255.255", AddressKind.RESERVED, Scope.GLOBAL),
]


@pytest.mark.parametrize(("text", "kind", "scope"), KINDS)
def test_kind_and_scope(text: str, kind: AddressKind, scope: Scope) -> None:
    assert kind_of(ip(text)) is kind
    assert scope_of(ip(text)) is scope


def test_private_addresses_are_global_scope_unlike_is_private() -> None:
    # ipaddress calls these "private"; for RFC 6724 they are global scope.
    for text in ("10.0.0.1", "fd00::1", "2001:db8::1"):
        assert ip(text).is_private
        assert scope_of(ip(text)) is Scope.GLOBAL


def test_scope_order_matches_rfc() -> None:
    assert Scope.INTERFACE_LOCAL < Scope.LINK_LOCAL < Scope.SITE_LOCAL
    assert Scope.SITE_LOCAL < Scope.ORGANIZATION_LOCAL < Scope.GLOBAL


def test_zone_on_an_address_is_ignored_for_classification() -> None:
    assert kind_of(ipaddress.IPv6Address("fe80::1%eth0")) is AddressKind.LINK_LOCAL
    assert scope_of(ipaddress.IPv6Address("fe80::1%3")) is Scope.LINK_LOCAL


def test_kind_of_rejects_non_address() -> None:
    with pytest.raises(TypeError):
        kind_of("10.0.0.1")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "address", "zone"),
    [
        ("fe80::1%eth0", "fe80::1", "eth0"),
        ("fe80::1%3", "fe80::1", "3"),
        ("fe80::1%veth-a.10", "fe80::1", "veth-a.10"),
        ("ff02::1%lo", "ff02::1", "lo"),
        ("2001:db8::1", "2001:db8::1", None),
        ("192.0.2.1", "192.0.2.1", None),
        ("::ffff:1.2.3.4", "::ffff:1.2.3.4", None),
    ],
)
def test_parse_address(text: str, address: str, zone: str | None) -> None:
    parsed, parsed_zone = parse_address(text)
    assert parsed == ip(address)
    assert getattr(parsed, "scope_id", None) is None
    assert parsed_zone == zone


@pytest.mark.parametrize(
    "text",
    [
        "",
        "garbage",
        "fe80::1%",
        "fe80::1%eth 0",
        "fe80::1%a%b",
        "%eth0",
        "10.0.0.1%eth0",
        "2001:db8::1%eth0",
        " 10.0.0.1",
        "10.0.0.1 ",
        "[::1]",
        "1.2.3",
        "010.1.2.3",
        "1.2.3.256",
        "fe80::1::2",
        "10.0.0.1\x00",
        "fe80::1%" + "x" * 40,
    ],
)
def test_parse_address_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError):
        parse_address(text)


def test_parse_address_rejects_non_str() -> None:
    with pytest.raises(TypeError):
        parse_address(b"10.0.0.1")  # type: ignore[arg-type]


def test_common_prefix_len() -> None:
    assert common_prefix_len(ip("fe80::1"), ip("fe80::2")) == 126
    assert common_prefix_len(ip("fe80::1"), ip("fe80::2"), 64) == 64
    assert common_prefix_len(ip("2001:db8:1::2"), ip("2001:db8:3ffe::1")) == 34
    assert common_prefix_len(ip("10.0.0.1"), ip("10.0.0.1")) == 32
    assert common_prefix_len(ip("10.0.0.1"), ip("138.0.0.1")) == 0
    with pytest.raises(ValueError):
        common_prefix_len(ip("10.0.0.1"), ip("::1"))


def test_ipv4_mapped_to_ipv4() -> None:
    assert ipv4_mapped_to_ipv4(ip("::ffff:10.1.2.3")) == ip("10.1.2.3")
    assert ipv4_mapped_to_ipv4(ip("2001:db8::1")) == ip("2001:db8::1")
    assert ipv4_mapped_to_ipv4(ip("10.1.2.3")) == ip("10.1.2.3")


@given(st.ip_addresses())
def test_every_address_classifies_and_round_trips(address: ipaddress.IPv4Address) -> None:
    assert isinstance(kind_of(address), AddressKind)
    assert isinstance(scope_of(address), Scope)
    assert parse_address(str(address)) == (address, None)


@given(
    st.ip_addresses(v=6, network="fe80::/10"), st.from_regex(r"[a-z][a-z0-9]{0,14}", fullmatch=True)
)
def test_link_local_zones_parse(address: ipaddress.IPv6Address, zone: str) -> None:
    assert parse_address(f"{address}%{zone}") == (address, zone)
