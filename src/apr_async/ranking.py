"""Rank (source, destination) address pairs: the four-level precedence, with reasons (sans-IO).

:func:`rank_pairs` orders every pair by, in this precedence:

1. **Reachability.** A pair whose source cannot possibly reach the destination is *dropped*:
   a source of a smaller scope than the destination (link-local or site-local source to a
   global destination, ``169.254/16`` to a routed IPv4 address), a loopback source to a
   non-local destination, a link-local IPv6 destination from a non-link-local source or from
   a link-local source on another interface than the destination's zone. A family without
   any usable source therefore yields no pair at all. A pair that *probably* cannot work is
   kept but placed *last*: a ULA source to a global IPv6 destination when no NPTv6/NAT66
   translator was seen (one may exist undetected); an RFC 1918 or CGN (``100.64/10``) source
   to a public IPv4 destination when the host also has a public IPv4 source and no NAT44 was
   seen (a host whose only IPv4 sources are private is the usual NAT44 home: unaffected); a
   non-loopback source to a loopback destination (only when no loopback source of that
   family exists).
2. **Recent failures** (:class:`~apr_async.latency.FailureTable`): those pairs go after the
   others; they are reordered, never removed.
3. **Measured latency** (exact or inherited from the longest known prefix): measured pairs
   come first, fastest first, except that IPv6 wins unless it is more than ``ipv6_bias_ms``
   slower than IPv4.
4. **RFC 6724** for the rest: destinations by :func:`~apr_async.rfc6724.sort_destinations`
   rules, and for each destination its RFC 6724 source first, then its other usable sources
   by the same source rules; the kernel's own choice breaks ties between equally good sources
   (and tells source rule 5 which interface is the outgoing one).

Levels 1 and 4 depend only on the addresses, so they are computed once per distinct input
and cached (with the ready-made pairs). Levels 2 and 3 are applied from the tables and their
result is memoised with the tables' versions: it stands until either table changes or a
failure expires (the failure table's generation), recent failures included.
"""

from __future__ import annotations

import functools
import ipaddress
import math
import socket
from collections.abc import Collection, Mapping, Sequence
from enum import Enum, StrEnum
from typing import Any, Final, Literal, NamedTuple

from apr_async import reasons
from apr_async.addresses import AddressKind, IPAddress, Scope, address_key, kind_of, scope_of
from apr_async.config import str_tuple
from apr_async.latency import Estimate, Failure, FailureTable, LatencyTable
from apr_async.rfc6724 import (
    DEFAULT_POLICY_TABLE,
    SOURCE_KEY_RULES,
    PolicyTable,
    SourceAddress,
    apply_rule9,
    destination_key,
    home_preference,
    source_key,
)

__all__ = ["AddrPair", "Translator", "rank_pairs"]

SockAddr = tuple[str, int] | tuple[str, int, int, int]


class Translator(StrEnum):
    """Address translators seen on the path (they change which sources can work)."""

    NAT44 = "nat44"
    NAT64 = "nat64"
    NPTV6 = "nptv6"
    NAT66 = "nat66"


class _AddrPairFields(NamedTuple):
    family: int
    source: SockAddr
    destination: SockAddr


