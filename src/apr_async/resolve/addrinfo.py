"""The glibc-shaped views of the ranking: a ranked ``getaddrinfo`` and glibc's own order.

:func:`getaddrinfo` is a drop-in for ``loop.getaddrinfo`` whose entries come in ranked order;
:func:`system_order` is what glibc's ``getaddrinfo`` returns on this host, the baseline the
demo and the benchmarks compare with. Both take their validation of host and port, and their
context, from :mod:`apr_async.resolve.pairs`.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence

from apr_async.core.addresses import IPAddress
from apr_async.core.policy_table import DEFAULT_POLICY_TABLE
from apr_async.core.ranking import AddrPair
from apr_async.core.rfc6724 import SourceAddress, apply_rule9, destination_key
from apr_async.errors import gaierror, parse_host, validate_port
from apr_async.resolve import interfaces
from apr_async.resolve.pairs import (
    TCP_UDP,
    PairContext,
    SockAddr,
    implicit_context,
    rank_addresses,
    resolve_host,
)
from apr_async.resolve.resolver import Address, Resolver

__all__ = ["AddrInfo", "getaddrinfo", "system_order"]

#: One ``getaddrinfo`` entry: ``(family, type, proto, canonname, sockaddr)``.
AddrInfo = tuple[socket.AddressFamily, socket.SocketKind, int, str, SockAddr]

# int(): ~ on an IntFlag only flips the flag's own members, hiding unknown bits.
_KNOWN_FLAGS = int(
    socket.AI_PASSIVE
    | socket.AI_CANONNAME
    | socket.AI_NUMERICHOST
    | socket.AI_NUMERICSERV
    | socket.AI_V4MAPPED
    | socket.AI_ALL
    | socket.AI_ADDRCONFIG
)
_SOCKTYPE_DEFAULT_PROTO: dict[int, tuple[int, set[int]]] = {
    socket.SOCK_STREAM: (socket.IPPROTO_TCP, {socket.IPPROTO_TCP, socket.IPPROTO_SCTP}),
    socket.SOCK_DGRAM: (socket.IPPROTO_UDP, {socket.IPPROTO_UDP, 136}),  # 136: UDP-Lite
    socket.SOCK_SEQPACKET: (socket.IPPROTO_SCTP, {socket.IPPROTO_SCTP}),
}


def _check_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    return int(value)


def _socktypes(type: int, proto: int) -> list[tuple[int, int]]:
    """The (socktype, proto) entries per address, as glibc's getaddrinfo produces them."""
    if type == 0:
        candidates: list[tuple[int, int]] = [
            (socket.SOCK_STREAM, socket.IPPROTO_TCP),
            (socket.SOCK_DGRAM, socket.IPPROTO_UDP),
            (socket.SOCK_RAW, 0),
        ]
        chosen = [c for c in candidates if proto in (0, c[1])]
        if not chosen:
            raise gaierror(socket.EAI_SERVICE)
        return chosen
    if type == socket.SOCK_RAW:
        if proto:
            raise gaierror(socket.EAI_SERVICE)
        return [(socket.SOCK_RAW, 0)]
    if type not in _SOCKTYPE_DEFAULT_PROTO:
        raise gaierror(socket.EAI_SOCKTYPE)
    default, allowed = _SOCKTYPE_DEFAULT_PROTO[type]
    if proto and proto not in allowed:
        raise gaierror(socket.EAI_SOCKTYPE)
    return [(type, proto or default)]


def _entry_ports(
    service: int | str, socktypes: list[tuple[int, int]], numeric_only: bool
) -> list[tuple[int, int, int]]:
    """(socktype, proto, port) per entry; a service name keeps only socktypes it exists for."""
    if isinstance(service, int):
        return [(t, p, service) for t, p in socktypes]
    if numeric_only:
        raise gaierror(socket.EAI_NONAME)
    out = []
    for t, p in socktypes:
        protocol = TCP_UDP.get(t) or ("tcp" if t == socket.SOCK_SEQPACKET else None)
        if protocol is None:
            continue
        try:
            out.append((t, p, socket.getservbyname(service, protocol)))
        except OSError:
            continue
    if not out:
        raise gaierror(socket.EAI_SERVICE)
    return out


