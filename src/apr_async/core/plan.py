"""Levels 1 and 4 of the ranking as a plan: for one input (destinations, sources, kernel
choices, translators, policy), every usable pair in RFC 6724 order with its static reason and
the keys the per-call levels need (sans-IO). Plans are cached by
:mod:`apr_async.core.ranking`, which applies failures and latency to them."""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable, Sequence
from typing import Any, Final, NamedTuple

from apr_async.core import reasons
from apr_async.core.addr_pair import AddrPair, SockAddr, _make_pair
from apr_async.core.addresses import AddressKind, IPAddress, address_key
from apr_async.core.failures import FailureTable
from apr_async.core.families import AF_INET, AF_INET6
from apr_async.core.latency import LatencyTable
from apr_async.core.policy_table import PolicyTable
from apr_async.core.reach import _IMPOSSIBLE, _LOCAL_KINDS, _Dest, _reach
from apr_async.core.rfc6724 import (
    SOURCE_KEY_RULES,
    SourceAddress,
    apply_rule9,
    destination_key,
    home_preference,
    source_key,
)


class _Entry(NamedTuple):
    """One pair in RFC 6724 order with what the per-call levels need, precomputed."""

    pair: AddrPair  # with its static (RFC 6724) reason
    source_slot: int  # index into _Plan.source_keys
    dst_key: int  # address_key of the destination
    dst_int: int
    fail_key: tuple[int, int, int]  # FailureTable key
    v6: bool
    doubt: str | None
    head: str  # "GUA -> GUA"
    rfc: str  # the RFC 6724 clause of the reason
    base_key: tuple[int, int, int, float, int, int]  # sort key when nothing is measured


class _Memo(NamedTuple):
    """The last result of levels 2 and 3 for a plan, and what it was computed from.

    It stands while both tables keep their versions (the failure table's generation, which
    moves when an entry expires, too) and the bias is the same. Only the age of a recent
    failure in a reason depends on ``now`` beyond that: those pairs are made again with the
    new ``now`` from their ``failing`` recipes, ``(index in pairs, recipe)``.
    """

    latency: LatencyTable | None
    latency_version: int
    failures: FailureTable | None
    failures_version: int
    bias_ms: float
    now: float
    pairs: tuple[AddrPair, ...]
    failing: tuple[tuple[int, reasons.Recipe], ...]


class _Plan(NamedTuple):
    """The cached result of levels 1 and 4 for one input."""

    entries: tuple[_Entry, ...]
    pairs: tuple[AddrPair, ...]
    source_keys: tuple[int, ...]
    memo: list[_Memo]  # empty or one: the last result of levels 2 and 3


# Two caches of plans. The fast one is keyed by id() of the input objects, because hashing
# ipaddress objects runs Python code, and keeps those objects alive next to the plan (see
# _identity_key for why a hit is always right). The other is keyed by value, for inputs made
# of new but equal objects (a numeric host parsed again, a new interface snapshot).
_PLANS: dict[tuple[object, ...], tuple[_Plan, tuple[object, ...]]] = {}
_PLANS_BY_VALUE: dict[tuple[Any, ...], _Plan] = {}
_PLANS_MAX: Final = 512