class AddrPair(_AddrPairFields):
    """A ranked ``(family, source, destination)``; unpack as ``AF, SA, DA = pair``.

    ``source`` is ready for ``bind()`` (``(ip, 0)`` or ``(ip, 0, 0, scope_id)``) and
    ``destination`` for ``connect()`` (``(ip, port)`` or ``(ip, port, 0, scope_id)``); IPv6
    link-local addresses carry their interface index as scope id. Extra read-only
    attributes: ``reason`` (why the pair is at its place, in words), ``rtt`` (seconds, measured
    or inherited, else ``None``) and ``failing`` (it failed recently). Equality, hashing,
    ``len()`` and unpacking see only the three fields.
    """

    # No __slots__: a tuple subclass cannot have non-empty slots, so the extras live in the
    # instance __dict__ under one key, "_meta" = (reason or recipe, rtt, failing).

    def __new__(
        cls,
        family: int,
        source: SockAddr,
        destination: SockAddr,
        *,
        reason: str = "",
        rtt: float | None = None,
        failing: bool = False,
    ) -> AddrPair:
        """Build a pair (normally :func:`rank_pairs` does this)."""
        self = tuple.__new__(cls, (family, source, destination))
        self.__dict__["_meta"] = (reason, rtt, failing)
        return self

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"AddrPair is immutable: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"AddrPair is immutable: cannot delete {name!r}")

    def _get_meta(self) -> tuple[Any, float | None, bool]:
        meta: tuple[Any, float | None, bool] = self.__dict__.get("_meta", ("", None, False))
        return meta

    @property
    def reason(self) -> str:
        """Why this pair is at its place, as a network engineer would say it."""
        meta = self._get_meta()
        reason = meta[0]
        if not isinstance(reason, str):
            # Dynamic reasons are formatted only when read: most callers never look.
            reason = reasons.dynamic_reason(reason)
            self.__dict__["_meta"] = (reason, meta[1], meta[2])
        return reason

    @property
    def rtt(self) -> float | None:
        """Measured or inherited round-trip time in seconds, or ``None``."""
        return self._get_meta()[1]

    @property
    def failing(self) -> bool:
        """True if this pair failed recently (it was moved after the others)."""
        return self._get_meta()[2]

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_pair,
            ((self.family, self.source, self.destination), (self.reason, self.rtt, self.failing)),
        )


def _rebuild_pair(
    fields: tuple[int, SockAddr, SockAddr], extras: tuple[str, float | None, bool]
) -> AddrPair:
    return _make_pair(*fields, extras)


_new_tuple = tuple.__new__


def _make_pair(
    family: int, source: SockAddr, destination: SockAddr, meta: tuple[Any, float | None, bool]
) -> AddrPair:
    pair: AddrPair = _new_tuple(AddrPair, (family, source, destination))
    pair.__dict__["_meta"] = meta
    return pair


# --- reachability ---------------------------------------------------------------------------



class _Unreachable(Enum):
    """The source cannot possibly reach the destination: the pair is dropped."""

    PAIR = "unreachable"


_IMPOSSIBLE: Final = _Unreachable.PAIR
_DOUBT_LOOPBACK: Final = "not a loopback source"
_DOUBT_ULA: Final = "needs NPTv6/NAT66, none seen"
_DOUBT_PRIVATE_V4: Final = "needs NAT44, none seen"
_LOCAL_KINDS: Final = frozenset({AddressKind.LOOPBACK, AddressKind.UNSPECIFIED})
_NOT_SOURCES: Final = frozenset({AddressKind.UNSPECIFIED, AddressKind.MULTICAST})
_ULA_BLOCKED_KINDS: Final = frozenset(
    {AddressKind.GUA, AddressKind.SIXTO4, AddressKind.TEREDO, AddressKind.RESERVED}
)
_ULA_TRANSLATORS: Final = frozenset({Translator.NPTV6.value, Translator.NAT66.value})
_PRIVATE_V4_KINDS: Final = frozenset({AddressKind.RFC1918, AddressKind.CGN})


class _Dest(NamedTuple):
    """A destination as ranking sees it (classification cached per address object)."""

    original: IPAddress
    view: IPAddress  # IPv4-mapped IPv6 becomes the IPv4 address it carries
    v6: bool
    scope: Scope
    kind: AddressKind
    text: str
    needs_zone: bool  # IPv6 link-local (or link/interface-local multicast): needs a scope id


_DEST_CACHE: dict[IPAddress, _Dest] = {}
_DEST_CACHE_MAX: Final = 4096


