"""RFC 6724 default address selection: source rules 1-8 and destination rules 1-10 (sans-IO).

Deviations and interpretations, all deliberate:

* IPv4 addresses are handled natively (not as IPv4-mapped IPv6) except for policy-table
  lookups, which use ``::ffff:a.b.c.d`` as RFC 6724 section 2.1 describes. An IPv4-mapped
  *destination* is treated as the IPv4 address it carries (that is what the kernel sends), so
  its candidate sources are IPv4 ones.
* Candidate sources of the other family are never considered: a socket has one family.
* Source rule 5 (outgoing interface) prefers a source known to be on the outgoing interface
  over every source not known to be; a source with no interface information is "not known".
* Source rule 5.5 (next-hop advertised prefix) is not implemented: the core has no router
  information.
* Source rule 7 prefers temporary addresses unless ``prefer_temporary=False``.
* Destination rule 7 (native transport) treats 6to4 and Teredo destinations or sources as not
  native.
* Destination rule 9 (longest matching prefix) applies only when both destinations are IPv6
  and neither is inside one of ``skip_rule9_prefixes``, as the RFC 6724 update drafts ask, so
  DNS round-robin over IPv4 (and over configured IPv6 prefixes) keeps its order.
* Destinations without a usable source keep their relative input order behind the others.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from apr_async.core.addresses import (
    AddressKind,
    IPAddress,
    Scope,
    ipv4_mapped_to_ipv4,
    kind_of,
    parse_address,
    scope_of,
)
from apr_async.core.policy_table import DEFAULT_POLICY_TABLE, PolicyTable

__all__ = [
    "DESTINATION_RULES",
    "SOURCE_RULES",
    "SourceAddress",
    "select_source",
    "sort_destinations",
]

SOURCE_RULES: Final[dict[int, str]] = {
    1: "same address",
    2: "appropriate scope",
    3: "avoid deprecated addresses",
    4: "prefer home addresses",
    5: "prefer outgoing interface",
    6: "matching label",
    7: "prefer temporary addresses",
    8: "longest matching prefix",
}
"""Short names of RFC 6724 section 5 source selection rules, by rule number."""

DESTINATION_RULES: Final[dict[int, str]] = {
    1: "avoid unusable destinations",
    2: "matching scope",
    3: "avoid deprecated addresses",
    4: "prefer home addresses",
    5: "matching label",
    6: "higher precedence",
    7: "native transport",
    8: "smaller scope",
    9: "longest matching prefix",
    10: "input order",
}
"""Short names of RFC 6724 section 6 destination ordering rules, by rule number."""

_NOT_NATIVE: Final = frozenset({AddressKind.SIXTO4, AddressKind.TEREDO})


@dataclass(frozen=True, slots=True)
class SourceAddress:
    """A local address usable as a source, with the attributes RFC 6724 needs.

    *address* may be given as text (``"fe80::1%eth0"`` sets *interface* to ``eth0`` when it
    is not given). ``prefixlen`` bounds ``CommonPrefixLen`` (source rule 8 and destination
    rule 9); unknown means 64 for IPv6 and 32 for IPv4. ``ifindex`` is the interface index
    used as the scope id of link-local pairs. ``str()`` gives the address text.
    """

    address: IPAddress
    deprecated: bool = field(default=False, kw_only=True)
    temporary: bool = field(default=False, kw_only=True)
    home: bool = field(default=False, kw_only=True)
    care_of: bool = field(default=False, kw_only=True)
    interface: str | None = field(default=None, kw_only=True)
    ifindex: int | None = field(default=None, kw_only=True)
    prefixlen: int | None = field(default=None, kw_only=True)
    # Derived once here because ranking reads them for every pair on a hot path.
    scope: Scope = field(init=False, repr=False, compare=False)
    kind: AddressKind = field(init=False, repr=False, compare=False)
    text: str = field(init=False, repr=False, compare=False)
    _int: int = field(init=False, repr=False, compare=False)
    _cpl_limit: int = field(init=False, repr=False, compare=False)
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        address: object = self.address
        interface = self.interface
        if isinstance(address, str):
            address, zone = parse_address(address)
            if interface is None:
                interface = zone
        elif isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
            if interface is None:
                interface = address.scope_id
            address = ipaddress.IPv6Address(int(address))
        if not isinstance(address, ipaddress.IPv4Address | ipaddress.IPv6Address):
            raise TypeError(f"address must be an IP address or str, not {type(address).__name__}")
        if interface is not None and not isinstance(interface, str):
            raise TypeError("interface must be a str or None")
        if self.ifindex is not None and (
            not isinstance(self.ifindex, int) or isinstance(self.ifindex, bool) or self.ifindex < 0
        ):
            raise ValueError(f"ifindex must be a non-negative int, not {self.ifindex!r}")
        bits = address.max_prefixlen
        if self.prefixlen is not None and (
            not isinstance(self.prefixlen, int)
            or isinstance(self.prefixlen, bool)
            or not 0 <= self.prefixlen <= bits
        ):
            raise ValueError(f"prefixlen must be an int in 0..{bits}, not {self.prefixlen!r}")
        setattr_ = object.__setattr__
        setattr_(self, "address", address)
        setattr_(self, "interface", interface)
        setattr_(self, "scope", scope_of(address))
        setattr_(self, "kind", kind_of(address))
        setattr_(self, "text", str(address))
        setattr_(self, "_int", int(address))
        default_limit = 64 if bits == 128 else 32
        setattr_(
            self, "_cpl_limit", self.prefixlen if self.prefixlen is not None else default_limit
        )
        setattr_(
            self,
            "_hash",
            hash(
                (
                    address,
                    self.deprecated,
                    self.temporary,
                    self.home,
                    self.care_of,
                    interface,
                    self.ifindex,
                    self.prefixlen,
                )
            ),
        )

    def __hash__(self) -> int:
        return self._hash

    def __str__(self) -> str:
        return self.text

    @property
    def version(self) -> int:
        """IP version: 4 or 6."""
        return self.address.version

    def common_prefix_len(self, destination: IPAddress) -> int:
        """RFC 6724 ``CommonPrefixLen(self, destination)``, bounded by this source's prefix."""
        if destination.version != self.address.version:
            raise ValueError("source and destination are of different families")
        length = destination.max_prefixlen - (self._int ^ int(destination)).bit_length()
        return min(length, self._cpl_limit)


