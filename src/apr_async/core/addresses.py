"""Classify IP addresses by RFC 6724 / RFC 4291 scope and by kind (sans-IO).

``ipaddress.is_private`` and friends answer "is this in an IANA special-purpose registry?",
which is not the question address selection asks. Scope decides how far a packet with that
address may travel (RFC 4007); kind decides how the address behaves on real networks (a ULA
source needs a translator to reach the Internet, 6to4 and Teredo are tunnels, ...).
"""

from __future__ import annotations

import functools
import ipaddress
import re
from enum import IntEnum, StrEnum
from typing import Final

__all__ = [
    "AddressKind",
    "IPAddress",
    "Scope",
    "address_key",
    "common_prefix_len",
    "ipv4_mapped_to_ipv4",
    "kind_of",
    "parse_address",
    "scope_of",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
"""Either IP address type."""


class Scope(IntEnum):
    """RFC 4291 / RFC 7346 scope values, ordered from smallest to largest reach.

    Unicast addresses are mapped onto the multicast scope values as RFC 6724 section 3.1 asks
    (link-local unicast == link-local multicast, global unicast == global multicast), so the
    scopes of a unicast source and a multicast destination compare directly. Every 4-bit value
    has a member so that any multicast scope field maps to a member.
    """

    RESERVED_0 = 0x0
    INTERFACE_LOCAL = 0x1
    LINK_LOCAL = 0x2
    REALM_LOCAL = 0x3
    ADMIN_LOCAL = 0x4
    SITE_LOCAL = 0x5
    UNASSIGNED_6 = 0x6
    UNASSIGNED_7 = 0x7
    ORGANIZATION_LOCAL = 0x8
    UNASSIGNED_9 = 0x9
    UNASSIGNED_A = 0xA
    UNASSIGNED_B = 0xB
    UNASSIGNED_C = 0xC
    UNASSIGNED_D = 0xD
    GLOBAL = 0xE
    RESERVED_F = 0xF


class AddressKind(StrEnum):
    """What kind of address this is, in the terms a network engineer uses."""

    UNSPECIFIED = "unspecified"
    """``::`` or ``0.0.0.0``."""
    LOOPBACK = "loopback"
    """``::1`` or ``127.0.0.0/8``."""
    LINK_LOCAL = "link-local"
    """``fe80::/10`` or ``169.254.0.0/16``."""
    SITE_LOCAL = "site-local"
    """``fec0::/10``, deprecated by RFC 3879."""
    ULA = "ULA"
    """Unique local IPv6, ``fc00::/7``."""
    GUA = "GUA"
    """Global unicast IPv6, ``2000::/3`` (6to4 and Teredo have their own kinds)."""
    SIXTO4 = "6to4"
    """``2002::/16``: IPv6 in IPv4 tunnelling, not native transport."""
    TEREDO = "Teredo"
    """``2001::/32``: IPv6 over UDP/IPv4 tunnelling, not native transport."""
    NAT64 = "NAT64"
    """``64:ff9b::/96`` (RFC 6052) or ``64:ff9b:1::/48`` (RFC 8215): translated to IPv4."""
    IPV4_MAPPED = "IPv4-mapped"
    """``::ffff:0:0/96``: an IPv4 address written as IPv6 (RFC 4291 2.5.5.2)."""
    MULTICAST = "multicast"
    """``ff00::/8`` or ``224.0.0.0/4``."""
    RFC1918 = "RFC 1918"
    """IPv4 private space: 10/8, 172.16/12, 192.168/16."""
    CGN = "CGN"
    """IPv4 shared address space of carrier-grade NAT, ``100.64.0.0/10`` (RFC 6598)."""
    PUBLIC_IPV4 = "public IPv4"
    """Any other routable IPv4 unicast address (including documentation ranges)."""
    RESERVED = "reserved"
    """Anything else: ``0/8``, ``240/4``, broadcast, IPv6 outside the ranges above."""


# Ranges as (network int, prefix length) checked with shifts rather than ipaddress objects,
# because classification runs for every candidate pair on the hot ranking path.
_V6_RULES: Final[tuple[tuple[int, int, AddressKind], ...]] = tuple(
    (int(net.network_address), net.prefixlen, kind)
    for net, kind in (
        (ipaddress.IPv6Network("::ffff:0:0/96"), AddressKind.IPV4_MAPPED),
        (ipaddress.IPv6Network("64:ff9b::/96"), AddressKind.NAT64),
        (ipaddress.IPv6Network("64:ff9b:1::/48"), AddressKind.NAT64),
        (ipaddress.IPv6Network("ff00::/8"), AddressKind.MULTICAST),
        (ipaddress.IPv6Network("fe80::/10"), AddressKind.LINK_LOCAL),
        (ipaddress.IPv6Network("fec0::/10"), AddressKind.SITE_LOCAL),
        (ipaddress.IPv6Network("fc00::/7"), AddressKind.ULA),
        (ipaddress.IPv6Network("2001::/32"), AddressKind.TEREDO),
        (ipaddress.IPv6Network("2002::/16"), AddressKind.SIXTO4),
        (ipaddress.IPv6Network("2000::/3"), AddressKind.GUA),
    )
)

_V4_RULES: Final[tuple[tuple[int, int, AddressKind], ...]] = tuple(
    (int(net.network_address), net.prefixlen, kind)
    for net, kind in (
        (ipaddress.IPv4Network("127.0.0.0/8"), AddressKind.LOOPBACK),
        (ipaddress.IPv4Network("169.254.0.0/16"), AddressKind.LINK_LOCAL),
        (ipaddress.IPv4Network("10.0.0.0/8"), AddressKind.RFC1918),
        (ipaddress.IPv4Network("172.16.0.0/12"), AddressKind.RFC1918),
        (ipaddress.IPv4Network("192.168.0.0/16"), AddressKind.RFC1918),
        (ipaddress.IPv4Network("100.64.0.0/10"), AddressKind.CGN),
        (ipaddress.IPv4Network("224.0.0.0/4"), AddressKind.MULTICAST),
        (ipaddress.IPv4Network("0.0.0.0/8"), AddressKind.RESERVED),
        (ipaddress.IPv4Network("240.0.0.0/4"), AddressKind.RESERVED),
    )
)


@functools.lru_cache(maxsize=4096)
def kind_of(ip: IPAddress) -> AddressKind:
    """Return the :class:`AddressKind` of *ip* (an ``IPv4Address`` or ``IPv6Address``).

    A zone (``scope_id``) on an IPv6 address is ignored.
    """
    if isinstance(ip, ipaddress.IPv6Address):
        value = int(ip)
        if value == 0:
            return AddressKind.UNSPECIFIED
        if value == 1:
            return AddressKind.LOOPBACK
        for network, plen, kind in _V6_RULES:
            if value >> (128 - plen) == network >> (128 - plen):
                return kind
        return AddressKind.RESERVED
    if not isinstance(ip, ipaddress.IPv4Address):
        raise TypeError(f"expected an IPv4Address or IPv6Address, got {type(ip).__name__}")
    value = int(ip)
    if value == 0:
        return AddressKind.UNSPECIFIED
    for network, plen, kind in _V4_RULES:
        if value >> (32 - plen) == network >> (32 - plen):
            return kind
    return AddressKind.PUBLIC_IPV4


_UNICAST_V6_SCOPE: Final[dict[AddressKind, Scope]] = {
    # RFC 6724 3.1: the loopback address is treated as having link-local scope.
    AddressKind.LOOPBACK: Scope.LINK_LOCAL,
    AddressKind.LINK_LOCAL: Scope.LINK_LOCAL,
    AddressKind.SITE_LOCAL: Scope.SITE_LOCAL,
}


@functools.lru_cache(maxsize=4096)
def scope_of(ip: IPAddress) -> Scope:
    """Return the RFC 6724 scope of *ip*.

    IPv6 multicast uses its 4-bit scope field; loopback and ``fe80::/10`` are link-local,
    ``fec0::/10`` site-local, everything else (ULA included, per RFC 6724) global. IPv4 follows
    RFC 6724 section 3.2: ``127/8`` and ``169.254/16`` are link-local, everything else global;
    an IPv4-mapped IPv6 address has the scope of its IPv4 address.
    """
    kind = kind_of(ip)
    if isinstance(ip, ipaddress.IPv6Address):
        if kind is AddressKind.MULTICAST:
            return Scope((int(ip) >> 112) & 0xF)
        if kind is AddressKind.IPV4_MAPPED:
            return scope_of(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        return _UNICAST_V6_SCOPE.get(kind, Scope.GLOBAL)
    if kind is AddressKind.LOOPBACK or kind is AddressKind.LINK_LOCAL:
        return Scope.LINK_LOCAL
    return Scope.GLOBAL


def address_key(ip: IPAddress) -> int:
    """A unique int for *ip*, for fast hashing: IPv6 as its value, IPv4 as ``~value``.

    A zone (``scope_id``) is ignored. ``ipaddress`` objects hash through Python code (about
    ten times slower than an int), which matters in tables looked up for every pair.
    """
    if isinstance(ip, ipaddress.IPv6Address):
        return int(ip)
    return ~int(ip)


def ipv4_mapped_to_ipv4(ip: IPAddress) -> IPAddress:
    """Return the IPv4 address inside an IPv4-mapped IPv6 address, else *ip* unchanged."""
    if isinstance(ip, ipaddress.IPv6Address) and int(ip) >> 32 == 0xFFFF:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip


def common_prefix_len(a: IPAddress, b: IPAddress, limit: int | None = None) -> int:
    """Length of the longest common leading bit string of *a* and *b*, at most *limit*.

    Both must be of the same family. This is RFC 6724's ``CommonPrefixLen`` when *limit* is
    the prefix length of the source address.
    """
    if a.version != b.version:
        raise ValueError(f"cannot compare prefixes of {a} and {b}: different families")
    bits = a.max_prefixlen
    length = bits - (int(a) ^ int(b)).bit_length()
    return length if limit is None else min(length, limit)


# RFC 4007 11.2 leaves zone ids implementation-defined; on real systems they are interface
# names (at most IFNAMSIZ-1 = 15 bytes on Linux, a bit longer elsewhere) or decimal indexes.
_ZONE_RE: Final = re.compile(r"[A-Za-z0-9_.:\-@]{1,32}")


def parse_address(text: str) -> tuple[IPAddress, str | None]:
    """Parse an IP address literal with an optional ``%zone`` suffix.

    Returns ``(ip, zone)``: *ip* never carries a zone itself (so it compares equal to the
    same address without one) and *zone* is the interface name or decimal index as written,
    or ``None``. A zone is accepted only on IPv6 addresses whose scope is smaller than global
    (link-local, site-local, non-global multicast, loopback), where it means something.

    Raises ``TypeError`` for a non-``str`` and ``ValueError`` for anything that is not an
    address literal (surrounding spaces, brackets, empty or malformed zones included).
    """
    if not isinstance(text, str):
        raise TypeError(f"address must be a str, not {type(text).__name__}")
    address, sep, zone = text.partition("%")
    if sep and not _ZONE_RE.fullmatch(zone):
        raise ValueError(f"invalid zone in address {text!r}")
    if not address or address != address.strip():
        raise ValueError(f"invalid IP address {text!r}")
    ip: IPAddress
    try:
        ip = ipaddress.IPv6Address(address) if ":" in address else ipaddress.IPv4Address(address)
    except ValueError as exc:
        raise ValueError(f"invalid IP address {text!r}: {exc}") from None
    if not sep:
        return ip, None
    if isinstance(ip, ipaddress.IPv4Address):
        raise ValueError(f"a zone makes no sense on IPv4 address {text!r}")
    if scope_of(ip) >= Scope.GLOBAL:
        raise ValueError(f"a zone makes no sense on global-scope address {text!r}")
    return ip, zone
