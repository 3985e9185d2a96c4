"""Connectivity status derived from probe observations (sans-IO: ``now`` is passed in).

The status answers "what works on this network right now?" with flags a network engineer
knows from the prototype: ``GUA_ok``, ``IPv4_ok``, ``LLA_ok``, ``NAT44``, ``NPTv6``,
``RFC1918``, ``ULA_ok``, ``ULA_present``, ``def_gateway4``, ``def_gateway6``, plus
``IPv6_ok``, the NAT64 prefix and the time of the last change.

Reasoning (the prototype's, made non-sticky):

* ``GUA_ok`` / ``ULA_ok`` / ``IPv4_ok``: a source of that kind reached an *off-link* target,
  one behind the default gateway. Reaching the gateway itself proves only the first hop.
* ``NAT44``: a private IPv4 source (RFC 1918 or CGN 100.64/10) reached a public IPv4
  destination. Private space is not routed on the Internet, so a translator must be on the path.
* ``NPTv6``: a ULA source reached a global IPv6 destination (NPTv6 or NAT66 on the path).
* ``LLA_ok``: a link-local source reached its (link-local) target.
* ``RFC1918`` / ``ULA_present``: such a source address is configured.

Flags follow the network: only the latest result of each (source, destination, method) counts,
only while it is younger than ``max_age``, and only for sources still configured. A pair works
if its latest result by any method worked (ICMP may be filtered where TCP passes).

A lab that routes private or ULA space natively looks exactly like a translated path from the
client's side; no client-side probe can tell them apart, and this module does not pretend to.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any, Literal

from apr_async.core.addresses import AddressKind, IPAddress, kind_of
from apr_async.core.source_address import SourceAddress

__all__ = [
    "PROTOTYPE_FIELDS",
    "WELL_KNOWN_IPV4ONLY",
    "ConnectivityStatus",
    "Observation",
    "StatusTracker",
    "derive_status",
    "nat64_prefixes",
]

ProbeMethod = Literal["icmp", "tcp", "passive"]

#: The prototype's field names, exactly as ``as_dict()`` spells them.
PROTOTYPE_FIELDS: tuple[str, ...] = (
    "GUA_ok",
    "IPv4_ok",
    "LLA_ok",
    "NAT44",
    "NPTv6",
    "RFC1918",
    "ULA_ok",
    "ULA_present",
    "def_gateway4",
    "def_gateway6",
)

#: RFC 7050 section 2.2: the addresses ``ipv4only.arpa`` resolves to.
WELL_KNOWN_IPV4ONLY: tuple[ipaddress.IPv4Address, ...] = (
    ipaddress.IPv4Address("192.0.0.170"),
    ipaddress.IPv4Address("192.0.0.171"),
)

_IPV4_SOURCE_KINDS = frozenset({AddressKind.RFC1918, AddressKind.CGN, AddressKind.PUBLIC_IPV4})
_PRIVATE_V4 = frozenset({AddressKind.RFC1918, AddressKind.CGN})
_GLOBAL_V6_SOURCE_KINDS = frozenset(
    {AddressKind.GUA, AddressKind.ULA, AddressKind.SIXTO4, AddressKind.TEREDO}
)


@dataclass(frozen=True, slots=True)
class Observation:
    """One probe or connection result from ``source`` to ``destination`` at time ``at``.

    ``offlink`` is true when the destination lies behind a gateway (not on a link of the
    source, not the gateway itself): only such results prove more than the first hop.
    """

    source: IPAddress
    destination: IPAddress
    ok: bool
    at: float
    offlink: bool
    method: ProbeMethod = "icmp"

    def __post_init__(self) -> None:
        for name in ("source", "destination"):
            value = getattr(self, name)
            if not isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
                raise TypeError(f"Observation.{name} must be an IP address, not {value!r}")
            if isinstance(value, ipaddress.IPv6Address) and value.scope_id is not None:
                object.__setattr__(self, name, ipaddress.IPv6Address(int(value)))
        if self.method not in ("icmp", "tcp", "passive"):
            raise ValueError(f"unknown observation method {self.method!r}")


@dataclass(frozen=True, slots=True)
class ConnectivityStatus:
    """What works on this network, derived from recent probe results. Immutable.

    ``def_gateway4`` / ``def_gateway6`` hold the default gateway's address (``None`` when
    there is no default route of that family; truthiness reads as "has a gateway"). An IPv6
    gateway is usually link-local and is written with its zone (``fe80::1%eth0``).
    ``NAT64_prefix`` is the prefix discovered with RFC 7050, ``changed_at`` the ``now`` at
    which any flag last changed, ``updated_at`` the ``now`` of this derivation, and
    ``observations`` the number of results it rests on (0: nothing measured yet).
    """

    GUA_ok: bool = False
    IPv4_ok: bool = False
    LLA_ok: bool = False
    NAT44: bool = False
    NPTv6: bool = False
    RFC1918: bool = False
    ULA_ok: bool = False
    ULA_present: bool = False
    def_gateway4: str | None = None
    def_gateway6: str | None = None
    IPv6_ok: bool = False
    NAT64_prefix: str | None = None
    changed_at: float | None = None
    updated_at: float | None = None
    observations: int = 0

    def as_dict(self, *, full: bool = False) -> dict[str, Any]:
        """The prototype's fields, under exactly the prototype's names.

        With ``full=True`` also ``IPv6_ok``, ``NAT64_prefix``, ``changed_at``,
        ``updated_at`` and ``observations``.
        """
        names = [f.name for f in fields(self)] if full else PROTOTYPE_FIELDS
        return {name: getattr(self, name) for name in names}

    def same_flags(self, other: ConnectivityStatus) -> bool:
        """True when every flag, gateway and prefix equals ``other``'s (times ignored)."""
        skip = {"changed_at", "updated_at", "observations"}
        return all(
            getattr(self, f.name) == getattr(other, f.name)
            for f in fields(self)
            if f.name not in skip
        )

    def summary(self) -> str:
        """One line for logs: the flags that are true, and the gateways."""
        flags = [
            name
            for name in ("IPv4_ok", "IPv6_ok", "GUA_ok", "ULA_ok", "LLA_ok", "NAT44", "NPTv6",
                         "RFC1918", "ULA_present")
            if getattr(self, name)
        ]
        extra = [f"gw4={self.def_gateway4}", f"gw6={self.def_gateway6}"]
        if self.NAT64_prefix:
            extra.append(f"nat64={self.NAT64_prefix}")
        return " ".join(flags or ["nothing-works-yet"]) + " " + " ".join(extra)