def _dest_info(ip: IPAddress) -> _Dest:
    if not isinstance(ip, ipaddress.IPv4Address | ipaddress.IPv6Address):
        raise TypeError(f"destination must be an IP address, not {type(ip).__name__}")
    info = _DEST_CACHE.get(ip)
    if info is not None:
        return info
    view: IPAddress = ip
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id is not None:
            raise ValueError(f"pass the zone of {ip} as the zone index, not in the address")
        if ip.ipv4_mapped is not None:
            view = ip.ipv4_mapped
    scope = scope_of(view)
    kind = kind_of(view)
    v6 = view.version == 6
    info = _Dest(
        ip,
        view,
        v6,
        scope,
        kind,
        str(view),
        v6 and scope <= Scope.LINK_LOCAL and kind is not AddressKind.LOOPBACK,
    )
    if len(_DEST_CACHE) >= _DEST_CACHE_MAX:
        _DEST_CACHE.clear()
    _DEST_CACHE[ip] = info
    return info


def _reach(
    src: SourceAddress,
    dst: _Dest,
    zone: int | None,
    local: frozenset[IPAddress],
    *,
    ula_translated: bool,
    private_v4_doubtful: bool,
) -> str | Literal[_Unreachable.PAIR] | None:
    """``None`` if *src* can reach *dst*, a doubt (kept, placed last) or :data:`_IMPOSSIBLE`.

    *private_v4_doubtful*: the host has a public IPv4 source and no NAT44 was seen, so a
    private IPv4 source towards a public destination probably leaves untranslated.
    """
    skind = src.kind
    if skind in _NOT_SOURCES:
        return _IMPOSSIBLE
    if dst.kind in _LOCAL_KINDS:
        # Linux answers connect() to 127/8 or ::1 from any local address, but nothing
        # guarantees another system does: keep such pairs, after the loopback ones.
        return None if skind is AddressKind.LOOPBACK else _DOUBT_LOOPBACK
    if dst.view in local:
        return None  # one of this host's own addresses: routed through loopback
    if skind is AddressKind.LOOPBACK:
        return _IMPOSSIBLE  # RFC 1122 / RFC 4291: loopback sources never leave the host
    if dst.needs_zone:
        # A link-local destination is reachable only from a link-local source on the link
        # named by its zone (RFC 4007); without a zone, from each link-local source whose
        # interface index gives the zone.
        if skind is not AddressKind.LINK_LOCAL:
            return _IMPOSSIBLE
        if zone is not None:
            if src.ifindex is not None and src.ifindex != zone:
                return _IMPOSSIBLE
        elif src.ifindex is None:
            return _IMPOSSIBLE
        return None
    if src.scope < dst.scope:
        return _IMPOSSIBLE  # routers do not forward a smaller-scope source (RFC 4007 9)
    if skind is AddressKind.ULA and dst.kind in _ULA_BLOCKED_KINDS and not ula_translated:
        # An undetected NPTv6 may exist, so the pair is kept, last.
        return _DOUBT_ULA
    if private_v4_doubtful and skind in _PRIVATE_V4_KINDS and dst.kind is AddressKind.PUBLIC_IPV4:
        # A public source next to it suggests this host is routed, not NATed: the private
        # source needs a NAT44 that may exist undetected, so the pair is kept, last.
        return _DOUBT_PRIVATE_V4
    return None


# --- the cached RFC 6724 plan -----------------------------------------------------------------


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
    local = frozenset(s.address for s in sources)
    mobility = any(s.home or s.care_of for s in sources)
    by_address = {s.address: s for s in sources}
    private_v4_doubtful = not nat44_seen and any(
        s.kind is AddressKind.PUBLIC_IPV4 for s in sources
    )
    per_dest = []
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
            family = socket.AF_INET6 if dst.v6 else socket.AF_INET
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