def _first_difference(a: tuple[int, ...], b: tuple[int, ...]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        if x != y:
            return i
    return None


def _source_order(
    dst: _Dest,
    candidates: list[tuple[int, SourceAddress, str | None]],
    *,
    policy: PolicyTable,
    kernel_ip: IPAddress | None,
    outgoing: str | int | None,
    mobility: bool,
) -> tuple[list[tuple[int, SourceAddress, str | None]], list[str]]:
    """Sort one destination's sources by RFC 6724 source rules; a clause for each says why."""
    label = policy.lookup(dst.view)[1]
    keys = {
        index: source_key(
            src,
            dst.view,
            dst_scope=dst.scope,
            dst_label=label,
            policy=policy,
            outgoing_interface=outgoing,
            prefer_temporary=True,
        )
        for index, src, _ in candidates
    }

    def tie(index: int, src: SourceAddress) -> tuple[int, int]:
        return (0 if src.address == kernel_ip else 1, index)

    if mobility:

        def cmp(
            a: tuple[int, SourceAddress, str | None], b: tuple[int, SourceAddress, str | None]
        ) -> int:
            ka, kb = keys[a[0]], keys[b[0]]
            result = _compare_source_keys(ka, kb, a[1], b[1])
            if result:
                return result
            ta, tb = tie(a[0], a[1]), tie(b[0], b[1])
            return -1 if ta < tb else (1 if ta > tb else 0)

        ordered = sorted(candidates, key=functools.cmp_to_key(cmp))
    else:
        ordered = sorted(candidates, key=lambda c: (keys[c[0]], *tie(c[0], c[1])))

    def why(
        a: tuple[int, SourceAddress, str | None], b: tuple[int, SourceAddress, str | None]
    ) -> str:
        position = _first_difference(keys[a[0]], keys[b[0]])
        if (position is None or position > 4) and mobility and home_preference(a[1], b[1]):
            return reasons.source_rule(4)
        if position is not None:
            return reasons.source_rule(SOURCE_KEY_RULES[position])
        if kernel_ip is not None and a[1].address == kernel_ip:
            return reasons.KERNEL_TIE
        return reasons.ORDER_TIE

    first = ordered[0]
    clauses = reasons.source_clauses(
        [item[1].text for item in ordered], [why(first, item) for item in ordered[1:]]
    )
    return ordered, clauses


def _compare_source_keys(
    ka: tuple[int, ...], kb: tuple[int, ...], a: SourceAddress, b: SourceAddress
) -> int:
    if ka[:4] != kb[:4]:
        return -1 if ka[:4] < kb[:4] else 1
    pref = home_preference(a, b)
    if pref:
        return pref
    if ka[5:] != kb[5:]:
        return -1 if ka[5:] < kb[5:] else 1
    return 0


#: One destination with its usable sources in order: (destination, zone, ordered candidates
#: (index, source, doubt), the source clause of each, destination sort key, rule 9 length).
_PerDest = tuple[
    _Dest,
    int | None,
    list[tuple[int, SourceAddress, str | None]],
    list[str],
    tuple[int, ...],
    int | None,
]


def _build_plan(
    dests: list[tuple[_Dest, int | None]],
    sources: Sequence[SourceAddress],
    port: int,
    *,
    kernel: list[IPAddress | SourceAddress | None],
    ula_translated: bool,
    nat44_seen: bool,
    policy: PolicyTable,
    skip_rule9: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...],
) -> _Plan:
    """Levels 1 and 4 for one input: each destination's usable sources in order, the
    destinations in order, then the pairs with their static reasons."""
    mobility = any(s.home or s.care_of for s in sources)
    per_dest = _per_destination(
        dests,
        sources,
        kernel,
        ula_translated=ula_translated,
        nat44_seen=nat44_seen,
        policy=policy,
        skip_rule9=skip_rule9,
        mobility=mobility,
    )
    order, dest_rule = _destination_order(per_dest, mobility)
    return _entries(per_dest, order, dest_rule, port)


def _per_destination(
    dests: list[tuple[_Dest, int | None]],
    sources: Sequence[SourceAddress],
    kernel: list[IPAddress | SourceAddress | None],
    *,
    ula_translated: bool,
    nat44_seen: bool,
    policy: PolicyTable,
    skip_rule9: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...],
    mobility: bool,
) -> list[_PerDest]:
    """Level 1 and the RFC 6724 source rules: for each destination with a usable source,
    its sources in order and its destination sort key (destinations without one drop out)."""
    local = frozenset(s.address for s in sources)
    by_address = {s.address: s for s in sources}
    private_v4_doubtful = not nat44_seen and any(s.kind is AddressKind.PUBLIC_IPV4 for s in sources)
    per_dest: list[_PerDest] = []
    for (dst, zone), kernel_choice in zip(dests, kernel, strict=True):
        candidates = []
        for index, src in enumerate(sources):
            if (src.address.version == 6) != dst.v6:
                continue
            doubt = _reach(
                src,
                dst,
                zone,
                local,
                ula_translated=ula_translated,
                private_v4_doubtful=private_v4_doubtful,
            )
            if doubt is not _IMPOSSIBLE:
                candidates.append((index, src, doubt))
        if dst.kind in _LOCAL_KINDS and any(c[2] is None for c in candidates):
            # Another source cannot do better than the loopback one: it would only add
            # doomed attempts after a refusal.
            candidates = [c for c in candidates if c[2] is None]
        if not candidates:
            continue
        kernel_src = (
            kernel_choice
            if isinstance(kernel_choice, SourceAddress)
            else by_address.get(kernel_choice)
            if kernel_choice is not None
            else None
        )
        kernel_ip = (
            kernel_choice.address if isinstance(kernel_choice, SourceAddress) else kernel_choice
        )
        outgoing: str | int | None = None
        if kernel_src is not None:
            outgoing = (
                kernel_src.ifindex if kernel_src.ifindex is not None else kernel_src.interface
            )
        ordered, source_clauses = _source_order(
            dst,
            candidates,
            policy=policy,
            kernel_ip=kernel_ip,
            outgoing=outgoing,
            mobility=mobility,
        )
        chosen = ordered[0][1]
        key = destination_key(dst.view, chosen, policy)
        rule9 = (
            chosen.common_prefix_len(dst.view)
            if dst.v6 and not any(dst.view in p for p in skip_rule9 if p.version == 6)
            else None
        )
        per_dest.append((dst, zone, ordered, source_clauses, key, rule9))
    return per_dest