async def getaddrinfo(  # noqa: PLR0917 - the stdlib's signature
    host: str | bytes | None,
    port: int | str | bytes | None,
    family: int = 0,
    type: int = 0,
    proto: int = 0,
    flags: int = 0,
    *,
    resolver: Resolver | None = None,
    context: PairContext | None = None,
) -> list[AddrInfo]:
    """Drop-in for ``loop.getaddrinfo``: the same ``(family, type, proto, canonname,
    sockaddr)`` tuples, in ranked order (best destination first).

    Honours ``family``, ``type`` (0 gives STREAM, DGRAM and RAW entries like the stdlib),
    ``proto`` and ``flags`` (``AI_NUMERICHOST``, ``AI_NUMERICSERV``, ``AI_PASSIVE``,
    ``AI_CANONNAME``, ``AI_ADDRCONFIG``, ``AI_V4MAPPED``, ``AI_ALL``). Unsupported values
    give the stdlib's gaierror (``EAI_FAMILY``, ``EAI_SOCKTYPE``, ``EAI_BADFLAGS``...).
    """
    family = _check_int("family", family)
    type = _check_int("type", type)
    proto = _check_int("proto", proto)
    flags = _check_int("flags", flags)
    spec = parse_host(host) if host is not None else None
    service = validate_port(port) if port is not None else None
    if family not in (socket.AF_UNSPEC, socket.AF_INET, socket.AF_INET6):
        raise gaierror(socket.EAI_FAMILY)
    if flags & ~_KNOWN_FLAGS or (spec is None and flags & socket.AI_CANONNAME):
        raise gaierror(socket.EAI_BADFLAGS)
    if spec is None and service is None:
        raise gaierror(socket.EAI_NONAME)
    if type == socket.SOCK_RAW and service is not None:
        raise gaierror(socket.EAI_SERVICE)  # glibc: raw sockets have no ports
    entries = _entry_ports(
        service if service is not None else 0,
        _socktypes(type, proto),
        bool(flags & socket.AI_NUMERICSERV),
    )
    ctx = context if context is not None else implicit_context()
    mapped = family == socket.AF_INET6 and bool(flags & socket.AI_V4MAPPED)
    want = socket.AF_UNSPEC if mapped else family

    if spec is None:
        # No host: the wildcard (AI_PASSIVE) or loopback addresses, in glibc's order.
        passive = bool(flags & socket.AI_PASSIVE)
        any4 = ipaddress.IPv4Address("0.0.0.0" if passive else "127.0.0.1")
        any6 = ipaddress.IPv6Address("::" if passive else "::1")
        chosen: list[IPAddress] = [any4, any6] if passive else [any6, any4]
        addrs: list[IPAddress] = [a for a in chosen if want in (0, _family_of(a))]
        return _infos([(str(a), a.version, 0) for a in addrs], entries, "", mapped)

    if spec.ip is None and flags & socket.AI_NUMERICHOST:
        raise gaierror(socket.EAI_NONAME, host=spec.text)
    if flags & socket.AI_ADDRCONFIG and spec.ip is None:
        want = _addrconfig_family(want, ctx)
    resolution = await resolve_host(spec, want, resolver or ctx.get_resolver())
    addresses = resolution.addresses
    if mapped:
        v6 = [a for a in addresses if a[0].version == 6]
        if v6 and not flags & socket.AI_ALL:
            addresses = v6
    canonname = ""
    if flags & socket.AI_CANONNAME:
        canonname = spec.text if spec.ip is not None else resolution.canonname
    pairs = rank_addresses(addresses, entries[0][2], ctx, spec.text)
    ranked = _ranked_destinations(pairs, addresses, ctx)
    if mapped and not ranked:
        raise gaierror(socket.EAI_NONAME, host=spec.text)
    return _infos(ranked, entries, canonname, mapped)


