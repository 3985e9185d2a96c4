"""What one probe round sends: targets, which source may probe which target, and the pacing.

Pure bookkeeping for :class:`~apr_async.probe.service.ProbeService` (no sockets; the pacer
only sleeps): the :class:`Target` record, :func:`eligible` (scope, family and zone rules),
:func:`is_offlink` (does a result prove more than the first hop?), :func:`plan_probes` (the
(method, source, target) list of a round, each once), :class:`RecentDestinations` (the
destinations the application used, re-probed on their own port, rate-limited) and
:class:`Pacer` (the global probe rate limit).
"""

from __future__ import annotations

import asyncio
import math
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from apr_async.core.addresses import AddressKind, IPAddress, Scope, kind_of, scope_of
from apr_async.core.source_address import SourceAddress
from apr_async.resolve.interfaces import HostSnapshot

__all__ = [
    "Pacer",
    "PlannedProbe",
    "RecentDestinations",
    "Target",
    "TargetKind",
    "eligible",
    "gateway_targets",
    "is_offlink",
    "plan_probes",
    "source_text",
]

TargetKind = Literal["configured", "gateway", "recent", "atlas"]
ProbeMethod = Literal["icmp", "tcp"]

#: Addresses nothing is ever sent from or to.
_SKIP_KINDS = frozenset({AddressKind.UNSPECIFIED, AddressKind.MULTICAST, AddressKind.RESERVED})


@dataclass(frozen=True, slots=True)
class Target:
    """A destination probed in a round. ``port`` is the TCP port (``None``: ICMP only);
    ``ifindex`` the zone of a link-local destination."""

    ip: IPAddress
    ifindex: int | None
    port: int | None
    kind: TargetKind
    label: str

    def text(self) -> str:
        """The address with its numeric zone, as the probes take it."""
        return f"{self.ip}%{self.ifindex}" if self.ifindex else str(self.ip)


@dataclass(frozen=True, slots=True)
class PlannedProbe:
    """One probe of a round: ``method`` from ``source`` to ``target``.

    ``offlink`` says whether the target lies behind a gateway, decided when the round is
    planned so that a result is judged against the network it was sent on.
    """

    method: ProbeMethod
    source: SourceAddress
    target: Target
    offlink: bool


def source_text(source: SourceAddress) -> str:
    """The source as the probes bind it: a link-local IPv6 address carries its zone."""
    if source.scope <= Scope.LINK_LOCAL and source.address.version == 6 and source.ifindex:
        return f"{source.address}%{source.ifindex}"
    return str(source.address)


def eligible(source: SourceAddress, target: Target) -> bool:
    """Can this source reach that destination at all (family, scope, zone)?

    Loopback only talks to loopback; a link-local destination needs a link-local source on
    the same link; anything else needs a global-scope source (ULA and RFC 1918 included).
    """
    ip = target.ip
    if source.address.version != ip.version:
        return False
    dkind = kind_of(ip)
    if dkind is AddressKind.LOOPBACK or source.kind is AddressKind.LOOPBACK:
        return dkind is AddressKind.LOOPBACK and source.kind is AddressKind.LOOPBACK
    if scope_of(ip) <= Scope.LINK_LOCAL:
        if source.kind is not AddressKind.LINK_LOCAL:
            return False
        return target.ifindex is None or source.ifindex in (None, target.ifindex)
    return source.scope == Scope.GLOBAL


def is_offlink(ip: IPAddress, snapshot: HostSnapshot | None) -> bool:
    """True when ``ip`` lies behind a gateway: not link-local, not a default gateway, and not
    inside a prefix configured on a local interface.

    Only results towards such destinations prove that a source reaches beyond its first hop
    (``GUA_ok``, ``IPv4_ok``, ``ULA_ok``).
    """
    if scope_of(ip) <= Scope.LINK_LOCAL or snapshot is None:
        return False
    if any(gw.address == ip for gw in snapshot.gateways):
        return False
    for source in snapshot.sources:
        plen = source.prefixlen
        if source.address.version != ip.version or plen is None:
            continue
        if plen >= ip.max_prefixlen:
            continue  # a host route says nothing about what is on the link
        shift = ip.max_prefixlen - plen
        if int(source.address) >> shift == int(ip) >> shift:
            return False
    return True