def _check_number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{what} must be a number, not {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{what} must be finite, not {value!r}")
    return float(value)


def rank_pairs(
    destinations: Sequence[tuple[IPAddress, int | None]],
    sources: Sequence[SourceAddress],
    port: int,
    *,
    latency: LatencyTable | None = None,
    failures: FailureTable | None = None,
    now: float = 0.0,
    ipv6_bias_ms: float = 5.0,
    kernel_sources: Mapping[IPAddress, IPAddress | SourceAddress] | None = None,
    translators_seen: Collection[str] = frozenset(),
    policy: PolicyTable = DEFAULT_POLICY_TABLE,
    skip_rule9_prefixes: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network] = (),
) -> list[AddrPair]:
    """Return the (source, destination) pairs for *destinations*, best first, with reasons.

    *destinations* are ``(ip, zone_index_or_None)`` in DNS / RFC 6724 input order (duplicates
    are dropped; the zone index matters only for IPv6 link-local destinations); *sources* the
    local :class:`~apr_async.rfc6724.SourceAddress` es (with ``ifindex`` for link-local scope
    ids). *latency* and *failures* are read at time *now*. *kernel_sources* maps a destination
    to the source the kernel would pick. *translators_seen* holds :class:`Translator` values:
    NPTv6 or NAT66 make a ULA source usable towards global IPv6 destinations, NAT44 a private
    IPv4 source next to a public one usable towards public IPv4. Destination rule
    9 is skipped for destinations in *skip_rule9_prefixes*. See the module documentation for
    the order.

    Raises ``TypeError`` / ``ValueError`` on malformed input, before doing anything else.
    """
    if isinstance(port, bool) or not isinstance(port, int):
        raise TypeError(f"port must be an int, not {type(port).__name__}")
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be in 0..65535, not {port}")
    bias_ms = _check_number(ipv6_bias_ms, "ipv6_bias_ms")
    now = _check_number(now, "now")
    if not isinstance(policy, PolicyTable):
        raise TypeError("policy must be a PolicyTable")
    translators = frozenset(str_tuple(translators_seen, "translators_seen"))
    ula_translated = not _ULA_TRANSLATORS.isdisjoint(translators)
    nat44_seen = Translator.NAT44.value in translators
    skip = tuple(skip_rule9_prefixes)

    plan = _plan_for(
        destinations,
        sources,
        port,
        kernel_sources=kernel_sources,
        ula_translated=ula_translated,
        nat44_seen=nat44_seen,
        policy=policy,
        skip=skip,
    )

    failures_version = 0
    if failures is not None:
        failures_version = failures.generation(now)  # first: it drops what expired by now
        if len(failures) == 0:
            failures, failures_version = None, 0
    if latency is not None and len(latency) == 0:
        latency = None
    if latency is None and failures is None:
        return list(plan.pairs)
    latency_version = 0 if latency is None else latency.version
    memo = plan.memo
    if memo and _MEMOISE:
        # The tables' versions cover every change of their contents and every expiry, so
        # equal versions mean the same order and the same measurements.
        last = memo[0]
        if (
            last.latency is latency
            and last.failures is failures
            and last.latency_version == latency_version
            and last.failures_version == failures_version
            and last.bias_ms == bias_ms
        ):
            if not last.failing or last.now == now:
                return list(last.pairs)
            return _restamp(last, now)
    result = _apply_measurements(plan, latency=latency, failures=failures, now=now, bias_ms=bias_ms)
    if _MEMOISE:
        failing = tuple(
            (index, pair.__dict__["_meta"][0]) for index, pair in enumerate(result) if pair.failing
        )
        memo[:] = [
            _Memo(
                latency,
                latency_version,
                failures,
                # Read again: a lookup may have dropped an expired entry.
                0 if failures is None else failures.version,
                bias_ms,
                now,
                tuple(result),
                failing,
            )
        ]
    return result


#: Off only in tests, to compare memoised rankings with fresh ones.
_MEMOISE = True


def _restamp(memo: _Memo, now: float) -> list[AddrPair]:
    """The memoised pairs, the failing ones made again so their reasons say the age at *now*."""
    result = list(memo.pairs)
    for index, recipe in memo.failing:
        pair = result[index]
        stamped: reasons.Recipe = (*recipe[:6], now, *recipe[7:])
        result[index] = _make_pair(
            pair.family, pair.source, pair.destination, (stamped, pair.rtt, True)
        )
    return result