def _ip_of(source: IPAddress | SourceAddress) -> IPAddress:
    if isinstance(source, SourceAddress):
        return source.address
    if isinstance(source, ipaddress.IPv6Address) and source.scope_id is not None:
        return ipaddress.IPv6Address(int(source))
    return source


def derive_status(
    observations: Iterable[Observation],
    sources: Iterable[IPAddress | SourceAddress],
    *,
    now: float,
    max_age: float,
    gateway4: str | None = None,
    gateway6: str | None = None,
    nat64_prefix: str | None = None,
    previous: ConnectivityStatus | None = None,
) -> ConnectivityStatus:
    """Derive the status from ``observations`` (latest per (source, destination, method)).

    ``sources`` are the addresses configured now: results from sources that disappeared are
    ignored. Results older than ``max_age`` seconds before ``now`` are ignored too.
    ``previous`` carries ``changed_at`` over when nothing changed.
    """
    if not max_age > 0:
        raise ValueError(f"max_age must be > 0, got {max_age!r}")
    present = {_ip_of(s) for s in sources}
    kinds = {ip: kind_of(ip) for ip in present}

    latest: dict[tuple[IPAddress, IPAddress, str], Observation] = {}
    for obs in observations:
        if obs.source not in present or now - obs.at > max_age or obs.at > now:
            continue
        key = (obs.source, obs.destination, obs.method)
        known = latest.get(key)
        if known is None or known.at <= obs.at:
            latest[key] = obs
    working: dict[tuple[IPAddress, IPAddress], bool] = {}
    offlink: dict[tuple[IPAddress, IPAddress], bool] = {}
    for (src, dst, _method), obs in latest.items():
        working[(src, dst)] = working.get((src, dst), False) or obs.ok
        offlink[(src, dst)] = offlink.get((src, dst), False) or obs.offlink

    gua_ok = ula_ok = ipv4_ok = ipv6_ok = lla_ok = nat44 = nptv6 = False
    for (src, dst), ok in working.items():
        if not ok:
            continue
        skind = kinds[src]
        dkind = kind_of(dst)
        beyond = offlink[(src, dst)]
        if skind is AddressKind.LINK_LOCAL:
            lla_ok = True
        if beyond:
            if skind is AddressKind.GUA:
                gua_ok = True
            elif skind is AddressKind.ULA:
                ula_ok = True
            if skind in _GLOBAL_V6_SOURCE_KINDS:
                ipv6_ok = True
            if skind in _IPV4_SOURCE_KINDS:
                ipv4_ok = True
        if skind in _PRIVATE_V4 and dkind is AddressKind.PUBLIC_IPV4:
            nat44 = True
        if skind is AddressKind.ULA and dkind is AddressKind.GUA:
            nptv6 = True

    status = ConnectivityStatus(
        GUA_ok=gua_ok,
        IPv4_ok=ipv4_ok,
        LLA_ok=lla_ok,
        NAT44=nat44,
        NPTv6=nptv6,
        RFC1918=any(k is AddressKind.RFC1918 for k in kinds.values()),
        ULA_ok=ula_ok,
        ULA_present=any(k is AddressKind.ULA for k in kinds.values()),
        def_gateway4=gateway4,
        def_gateway6=gateway6,
        IPv6_ok=ipv6_ok,
        NAT64_prefix=nat64_prefix,
        updated_at=now,
        observations=len(latest),
    )
    changed_at = now
    if previous is not None and previous.same_flags(status):
        changed_at = previous.changed_at if previous.changed_at is not None else now
    return _with(status, changed_at=changed_at)