def _ranked_destinations(
    pairs: Sequence[AddrPair], addresses: Sequence[Address], ctx: PairContext
) -> list[tuple[str, int, int]]:
    """(address text, IP version, scope id) per destination: ranked first, then unusable ones."""
    # Work on the sockaddr text ranking produced: no address objects rebuilt per pair.
    seen: set[tuple[str, int]] = set()
    ranked: list[tuple[str, int, int]] = []  # (address text, IP version, scope id)
    for pair in pairs:
        da = pair.destination
        key = (da[0], da[3] if len(da) == 4 else 0)
        if key not in seen:
            seen.add(key)
            ranked.append((da[0], 6 if len(da) == 4 else 4, key[1]))
    if len(ranked) < len(addresses):
        # getaddrinfo reports every address; those without a usable source (ranking drops
        # their pairs) come last, in resolver order, as a plain resolver would return them.
        for ip, zone in addresses:
            scope = int(zone) if zone is not None and zone.isdigit() else None
            if zone is not None and scope is None:
                scope = interfaces.get_snapshot(max_age=ctx.snapshot_max_age).ifindex_of(zone)
            text = str(ip)
            if (text, scope or 0) not in seen and (text, 0) not in seen:
                seen.add((text, scope or 0))
                ranked.append((text, ip.version, scope or 0))
    return ranked


def _family_of(ip: IPAddress) -> int:
    return socket.AF_INET6 if ip.version == 6 else socket.AF_INET


def _addrconfig_family(family: int, context: PairContext) -> int:
    """AI_ADDRCONFIG: only families with a configured non-loopback address."""
    snapshot = interfaces.get_snapshot(max_age=context.snapshot_max_age)
    have = {_family_of(s.address) for s in snapshot.sources if not s.address.is_loopback}
    if family == socket.AF_UNSPEC:
        if len(have) == 1:
            return have.pop()
        if not have:
            raise gaierror(socket.EAI_NONAME)
        return family
    if family not in have:
        raise gaierror(socket.EAI_NONAME)
    return family


def _infos(
    destinations: Sequence[tuple[str, int, int]],
    entries: list[tuple[int, int, int]],
    canonname: str,
    mapped: bool,
) -> list[AddrInfo]:
    kinds = [(socket.SocketKind(t), p, port) for t, p, port in entries]
    out: list[AddrInfo] = []
    for text, version, scope in destinations:
        for kind, proto, port in kinds:
            sockaddr: SockAddr
            if version == 6:
                family = socket.AF_INET6
                sockaddr = (text, port, 0, scope)
            elif mapped:
                family = socket.AF_INET6
                sockaddr = (f"::ffff:{text}", port, 0, 0)
            else:
                family = socket.AF_INET
                sockaddr = (text, port)
            out.append((family, kind, proto, canonname if not out else "", sockaddr))
    return out


def system_order(addresses: Sequence[IPAddress]) -> list[IPAddress]:
    """*addresses* in the order glibc's ``getaddrinfo`` gives them on this host (namespace).

    That is RFC 6724 section 6 with, for each destination, the source the kernel picks
    (glibc asks with a UDP ``connect()``; the netlink route lookup gives the same answer
    without a socket) rather than RFC 6724 source selection, and rule 1 for a destination
    without a route. What plain ``asyncio.open_connection`` tries, in that order: the
    baseline the demo and the benchmarks compare with. The source's flags and prefix length
    come from the interface snapshot when the kernel's source is in it.
    """
    ips = list(addresses)
    choices = interfaces.route_choices([(ip, None) for ip in ips])
    known = {src.address: src for src in interfaces.get_snapshot().sources}
    chosen: list[SourceAddress | None] = []
    for ip in ips:
        choice = choices.get((ip, None))
        kernel = choice.source if choice is not None else None
        chosen.append(None if kernel is None else known.get(kernel) or SourceAddress(kernel))
    views = [
        ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped else ip
        for ip in ips
    ]
    keys = [
        destination_key(view, src, DEFAULT_POLICY_TABLE)
        for view, src in zip(views, chosen, strict=True)
    ]
    rule9 = [
        src.common_prefix_len(view) if src is not None and view.version == 6 else None
        for view, src in zip(views, chosen, strict=True)
    ]
    order = sorted(range(len(ips)), key=keys.__getitem__)
    order = apply_rule9(order, lambda i, j: keys[i] == keys[j], rule9)
    return [ips[i] for i in order]