# --- source selection -------------------------------------------------------------------------

SourceKey = tuple[int, int, int, int, int, int, int, int, int]
# Position in a SourceKey -> source rule number.
SOURCE_KEY_RULES: Final = (1, 2, 2, 3, 4, 5, 6, 7, 8)


def _on_interface(source: SourceAddress, interface: str | int | None) -> bool:
    if interface is None:
        return False
    if isinstance(interface, int):
        return source.ifindex == interface
    return source.interface == interface


def source_key(
    source: SourceAddress,
    destination: IPAddress,
    *,
    dst_scope: Scope,
    dst_label: int,
    policy: PolicyTable,
    outgoing_interface: str | int | None,
    prefer_temporary: bool,
) -> SourceKey:
    """Sort key of *source* for *destination*: smaller is better, one slot per rule.

    Rule 4 (home addresses) is not a total order, so its slot is always 0 here and
    :func:`compare_sources` applies it pairwise when mobility flags are present.
    """
    scope = source.scope
    dst_int = int(destination)
    return (
        0 if source._int == dst_int else 1,
        0 if scope >= dst_scope else 1,
        scope if scope >= dst_scope else -scope,
        1 if source.deprecated else 0,
        0,
        0 if _on_interface(source, outgoing_interface) else 1,
        0 if policy.lookup(source.address)[1] == dst_label else 1,
        0 if source.temporary == prefer_temporary else 1,
        -min(destination.max_prefixlen - (source._int ^ dst_int).bit_length(), source._cpl_limit),
    )


def home_preference(a: SourceAddress, b: SourceAddress) -> int:
    """RFC 6724 rule 4 between two sources: -1 prefers *a*, 1 prefers *b*, 0 neither."""
    a_both = a.home and a.care_of
    b_both = b.home and b.care_of
    if a_both != b_both:
        return -1 if a_both else 1
    a_home_only = a.home and not a.care_of
    b_home_only = b.home and not b.care_of
    if a_home_only and b.care_of and not b.home:
        return -1
    if b_home_only and a.care_of and not a.home:
        return 1
    return 0


def has_mobility(sources: Iterable[SourceAddress]) -> bool:
    """True if any source is flagged home or care-of (rule 4 then needs pairwise compares)."""
    return any(s.home or s.care_of for s in sources)


def _compare(
    a_key: tuple[int, ...],
    b_key: tuple[int, ...],
    a: SourceAddress | None,
    b: SourceAddress | None,
    rule4_slot: int,
) -> int:
    head_a, head_b = a_key[:rule4_slot], b_key[:rule4_slot]
    if head_a != head_b:
        return -1 if head_a < head_b else 1
    if a is not None and b is not None:
        pref = home_preference(a, b)
        if pref:
            return pref
    tail_a, tail_b = a_key[rule4_slot + 1 :], b_key[rule4_slot + 1 :]
    if tail_a != tail_b:
        return -1 if tail_a < tail_b else 1
    return 0


