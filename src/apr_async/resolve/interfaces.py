"""Local addresses, default gateways and the kernel's route choice (I/O).

On Linux everything is read with raw rtnetlink (:mod:`.netlink`): one dump of links,
addresses and routes gives what RFC 6724 needs and ``getifaddrs`` lacks (address flags:
deprecated, temporary, tentative, dadfailed; prefix lengths; interface indexes) plus the
default gateways, and ``RTM_GETROUTE`` for a destination gives the kernel's own source and
outgoing interface. This module turns that into a :class:`HostSnapshot` and caches it.
Elsewhere (or when netlink is unavailable) ``ifaddr`` enumerates addresses
and a connected UDP socket (which sends nothing) gives the kernel's source.

Network namespaces are per thread on Linux and the test lab runs library code in a thread that
called ``setns``. So every netlink socket here is created in the calling thread, nothing reads
``/proc/self/net`` or ``/proc/net``, and the snapshot cache is keyed by the calling thread's
namespace.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import socket
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from apr_async.core.source_address import SourceAddress
from apr_async.resolve.host import Gateway, Interface, RouteChoice
from apr_async.resolve.netlink import (
    IFA_F_DADFAILED,
    IFA_F_DEPRECATED,
    IFA_F_HOMEADDRESS,
    IFA_F_TEMPORARY,
    IFA_F_TENTATIVE,
    Netlink,
    netlink_route_choices,
    read_addresses,
    read_gateways,
    read_links,
)

__all__ = [
    "CachedView",
    "HostSnapshot",
    "LocalAddresses",
    "cached_view",
    "get_snapshot",
    "invalidate_cache",
    "netns_id",
    "read_snapshot",
    "route_choice",
    "route_choices",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class HostSnapshot:
    """An immutable view of this host's (thread's namespace's) usable source addresses.

    ``sources`` excludes tentative and DAD-failed addresses and addresses on interfaces that
    are down; deprecated and temporary addresses are kept with their flags set (RFC 6724
    source rules 3 and 7 need them). ``fingerprint`` changes whenever the addresses, their
    flags or the default gateways change, so callers can drop state tied to the old network.
    """

    sources: tuple[SourceAddress, ...]
    interfaces: Mapping[int, Interface]
    gateways: tuple[Gateway, ...]
    fingerprint: str
    backend: str
    taken_at: float = field(compare=False)

    def sources_for(self, family: int) -> tuple[SourceAddress, ...]:
        """The sources of one address family (``AF_INET`` or ``AF_INET6``)."""
        version = 6 if family == socket.AF_INET6 else 4
        return tuple(s for s in self.sources if s.address.version == version)

    def interface_name(self, ifindex: int) -> str | None:
        """Name of the interface with this index, if known."""
        iface = self.interfaces.get(ifindex)
        return iface.name if iface is not None else None

    def ifindex_of(self, name: str) -> int | None:
        """Index of the interface with this name, if known."""
        for iface in self.interfaces.values():
            if iface.name == name:
                return iface.index
        return None

    def default_gateway(self, family: int) -> Gateway | None:
        """The preferred (lowest metric) default gateway of a family, if any."""
        candidates = [g for g in self.gateways if g.family == family]
        return min(candidates, key=lambda g: g.metric) if candidates else None


#: The name the issue uses for the snapshot.
LocalAddresses = HostSnapshot



def _netlink_snapshot(now: float) -> HostSnapshot:
    with Netlink() as nl:
        links = read_links(nl)
        raw = read_addresses(nl)
        gateways = read_gateways(nl, links)
    sources: list[SourceAddress] = []
    for item in raw:
        if item.flags & (IFA_F_TENTATIVE | IFA_F_DADFAILED):
            continue
        iface = links.get(item.ifindex)
        if iface is not None and not iface.up:
            continue
        sources.append(
            SourceAddress(
                item.address,
                deprecated=bool(item.flags & IFA_F_DEPRECATED),
                temporary=bool(item.flags & IFA_F_TEMPORARY),
                home=bool(item.flags & IFA_F_HOMEADDRESS),
                interface=iface.name if iface else None,
                ifindex=item.ifindex,
                prefixlen=item.prefixlen,
            )
        )
    return _make_snapshot(sources, links, gateways, "netlink", now)


def _ifaddr_snapshot(now: float) -> HostSnapshot:
    import ifaddr  # noqa: PLC0415 - only the non-netlink fallback needs it

    sources: list[SourceAddress] = []
    links: dict[int, Interface] = {}
    for adapter in ifaddr.get_adapters():
        index = adapter.index if isinstance(adapter.index, int) else None
        if index is not None:
            links[index] = Interface(index, adapter.name, True, True, adapter.name == "lo")
        for ip in adapter.ips:
            text = ip.ip[0] if isinstance(ip.ip, tuple) else ip.ip
            try:
                address = ipaddress.ip_address(text.split("%", 1)[0])
            except ValueError:
                continue
            if isinstance(ip.ip, tuple) and ip.ip[2] and index is None:
                index = int(ip.ip[2])
            sources.append(
                SourceAddress(
                    address,
                    interface=adapter.name,
                    ifindex=index,
                    prefixlen=int(ip.network_prefix),
                )
            )
    return _make_snapshot(sources, links, [], "ifaddr", now)


def _make_snapshot(
    sources: list[SourceAddress],
    links: Mapping[int, Interface],
    gateways: list[Gateway],
    backend: str,
    now: float,
) -> HostSnapshot:
    digest = hashlib.blake2b(digest_size=8)
    for s in sorted(sources, key=lambda s: (s.address.version, int(s.address), s.ifindex or 0)):
        digest.update(
            f"{s.address}/{s.prefixlen}%{s.ifindex}:{int(s.deprecated)}{int(s.temporary)};".encode()
        )
    for g in sorted(gateways, key=lambda g: (g.family, str(g.address), g.ifindex or 0)):
        digest.update(f"gw{g.family}:{g.address}%{g.ifindex}@{g.metric};".encode())
    return HostSnapshot(
        sources=tuple(sources),
        interfaces=MappingProxyType(dict(links)),
        gateways=tuple(gateways),
        fingerprint=digest.hexdigest(),
        backend=backend,
        taken_at=now,
    )


_HAVE_NETLINK = sys.platform.startswith("linux") and hasattr(socket, "AF_NETLINK")


def read_snapshot(*, backend: str | None = None) -> HostSnapshot:
    """Read the calling thread's addresses and gateways now (no cache).

    ``backend`` is ``"netlink"`` (Linux) or ``"ifaddr"`` (portable, no flags or gateways);
    by default netlink is used where available, falling back to ifaddr if it fails.
    """
    if backend not in (None, "netlink", "ifaddr"):
        raise ValueError(f"backend must be 'netlink' or 'ifaddr', not {backend!r}")
    now = time.monotonic()
    if backend == "ifaddr" or (backend is None and not _HAVE_NETLINK):
        return _ifaddr_snapshot(now)
    try:
        return _netlink_snapshot(now)
    except OSError:
        if backend == "netlink":
            raise
        return _ifaddr_snapshot(now)


# --------------------------------------------------------------------------- route lookup



def _udp_route_choice(destination: IPAddress, ifindex: int | None) -> RouteChoice | None:
    family = socket.AF_INET6 if destination.version == 6 else socket.AF_INET
    address: tuple[str, int] | tuple[str, int, int, int]
    if family == socket.AF_INET6:
        address = (str(destination), 9, 0, ifindex or 0)
    else:
        address = (str(destination), 9)
    # connect() on a UDP socket only runs the route and source selection: no packet leaves.
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(address)
        except OSError:
            return None
        source = ipaddress.ip_address(sock.getsockname()[0].split("%", 1)[0])
    return RouteChoice(destination, source, None, ifindex, None)


def route_choices(
    destinations: Iterable[tuple[IPAddress, int | None]],
    *,
    snapshot: HostSnapshot | None = None,
) -> dict[tuple[IPAddress, int | None], RouteChoice | None]:
    """The kernel's route choice for each ``(destination, ifindex)``; ``None`` means no route.

    ``ifindex`` is the scope id a link-local destination needs (else ``None``). One netlink
    socket serves every lookup. Sends nothing on the network.
    """
    requests = list(dict.fromkeys(destinations))
    if not requests:
        return {}
    if _HAVE_NETLINK:
        with contextlib.suppress(OSError):
            return netlink_route_choices(
                requests, snapshot.interfaces if snapshot is not None else None
            )
    return {key: _udp_route_choice(*key) for key in requests}


def route_choice(destination: IPAddress | str, ifindex: int | None = None) -> RouteChoice | None:
    """The kernel's source, outgoing interface and next hop for ``destination`` (uncached)."""
    ip = ipaddress.ip_address(destination) if isinstance(destination, str) else destination
    return route_choices([(ip, ifindex)], snapshot=get_snapshot())[(ip, ifindex)]


