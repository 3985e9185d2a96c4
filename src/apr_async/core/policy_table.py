"""RFC 6724 policy tables: PolicyTable, the RFC's default table and its update draft's.

A policy table maps an address to (precedence, label) by longest prefix match; the source
and destination rules in :mod:`.rfc6724` read it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from apr_async.core.addresses import IPAddress

__all__ = [
    "DEFAULT_POLICY_TABLE",
    "RFC6724_UPDATE_POLICY_TABLE",
    "PolicyEntry",
    "PolicyTable",
    "rfc6724_update_policy_table",
]


@dataclass(frozen=True, slots=True)
class PolicyEntry:
    """One row of an RFC 6724 policy table."""

    prefix: ipaddress.IPv6Network
    precedence: int
    label: int


class PolicyTable:
    """An RFC 6724 policy table: longest-prefix match giving (precedence, label).

    Entries are ``(prefix, precedence, label)`` with an IPv6 prefix (text or
    ``IPv6Network``); IPv4 addresses are looked up as ``::ffff:a.b.c.d``. An address that no
    prefix matches gets precedence 0 and label -1 (a table normally contains ``::/0``).
    """

    __slots__ = ("_cache", "_entries", "_hash", "_rows")

    _CACHE_MAX: Final = 8192

    def __init__(
        self, entries: Iterable[PolicyEntry | tuple[str | ipaddress.IPv6Network, int, int]]
    ) -> None:
        rows: list[PolicyEntry] = []
        seen: set[ipaddress.IPv6Network] = set()
        for item in entries:
            if isinstance(item, PolicyEntry):
                entry = item
            else:
                prefix, precedence, label = item
                if not isinstance(prefix, ipaddress.IPv6Network):
                    prefix = ipaddress.IPv6Network(prefix)
                entry = PolicyEntry(prefix, precedence, label)
            for value in (entry.precedence, entry.label):
                if not isinstance(value, int) or isinstance(value, bool):
                    raise TypeError(f"precedence and label must be ints: {entry!r}")
            if entry.prefix in seen:
                raise ValueError(f"duplicate policy table prefix {entry.prefix}")
            seen.add(entry.prefix)
            rows.append(entry)
        self._entries: tuple[PolicyEntry, ...] = tuple(rows)
        self._rows: tuple[tuple[int, int, int, int], ...] = tuple(
            (
                int(e.prefix.network_address) >> (128 - e.prefix.prefixlen),
                e.prefix.prefixlen,
                e.precedence,
                e.label,
            )
            for e in sorted(rows, key=lambda e: -e.prefix.prefixlen)
        )
        self._cache: dict[IPAddress, tuple[int, int]] = {}
        self._hash = hash(frozenset(self._entries))

    @property
    def entries(self) -> tuple[PolicyEntry, ...]:
        """The rows as given."""
        return self._entries

    def lookup(self, ip: IPAddress) -> tuple[int, int]:
        """Return ``(precedence, label)`` for *ip*."""
        cache = self._cache
        found = cache.get(ip)
        if found is not None:
            return found
        value = int(ip)
        if ip.version == 4:
            value |= 0xFFFF << 32
        result = (0, -1)
        for network, plen, precedence, label in self._rows:
            if value >> (128 - plen) == network:
                result = (precedence, label)
                break
        if len(cache) >= self._CACHE_MAX:
            cache.clear()
        cache[ip] = result
        return result

    def precedence(self, ip: IPAddress) -> int:
        """Precedence of *ip*."""
        return self.lookup(ip)[0]

    def label(self, ip: IPAddress) -> int:
        """Label of *ip*."""
        return self.lookup(ip)[1]

    def __repr__(self) -> str:
        rows = ", ".join(f"({e.prefix}, {e.precedence}, {e.label})" for e in self._entries)
        return f"PolicyTable([{rows}])"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PolicyTable):
            return NotImplemented
        return set(self._entries) == set(other._entries)

    def __hash__(self) -> int:
        return self._hash


DEFAULT_POLICY_TABLE: Final = PolicyTable(
    [
        ("::1/128", 50, 0),
        ("::/0", 40, 1),
        ("::ffff:0:0/96", 35, 4),
        ("2002::/16", 30, 2),
        ("2001::/32", 5, 5),
        ("fc00::/7", 3, 13),
        ("::/96", 1, 3),
        ("fec0::/10", 1, 11),
        ("3ffe::/16", 1, 12),
    ]
)
"""The default policy table of RFC 6724 section 2.1."""

# draft-ietf-6man-rfc6724-update: ULAs rise above IPv4 (the ULA-only networks it was written
# for must not fall back to IPv4, and IPv4 drops below all native IPv6), while 6to4 falls to
# the bottom with Teredo (both relays are all but gone).
_RFC6724_UPDATE_ROWS: Final = (
    ("::1/128", 50, 0),
    ("::/0", 40, 1),
    ("::ffff:0:0/96", 20, 4),
    ("2002::/16", 5, 2),
    ("2001::/32", 5, 5),
    ("fc00::/7", 30, 13),
    ("::/96", 1, 3),
    ("fec0::/10", 1, 11),
    ("3ffe::/16", 1, 12),
)
# The draft's row for the ULA /48s a host has on its own interfaces: above the GUA default
# (a local ULA is reachable without leaving the site) and with its own label, so rule 5
# pairs a local-ULA destination with a source from the same /48s.
_LOCAL_ULA_PRECEDENCE: Final = 45
_LOCAL_ULA_LABEL: Final = 14
_ULA: Final = ipaddress.IPv6Network("fc00::/7")


def _local_ula_48(
    prefix: ipaddress.IPv6Network | ipaddress.IPv6Address | str,
) -> ipaddress.IPv6Network:
    if isinstance(prefix, ipaddress.IPv6Address):
        prefix = ipaddress.IPv6Network(int(prefix))
    elif not isinstance(prefix, ipaddress.IPv6Network):
        network = ipaddress.ip_network(str(prefix).split("%", 1)[0], strict=False)
        if not isinstance(network, ipaddress.IPv6Network):
            raise ValueError(f"local ULA prefix must be IPv6: {prefix!r}")
        prefix = network
    if prefix.prefixlen < 48 or not prefix.subnet_of(_ULA):
        raise ValueError(f"local ULA prefix must be a /48 or longer inside fc00::/7: {prefix}")
    return prefix.supernet(new_prefix=48)


def rfc6724_update_policy_table(
    local_ula_prefixes: Iterable[ipaddress.IPv6Network | ipaddress.IPv6Address | str] = (),
) -> PolicyTable:
    """The default policy table of draft-ietf-6man-rfc6724-update, with the host's local ULAs.

    Each of *local_ula_prefixes* (a ULA prefix of length 48 or more, or a ULA address, as
    text or object) adds the draft's known-local row for its /48: precedence 45, label 14.
    Pass the ULA addresses or prefixes configured on the host's own interfaces; duplicates
    (several addresses in one /48) add one row. Anything outside ``fc00::/7`` or shorter than
    a /48 raises ``ValueError``.
    """
    if isinstance(local_ula_prefixes, str):
        local_ula_prefixes = (local_ula_prefixes,)
    local = dict.fromkeys(_local_ula_48(p) for p in local_ula_prefixes)
    return PolicyTable(
        [*_RFC6724_UPDATE_ROWS, *((p, _LOCAL_ULA_PRECEDENCE, _LOCAL_ULA_LABEL) for p in local)]
    )


RFC6724_UPDATE_POLICY_TABLE: Final = rfc6724_update_policy_table()
"""The default policy table of draft-ietf-6man-rfc6724-update, without local-ULA rows.

Build one with the host's ULA /48s with :func:`rfc6724_update_policy_table`; pass either as
``policy=`` to :func:`.rfc6724.sort_destinations`, :func:`.rfc6724.select_source`, ``rank_pairs`` or
``PairContext``.
"""