def _as_destination(destination: IPAddress | str) -> IPAddress:
    """*destination* as an address object; text (``"fe80::1%eth0"`` too) is parsed."""
    if isinstance(destination, str):
        try:
            ip, zone = parse_address(destination)
        except ValueError as exc:
            raise ValueError(f"destination: {exc}") from None
        if zone is not None:
            # Kept on the object like an IPv6Address given with a scope id.
            return ipaddress.IPv6Address(f"{ip}%{zone}")
        return ip
    if not isinstance(destination, ipaddress.IPv4Address | ipaddress.IPv6Address):
        raise TypeError(
            f"destination must be an IP address or str, not {type(destination).__name__}"
        )
    return destination


def _destination_view(destination: IPAddress | str) -> IPAddress:
    destination = _as_destination(destination)
    if isinstance(destination, ipaddress.IPv6Address):
        if destination.scope_id is not None:
            destination = ipaddress.IPv6Address(int(destination))
        return ipv4_mapped_to_ipv4(destination)
    return destination


def _check_sources(candidates: Iterable[SourceAddress | str]) -> list[SourceAddress]:
    if isinstance(candidates, str):
        raise TypeError("candidates must be an iterable of SourceAddress or str, not one str")
    result = []
    for candidate in candidates:
        if isinstance(candidate, str):
            try:
                ip, zone = parse_address(candidate)
            except ValueError as exc:
                raise ValueError(f"candidate source: {exc}") from None
            result.append(SourceAddress(ip, interface=zone))
        elif isinstance(candidate, SourceAddress):
            result.append(candidate)
        else:
            raise TypeError(
                f"candidates must be SourceAddress objects or address strings, not "
                f"{type(candidate).__name__}"
            )
    return result


def _best_source(
    destination: IPAddress,
    candidates: Sequence[SourceAddress],
    *,
    policy: PolicyTable,
    outgoing_interface: str | int | None,
    prefer_temporary: bool,
    mobility: bool,
) -> SourceAddress | None:
    dst_scope = scope_of(destination)
    dst_label = policy.lookup(destination)[1]
    best: SourceAddress | None = None
    best_key: SourceKey | None = None
    version = destination.version
    for source in candidates:
        if source.address.version != version:
            continue
        key = source_key(
            source,
            destination,
            dst_scope=dst_scope,
            dst_label=dst_label,
            policy=policy,
            outgoing_interface=outgoing_interface,
            prefer_temporary=prefer_temporary,
        )
        if best is None or best_key is None:
            best, best_key = source, key
        elif mobility:
            if _compare(key, best_key, source, best, 4) < 0:
                best, best_key = source, key
        elif key < best_key:
            best, best_key = source, key
    return best


def select_source(
    destination: IPAddress | str,
    candidates: Iterable[SourceAddress | str],
    *,
    policy: PolicyTable = DEFAULT_POLICY_TABLE,
    outgoing_interface: str | int | None = None,
    prefer_temporary: bool = True,
) -> SourceAddress | None:
    """Pick the source for *destination* among *candidates* by RFC 6724 source rules 1-8.

    Only candidates of the destination's family are considered (an IPv4-mapped destination
    counts as IPv4); ``None`` if there is none. *outgoing_interface* (name or index) enables
    rule 5. Equally good candidates keep their input order: the first one wins.

    *destination* and each candidate may be given as text (``"2001:db8::1"``,
    ``"fe80::1%eth0"``); a candidate given as text becomes ``SourceAddress(text)`` (no flags).
    Text that is no address raises ``ValueError``, another type ``TypeError``.
    """
    dst = _destination_view(destination)
    sources = _check_sources(candidates)
    return _best_source(
        dst,
        sources,
        policy=policy,
        outgoing_interface=outgoing_interface,
        prefer_temporary=prefer_temporary,
        mobility=has_mobility(sources),
    )


# --- destination ordering ---------------------------------------------------------------------

DestinationKey = tuple[int, int, int, int, int, int, int, int]
_UNUSABLE_KEY: Final[DestinationKey] = (1, 0, 0, 0, 0, 0, 0, 0)


def destination_key(
    destination: IPAddress,
    source: SourceAddress | None,
    policy: PolicyTable,
    usable: bool = True,
) -> DestinationKey:
    """Sort key of *destination* reached from *source*: one slot per rule 1-8, smaller first.

    Rule 4 sits at index 3 and is always 0 (applied pairwise when mobility flags exist).
    Unusable destinations share one key so they keep their input order.
    """
    if source is None or not usable:
        return _UNUSABLE_KEY
    precedence, label = policy.lookup(destination)
    dst_scope = scope_of(destination)
    native = kind_of(destination) not in _NOT_NATIVE and source.kind not in _NOT_NATIVE
    return (
        0,
        0 if dst_scope == source.scope else 1,
        1 if source.deprecated else 0,
        0,
        0 if policy.lookup(source.address)[1] == label else 1,
        -precedence,
        0 if native else 1,
        int(dst_scope),
    )