def _destination_order(
    per_dest: list[_PerDest], mobility: bool
) -> tuple[list[int], Callable[[int, int], int]]:
    """Level 4 for the destinations: their RFC 6724 order (indexes into ``per_dest``), and
    the rule that tells two of them apart (for the reasons)."""
    count = len(per_dest)
    indexes = list(range(count))
    keys = [d[4] for d in per_dest]
    rule9s = [d[5] for d in per_dest]
    chosen_src = [d[2][0][1] for d in per_dest]

    def cmp(i: int, j: int) -> int:
        ki, kj = keys[i], keys[j]
        if ki[:3] != kj[:3]:
            return -1 if ki[:3] < kj[:3] else 1
        pref = home_preference(chosen_src[i], chosen_src[j])
        if pref:
            return pref
        return -1 if ki[4:] < kj[4:] else (1 if ki[4:] > kj[4:] else 0)

    if mobility:
        order = sorted(indexes, key=functools.cmp_to_key(cmp))
        order = apply_rule9(order, lambda i, j: cmp(i, j) == 0, rule9s)
    else:
        order = sorted(indexes, key=keys.__getitem__)
        order = apply_rule9(order, lambda i, j: keys[i] == keys[j], rule9s)

    def dest_rule(i: int, j: int) -> int:
        position = _first_difference(keys[i], keys[j])
        late = position is None or position > 3
        if late and mobility and home_preference(chosen_src[i], chosen_src[j]):
            return 4
        if position is not None:
            return position + 1
        if rule9s[i] is not None and rule9s[j] is not None and rule9s[i] != rule9s[j]:
            return 9
        return 10

    return order, dest_rule


def _entries(
    per_dest: list[_PerDest],
    order: list[int],
    dest_rule: Callable[[int, int], int],
    port: int,
) -> _Plan:
    """The plan's pairs in order, usable before doubtful, each with its static reason."""
    count = len(per_dest)
    usable: list[_Entry] = []
    doubtful: list[_Entry] = []
    source_keys: list[int] = []
    slots: dict[int, int] = {}
    emitted: set[tuple[int, SockAddr, SockAddr]] = set()
    for position, i in enumerate(order):
        dst, zone, ordered, source_clauses, _, _ = per_dest[i]
        # Each destination is explained against its neighbour: the first one against the
        # second, every other one against the one just before it.
        if count == 1:
            dest_clause = reasons.destination_clause(None, True, None)
        elif position == 0:
            other = per_dest[order[1]][0]
            dest_clause = reasons.destination_clause(dest_rule(i, order[1]), True, other.text)
        else:
            before = order[position - 1]
            other = per_dest[before][0]
            dest_clause = reasons.destination_clause(dest_rule(before, i), False, other.text)
        for rank, (_, src, doubt) in enumerate(ordered):
            family = AF_INET6 if dst.v6 else AF_INET
            if dst.v6:
                src_scope = (src.ifindex or 0) if src.kind is AddressKind.LINK_LOCAL else 0
                dst_scope = 0
                if dst.needs_zone:
                    dst_scope = zone if zone is not None else (src.ifindex or 0)
                sa: SockAddr = (src.text, 0, 0, src_scope)
                da: SockAddr = (dst.text, port, 0, dst_scope)
            else:
                sa = (src.text, 0)
                da = (dst.text, port)
            if (family, sa, da) in emitted:
                continue  # e.g. fe80::1 given both with and without its zone
            emitted.add((family, sa, da))
            head = reasons.head(src.kind, dst.kind)
            rfc = f"RFC 6724: {dest_clause}, {source_clauses[rank]}"
            reason = reasons.static_reason(head, doubt, rfc)
            src_key = address_key(src.address)
            slot = slots.get(src_key)
            if slot is None:
                slot = slots[src_key] = len(source_keys)
                source_keys.append(src_key)
            dst_key = address_key(dst.view)
            entry = _Entry(
                _make_pair(family, sa, da, (reason, None, False)),
                slot,
                dst_key,
                int(dst.view),
                (src_key, dst_key, port),
                dst.v6,
                doubt,
                head,
                rfc,
                (0, 0, 0, 0.0, 0, 0),  # final value set below, once the order is known
            )
            (usable if doubt is None else doubtful).append(entry)
    entries = tuple(
        entry._replace(base_key=(0 if entry.doubt is None else 1, 0, 1, 0.0, 0, index))
        for index, entry in enumerate(usable + doubtful)
    )
    return _Plan(entries, tuple(e.pair for e in entries), tuple(source_keys), [])


# --- the public entry point -------------------------------------------------------------------
