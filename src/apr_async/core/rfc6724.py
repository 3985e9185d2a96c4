"""RFC 6724 default address selection: destination rules 1-10, sort_destinations (sans-IO).

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

:class:`SourceAddress` is in :mod:`.source_address`, the source rules and
:func:`select_source` in :mod:`.source_selection`; both are re-exported here.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable, Iterable, Sequence
from typing import Final

from apr_async.core.addresses import AddressKind, IPAddress, kind_of, scope_of
from apr_async.core.policy_table import DEFAULT_POLICY_TABLE, PolicyTable

# SourceAddress and the source rules live in their own modules; they are re-exported here, the
# module named for the RFC, for the callers that take all of RFC 6724 from one place.
from apr_async.core.source_address import SourceAddress
from apr_async.core.source_selection import (
    SOURCE_KEY_RULES,
    SOURCE_RULES,
    as_destination,
    best_source,
    check_sources,
    compare_keys,
    destination_view,
    has_mobility,
    home_preference,
    select_source,
    source_key,
)

__all__ = [
    "DESTINATION_RULES",
    "SOURCE_KEY_RULES",
    "SOURCE_RULES",
    "SourceAddress",
    "apply_rule9",
    "destination_key",
    "home_preference",
    "select_source",
    "sort_destinations",
    "source_key",
]

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
    originals = [as_destination(d) for d in destinations]
    dests = originals
    views = [destination_view(d) for d in dests]
    sources = check_sources(candidates)
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
        src = best_source(
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
            return compare_keys(keys[i], keys[j], a if ok else None, b if ok else None, 3)

        order = sorted(indexes, key=functools.cmp_to_key(cmp))
        order = apply_rule9(order, lambda i, j: cmp(i, j) == 0, rule9)
    else:
        order = sorted(indexes, key=keys.__getitem__)
        order = apply_rule9(order, lambda i, j: keys[i] == keys[j], rule9)
    return [(originals[i], chosen[i]) for i in order]