def _with(status: ConnectivityStatus, **changes: Any) -> ConnectivityStatus:
    values = {f.name: getattr(status, f.name) for f in fields(status)}
    values.update(changes)
    return ConnectivityStatus(**values)


class StatusTracker:
    """Keeps the latest observation per (source, destination, method), bounded in size.

    Pure bookkeeping for the probe service: :meth:`observe` results, :meth:`derive` a status,
    :meth:`forget` everything before a network change.
    """

    def __init__(self, max_entries: int = 1024) -> None:
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise ValueError(f"max_entries must be a positive int, not {max_entries!r}")
        self.max_entries = max_entries
        self._latest: OrderedDict[tuple[IPAddress, IPAddress, str], Observation] = OrderedDict()
        self._status: ConnectivityStatus | None = None

    def __len__(self) -> int:
        return len(self._latest)

    def observe(self, obs: Observation) -> None:
        """Record a result; it replaces an older one of the same pair and method."""
        key = (obs.source, obs.destination, obs.method)
        known = self._latest.pop(key, None)
        if known is not None and known.at > obs.at:
            obs = known
        self._latest[key] = obs
        while len(self._latest) > self.max_entries:
            self._latest.popitem(last=False)

    def forget(self, before: float | None = None) -> None:
        """Drop results older than ``before`` (all of them when ``None``)."""
        if before is None:
            self._latest.clear()
            return
        for key in [k for k, o in self._latest.items() if o.at < before]:
            del self._latest[key]

    def derive(
        self,
        sources: Iterable[IPAddress | SourceAddress],
        *,
        now: float,
        max_age: float,
        gateway4: str | None = None,
        gateway6: str | None = None,
        nat64_prefix: str | None = None,
    ) -> ConnectivityStatus:
        """Derive the status now; ``changed_at`` follows from the previous derivation."""
        self._status = derive_status(
            self._latest.values(),
            sources,
            now=now,
            max_age=max_age,
            gateway4=gateway4,
            gateway6=gateway6,
            nat64_prefix=nat64_prefix,
            previous=self._status,
        )
        return self._status

    @property
    def status(self) -> ConnectivityStatus:
        """The latest derived status (all false before the first derivation)."""
        return self._status if self._status is not None else ConnectivityStatus()

    def observations(self) -> list[Observation]:
        """The observations kept, oldest first."""
        return list(self._latest.values())


def nat64_prefixes(
    answers: Iterable[IPAddress],
) -> tuple[ipaddress.IPv6Network, ...]:
    """NAT64 prefixes found in the AAAA answers for ``ipv4only.arpa`` (RFC 7050 section 3).

    Each answer is searched for one of the well-known IPv4 addresses embedded as RFC 6052
    section 2.2 places it for prefix lengths 96, 64, 56, 48, 40 and 32 (bits 64-71, the
    "u" octet, must be zero except in a /96). Prefixes are returned in answer order, once.
    """
    wka = {a.packed for a in WELL_KNOWN_IPV4ONLY}
    found: list[ipaddress.IPv6Network] = []
    for ip in answers:
        if not isinstance(ip, ipaddress.IPv6Address):
            continue
        raw = ip.packed
        candidates: list[int] = []
        if raw[12:16] in wka:
            candidates.append(96)
        if raw[8] == 0:
            squeezed = raw[:8] + raw[9:]  # without the u octet
            for plen in (64, 56, 48, 40, 32):
                start = plen // 8
                if squeezed[start : start + 4] in wka:
                    candidates.append(plen)
        for plen in candidates:
            net = ipaddress.IPv6Network((int(ip) >> (128 - plen) << (128 - plen), plen))
            if net not in found:
                found.append(net)
            break  # the longest matching length is the one RFC 7050 means
    return tuple(found)
