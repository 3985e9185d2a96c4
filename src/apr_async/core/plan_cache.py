"""Where :func:`apr_async.core.ranking.rank_pairs` gets its plan: two caches of plans, one
keyed by the identity of the input objects (hashing ipaddress objects runs Python code), one
by value (equal inputs made of new objects), and the plan made afresh on a miss (sans-IO)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Mapping, Sequence

from apr_async.core.addresses import IPAddress
from apr_async.core.plan import _PLANS, _PLANS_BY_VALUE, _PLANS_MAX, _build_plan, _Plan
from apr_async.core.policy_table import PolicyTable
from apr_async.core.reach import _Dest, _dest_info
from apr_async.core.rfc6724 import SourceAddress


class KernelChoices(Mapping[IPAddress, IPAddress]):
    """The kernel's source per destination, read-only, built for one destination tuple.

    A plain mapping to :func:`~apr_async.core.ranking.rank_pairs`; when it is passed with
    the very tuple it was built for, the plan lookup takes the choices in destination order
    from it instead of looking each destination up (which hashes ``ipaddress`` objects in
    Python code). Immutable, so reusing one across calls is safe.
    """

    __slots__ = ("_by_ip", "aligned", "destinations")

    def __init__(
        self,
        destinations: tuple[tuple[IPAddress, int | None], ...],
        by_ip: Mapping[IPAddress, IPAddress],
    ) -> None:
        self.destinations = destinations
        self._by_ip = dict(by_ip)
        self.aligned: tuple[IPAddress | None, ...] = tuple(
            [self._by_ip.get(item[0]) for item in destinations]
        )

    def __getitem__(self, key: IPAddress) -> IPAddress:
        return self._by_ip[key]

    def __iter__(self) -> Iterator[IPAddress]:
        return iter(self._by_ip)

    def __len__(self) -> int:
        return len(self._by_ip)


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
    given = destinations
    destinations = tuple(destinations)
    sources = tuple(sources)
    key: tuple[object, ...] | None = None
    try:
        kernel: Sequence[IPAddress | SourceAddress | None]
        if type(kernel_sources) is KernelChoices and kernel_sources.destinations is given:
            kernel = kernel_sources.aligned if kernel_sources else ()
        else:
            kernel = (
                [kernel_sources.get(item[0]) for item in destinations] if kernel_sources else []
            )
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