def _in_prefixes(
    ip: IPAddress, prefixes: Sequence[ipaddress.IPv6Network | ipaddress.IPv4Network]
) -> bool:
    return any(ip in prefix for prefix in prefixes if prefix.version == ip.version)


def apply_rule9(
    order: list[int],
    same_run: Callable[[int, int], bool],
    rule9_len: Sequence[int | None],
) -> list[int]:
    """Apply destination rule 9 to *order* (indexes already sorted by rules 1-8).

    Within each run of consecutive entries that tie on rules 1-8, the entries with a
    ``rule9_len`` (IPv6, not skipped) are reordered among the slots they occupy by descending
    common prefix length, stably; the others keep their slots.
    """
    result = list(order)
    start = 0
    n = len(order)
    while start < n:
        end = start + 1
        while end < n and same_run(order[end - 1], order[end]):
            end += 1
        if end - start > 1:
            slots = [i for i in range(start, end) if rule9_len[order[i]] is not None]
            if len(slots) > 1:
                members = sorted((order[i] for i in slots), key=lambda j: -(rule9_len[j] or 0))
                for slot, member in zip(slots, members, strict=True):
                    result[slot] = member
        start = end
    return result


def sort_destinations(
    destinations: Iterable[IPAddress | str],
    candidates: Iterable[SourceAddress | str],
    *,
    policy: PolicyTable = DEFAULT_POLICY_TABLE,
    skip_rule9_prefixes: Iterable[ipaddress.IPv6Network | ipaddress.IPv4Network | str] = (),
    reachable: Callable[[IPAddress], bool] | None = None,
    prefer_temporary: bool = True,
) -> list[tuple[IPAddress, SourceAddress | None]]:
    """Order *destinations* by RFC 6724 destination rules 1-10.

    Each destination's source is chosen from *candidates* with :func:`select_source`. Returns
    ``(destination, source_or_None)`` in the new order; the destination objects are the ones
    given, except that destinations given as text (``"2001:db8::1"``, ``"fe80::1%eth0"``) come
    back parsed, and candidates given as text become ``SourceAddress(text)``. Text that is no
    address raises ``ValueError`` before anything is sorted. ``reachable(ip) -> False`` marks
    a destination known unreachable (rule 1). Rule 9 applies to IPv6 only and not to
    destinations inside *skip_rule9_prefixes*. The sort is stable: destinations that tie on
    every rule keep their input order (rule 10).
    """
    if isinstance(destinations, str):
        raise TypeError("destinations must be an iterable of addresses, not one str")
    originals = [_as_destination(d) for d in destinations]
    dests = originals
    views = [_destination_view(d) for d in dests]
    sources = _check_sources(candidates)
    skip = tuple(
        p
        if isinstance(p, ipaddress.IPv4Network | ipaddress.IPv6Network)
        else ipaddress.ip_network(p)
        for p in skip_rule9_prefixes
    )
    mobility = has_mobility(sources)
    chosen: list[SourceAddress | None] = []
    keys: list[DestinationKey] = []
    rule9: list[int | None] = []
    for dst in views:
        src = _best_source(
            dst,
            sources,
            policy=policy,
            outgoing_interface=None,
            prefer_temporary=prefer_temporary,
            mobility=mobility,
        )
        usable = src is not None and (reachable is None or reachable(dst))
        chosen.append(src)
        keys.append(destination_key(dst, src, policy, usable))
        if usable and src is not None and dst.version == 6 and not _in_prefixes(dst, skip):
            rule9.append(src.common_prefix_len(dst))
        else:
            rule9.append(None)
    indexes = list(range(len(views)))
    if mobility:

        def cmp(i: int, j: int) -> int:
            a, b = chosen[i], chosen[j]
            ok = keys[i][0] == 0 and keys[j][0] == 0
            return _compare(keys[i], keys[j], a if ok else None, b if ok else None, 3)

        order = sorted(indexes, key=functools.cmp_to_key(cmp))
        order = apply_rule9(order, lambda i, j: cmp(i, j) == 0, rule9)
    else:
        order = sorted(indexes, key=keys.__getitem__)
        order = apply_rule9(order, lambda i, j: keys[i] == keys[j], rule9)
    return [(originals[i], chosen[i]) for i in order]