# --------------------------------------------------------------------------- cache


def netns_id() -> int:
    """An identifier of the calling thread's network namespace (0 where unknown)."""
    try:
        return os.stat("/proc/thread-self/ns/net").st_ino
    except OSError:
        return 0


class CachedView:
    """A snapshot plus the kernel's route choices taken with it; both expire together."""

    __slots__ = ("_routes", "snapshot", "taken")

    def __init__(self, snapshot: HostSnapshot, taken: float) -> None:
        self.snapshot = snapshot
        self.taken = taken
        self._routes: dict[tuple[IPAddress, int | None], RouteChoice | None] = {}

    def route_choices(
        self, destinations: Iterable[tuple[IPAddress, int | None]]
    ) -> Mapping[tuple[IPAddress, int | None], RouteChoice | None]:
        """The kernel's choice for each ``(destination, ifindex)``, looked up once per view."""
        routes = self._routes
        missing = [key for key in destinations if key not in routes]
        if missing:
            found = route_choices(missing, snapshot=self.snapshot)
            with _cache_lock:
                routes.update(found)
        return routes


_cache: dict[int, CachedView] = {}
_cache_lock = threading.Lock()

#: How long a snapshot (and the route choices taken with it) is reused.
DEFAULT_MAX_AGE = 2.0


def get_snapshot(*, max_age: float = DEFAULT_MAX_AGE) -> HostSnapshot:
    """The calling thread's namespace's snapshot, re-read when older than ``max_age`` seconds."""
    return cached_view(max_age=max_age).snapshot


def cached_view(*, max_age: float = DEFAULT_MAX_AGE) -> CachedView:
    """The calling thread's namespace's cached snapshot and route choices.

    Re-read when older than ``max_age`` seconds (0 forces a fresh read).
    """
    return _entry(max_age)


def _entry(max_age: float) -> CachedView:
    key = netns_id()
    now = time.monotonic()
    entry = _cache.get(key)
    # Freshness is the asker's call: a caller wanting max_age=0 must not get a snapshot
    # another caller was happy to keep for seconds.
    if entry is not None and now - entry.taken < max_age:
        return entry
    snapshot = read_snapshot()
    fresh = CachedView(snapshot, now)
    with _cache_lock:
        _cache[key] = fresh
    return fresh


def invalidate_cache() -> None:
    """Forget every cached snapshot and route choice (call on a network change event)."""
    with _cache_lock:
        _cache.clear()

