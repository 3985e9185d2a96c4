"""RFC 6724 section 5: the source selection rules 1-8, and select_source (sans-IO).

The deviations and interpretations :mod:`.rfc6724` lists apply here too (IPv4 handled
natively, other-family candidates never considered, rule 5 as "known to be on the outgoing
interface", rule 5.5 not implemented, rule 7 preferring temporary addresses by default).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import Final

from apr_async.core.addresses import (
    IPAddress,
    Scope,
    ipv4_mapped_to_ipv4,
    parse_address,
    scope_of,
)
from apr_async.core.policy_table import DEFAULT_POLICY_TABLE, PolicyTable
from apr_async.core.source_address import SourceAddress

__all__ = [
    "SOURCE_KEY_RULES",
    "SOURCE_RULES",
    "SourceKey",
    "as_destination",
    "best_source",
    "check_sources",
    "compare_keys",
    "destination_view",
    "has_mobility",
    "home_preference",
    "select_source",
    "source_key",
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
    :func:`compare_keys` applies it pairwise when mobility flags are present.
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


def compare_keys(
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


def as_destination(destination: IPAddress | str) -> IPAddress:
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


def destination_view(destination: IPAddress | str) -> IPAddress:
    destination = as_destination(destination)
    if isinstance(destination, ipaddress.IPv6Address):
        if destination.scope_id is not None:
            destination = ipaddress.IPv6Address(int(destination))
        return ipv4_mapped_to_ipv4(destination)
    return destination


def check_sources(candidates: Iterable[SourceAddress | str]) -> list[SourceAddress]:
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


def best_source(
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
            if compare_keys(key, best_key, source, best, 4) < 0:
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
    dst = destination_view(destination)
    sources = check_sources(candidates)
    return best_source(
        dst,
        sources,
        policy=policy,
        outgoing_interface=outgoing_interface,
        prefer_temporary=prefer_temporary,
        mobility=has_mobility(sources),
    )