def _identity_key(
    destinations: Sequence[tuple[IPAddress, int | None]],
    sources: Sequence[SourceAddress],
    kernel: Sequence[IPAddress | SourceAddress | None],
    policy: PolicyTable,
    rest: tuple[object, ...],
) -> tuple[tuple[object, ...], tuple[object, ...]]:
    """The key of :data:`_PLANS` for this input, and the objects the entry must keep alive.

    Why a hit is always right: every object whose ``id()`` is in the key is in the returned
    anchors, which live in the cache entry as long as the key does. CPython reuses an id only
    once its object is gone, so while an entry exists no other object can have any of its
    ids; the caller's objects are alive during the call; hence a hit means the very same
    objects as when the plan was built. They are immutable (frozen ``SourceAddress``,
    ``ipaddress`` objects, a ``PolicyTable`` whose rows never change), so they still have
    the values the plan was computed from. The lengths are in the key because the id run
    alone could be cut differently (a kernel choice may also be one of the sources); zones,
    port and the rest are plain values.
    """
    ips = [item[0] for item in destinations]
    anchors = (*ips, *sources, *kernel, policy)
    zones = tuple([item[1] for item in destinations])
    key = (tuple(map(id, anchors)), len(ips), len(sources), len(kernel), zones, *rest)
    return key, anchors


def _plan_for(
    destinations: Sequence[tuple[IPAddress, int | None]],
    sources: Sequence[SourceAddress],
    port: int,
    *,
    kernel_sources: Mapping[IPAddress, IPAddress | SourceAddress] | None,
    ula_translated: bool,
    nat44_seen: bool,
    policy: PolicyTable,
    skip: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...],
) -> _Plan:
    """Levels 1 and 4 for this input: from the identity cache, the value cache, or computed."""
    # Iterated several times below, and the identity key must see what the plan is built from.
    destinations = tuple(destinations)
    sources = tuple(sources)
    key: tuple[object, ...] | None = None
    try:
        kernel = [kernel_sources.get(item[0]) for item in destinations] if kernel_sources else []
        key, anchors = _identity_key(
            destinations, sources, kernel, policy, (port, ula_translated, nat44_seen, skip)
        )
        hit = _PLANS.get(key)
    except (TypeError, ValueError, IndexError):
        key = None  # malformed input: the checks in _new_plan say what is wrong
        hit = None
    if hit is not None:
        return hit[0]
    plan = _new_plan(
        destinations,
        sources,
        port,
        kernel_sources=kernel_sources,
        ula_translated=ula_translated,
        nat44_seen=nat44_seen,
        policy=policy,
        skip=skip,
    )
    if key is not None:
        if len(_PLANS) >= _PLANS_MAX:
            _PLANS.clear()  # the anchors go with their keys
        _PLANS[key] = (plan, anchors)
    return plan