def plan_probes(
    snapshot: HostSnapshot, targets: Iterable[Target], *, icmp: bool
) -> list[PlannedProbe]:
    """Every (method, source, target) probe of one round, each once.

    Each target is probed from every usable source that can reach it (:func:`eligible`;
    deprecated sources are skipped: new connections do not use them): with ICMP when
    ``icmp`` is true and with TCP when the target has a port.
    """
    sources = [s for s in snapshot.sources if not s.deprecated and s.kind not in _SKIP_KINDS]
    methods: list[ProbeMethod] = ["icmp", "tcp"] if icmp else ["tcp"]
    plan: list[PlannedProbe] = []
    seen: set[tuple[str, SourceAddress, IPAddress, int | None]] = set()
    for target in targets:
        if kind_of(target.ip) in _SKIP_KINDS:
            continue
        offlink = is_offlink(target.ip, snapshot)
        for source in sources:
            if not eligible(source, target):
                continue
            for method in methods:
                if method == "tcp" and target.port is None:
                    continue
                key = (method, source, target.ip, target.port if method == "tcp" else None)
                if key not in seen:
                    seen.add(key)
                    plan.append(PlannedProbe(method, source, target, offlink))
    return plan


class RecentDestinations:
    """Destinations the application used recently, re-probed on their own port.

    At most ``limit`` of them (the least recently used is dropped), each forgotten ``ttl``
    seconds after its last use and re-probed at most every ``interval`` seconds. Times are
    the caller's monotonic seconds.
    """

    def __init__(self, limit: int, *, ttl: float, interval: float) -> None:
        self.limit = limit
        self.ttl = ttl
        self.interval = interval
        # (ip, zone, port) -> [last used, last probed]
        self._used: OrderedDict[tuple[IPAddress, int | None, int], list[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._used)

    def note(
        self, ip: IPAddress, ifindex: int | None, port: int, now: float, *, measured: bool = True
    ) -> None:
        """The application used ``ip`` on ``port`` at ``now``; the use itself counts as a
        measurement, so the next re-probe is due ``interval`` later.

        ``measured=False`` notes a destination the application could have used but did not
        measure (a pair its race never tried): a new one is due at once, one already known
        keeps its re-probe time, so the rate limit holds either way.
        """
        if self.limit <= 0 or not 0 < port <= 65535:
            return
        key = (ip, ifindex, port)
        times = self._used.pop(key, None) or [now, now if measured else -math.inf]
        times[0] = now
        self._used[key] = times
        while len(self._used) > self.limit:
            self._used.popitem(last=False)

    def due(self, now: float, *, tcp: bool) -> list[Target]:
        """The destinations to re-probe now (marked probed), after dropping expired ones;
        ``tcp=False`` gives them without a port (ICMP only)."""
        out: list[Target] = []
        for key, times in list(self._used.items()):
            ip, ifindex, port = key
            last_used, last_probed = times
            if now - last_used > self.ttl:
                del self._used[key]
            elif now - last_probed >= self.interval:
                times[1] = now
                out.append(Target(ip, ifindex, port if tcp else None, "recent", str(ip)))
        return out


class Pacer:
    """The global probe rate limit: a token bucket of ``burst`` probes refilled at ``rate``
    per second, written as "the next free slot" so that waiting costs one timer."""

    def __init__(self, rate: float, burst: float) -> None:
        if not rate > 0:
            raise ValueError(f"rate must be > 0, got {rate!r}")
        self._gap = 1.0 / rate
        self._burst = max(burst, 1.0) * self._gap
        self._next = -float("inf")

    async def wait(self, loop: asyncio.AbstractEventLoop) -> None:
        """Return when the next probe may start."""
        now = loop.time()
        slot = max(self._next, now - self._burst + self._gap)
        self._next = slot + self._gap
        if slot > now:
            await asyncio.sleep(slot - now)


def gateway_targets(snapshot: HostSnapshot, port: int | None) -> list[Target]:
    """The default gateways as targets (``port`` ``None``: ICMP only)."""
    out: list[Target] = []
    for gw in snapshot.gateways:
        if gw.address is not None:
            ifindex = gw.ifindex if scope_of(gw.address) <= Scope.LINK_LOCAL else None
            out.append(Target(gw.address, ifindex, port, "gateway", str(gw.address)))
    return out