def _new_plan(
    destinations: tuple[tuple[IPAddress, int | None], ...],
    sources: tuple[SourceAddress, ...],
    port: int,
    *,
    kernel_sources: Mapping[IPAddress, IPAddress | SourceAddress] | None,
    ula_translated: bool,
    nat44_seen: bool,
    policy: PolicyTable,
    skip: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...],
) -> _Plan:
    """Check the input thoroughly, then compute levels 1 and 4 (or find them cached by value)."""
    for src in sources:
        if not isinstance(src, SourceAddress):
            raise TypeError(f"sources must be SourceAddress objects, not {type(src).__name__}")
    for prefix in skip:
        if not isinstance(prefix, ipaddress.IPv4Network | ipaddress.IPv6Network):
            raise TypeError("skip_rule9_prefixes must hold IPv4Network / IPv6Network objects")
    seen: set[tuple[IPAddress, int | None]] = set()
    dests: list[tuple[_Dest, int | None]] = []
    kernel: list[IPAddress | SourceAddress | None] = []
    for item in destinations:
        if not isinstance(item, tuple) or len(item) != 2:
            raise TypeError(f"destinations must be (ip, zone_index) tuples, not {item!r}")
        ip, zone = item
        info = _dest_info(ip)
        if zone is not None and (isinstance(zone, bool) or not isinstance(zone, int) or zone < 0):
            raise ValueError(f"zone index must be a non-negative int or None, not {zone!r}")
        if not info.needs_zone:
            zone = None  # a zone means nothing for other scopes
        key = (info.view, zone)
        if key not in seen:
            seen.add(key)
            dests.append((info, zone))
            kernel.append(kernel_sources.get(ip) if kernel_sources else None)
    for choice in kernel:
        if choice is not None and not isinstance(
            choice, SourceAddress | ipaddress.IPv4Address | ipaddress.IPv6Address
        ):
            raise TypeError("kernel_sources values must be IP addresses or SourceAddress")
    value_key = (
        tuple((d.original, zone) for d, zone in dests),
        sources,
        port,
        tuple(kernel),
        ula_translated,
        nat44_seen,
        policy,
        skip,
    )
    plan = _PLANS_BY_VALUE.get(value_key)
    if plan is None:
        plan = _build_plan(
            dests,
            sources,
            port,
            kernel=kernel,
            ula_translated=ula_translated,
            nat44_seen=nat44_seen,
            policy=policy,
            skip_rule9=skip,
        )
        if len(_PLANS_BY_VALUE) >= _PLANS_MAX:
            _PLANS_BY_VALUE.clear()
        _PLANS_BY_VALUE[value_key] = plan
    return plan


def _first(row: tuple[Any, ...]) -> Any:
    return row[0]


def _apply_measurements(
    plan: _Plan,
    *,
    latency: LatencyTable | None,
    failures: FailureTable | None,
    now: float,
    bias_ms: float,
) -> list[AddrPair]:
    """Levels 2 and 3: move recent failures after the others, measured pairs first."""
    indexes = (
        [latency.source_index(key) for key in plan.source_keys]
        if latency is not None
        else [None] * len(plan.source_keys)
    )
    rows: list[
        tuple[
            tuple[int, int, int, float, int, int],
            _Entry,
            Estimate | None,
            Failure | None,
            float | None,
        ]
    ] = []
    best = {True: math.inf, False: math.inf}  # best RTT per family among level-3 pairs
    lookup = None if latency is None else latency.lookup_key
    fail = None if failures is None else failures.failure_key
    for entry in plan.entries:
        estimate = None
        if lookup is not None:
            index = indexes[entry.source_slot]
            if index is not None:
                estimate = lookup(index, entry.dst_key, entry.dst_int, entry.v6)
        failure = None if fail is None else fail(entry.fail_key, now)
        if estimate is None and failure is None:
            rows.append((entry.base_key, entry, None, None, None))
            continue
        rtt = None if estimate is None else estimate.rtt
        v6 = entry.v6
        if rtt is not None and failure is None and entry.doubt is None and rtt < best[v6]:
            best[v6] = rtt
        base = entry.base_key
        if rtt is None:
            key = (base[0], 0 if failure is None else 1, 1, 0.0, 0, base[5])
        else:
            effective = rtt * 1000.0 - bias_ms if v6 else rtt * 1000.0
            key = (base[0], 0 if failure is None else 1, 0, effective, 0 if v6 else 1, base[5])
        rows.append((key, entry, estimate, failure, rtt))
    rows.sort(key=_first)
    result = []
    for _, entry, estimate, failure, rtt in rows:
        if estimate is None and failure is None:
            result.append(entry.pair)
            continue
        other = best[not entry.v6]
        recipe: reasons.Recipe = (
            entry.head,
            entry.doubt,
            entry.rfc,
            entry.v6,
            failure,
            estimate,
            now,
            None if other == math.inf else other,
            bias_ms,
        )
        pair = entry.pair
        result.append(
            _make_pair(
                pair.family, pair.source, pair.destination, (recipe, rtt, failure is not None)
            )
        )
    return result
