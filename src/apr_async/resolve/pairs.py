"""Ranked (source, destination) pairs for a host: ``get_addr_pairs``, ``getaddrinfo``, ``explain``.

The pipeline is: check the input (before any I/O) -> resolve (cache, hosts file or DNS) ->
the local sources (a cached snapshot of this thread's namespace) -> the kernel's own source
choice for each destination (cached with the snapshot) -> ``ranking.rank_pairs`` with the
latency and failure tables of a :class:`PairContext`.

The probe service will supply a context with measured latencies; until it is configured a
module-level default context (empty tables, default resolver) is used. Replace it with
:func:`set_default_context` or pass ``context=`` per call.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

from apr_async.core.addresses import IPAddress
from apr_async.core.failures import FailureTable
from apr_async.core.latency import LatencyTable
from apr_async.core.plan_cache import KernelChoices
from apr_async.core.policy_table import DEFAULT_POLICY_TABLE, PolicyTable
from apr_async.core.ranking import AddrPair, rank_pairs
from apr_async.core.rfc6724 import SourceAddress, apply_rule9, destination_key
from apr_async.core.sequences import str_tuple
from apr_async.errors import (
    HostSpec,
    gaierror,
    parse_host,
    validate_family,
    validate_port,
)
from apr_async.resolve import interfaces
from apr_async.resolve.resolver import Address, Resolution, Resolver

__all__ = [
    "AddrInfo",
    "PairContext",
    "default_context",
    "explain",
    "explain_text",
    "format_pairs",
    "get_addr_pairs",
    "getaddrinfo",
    "set_default_context",
    "system_order",
]

SockAddr = tuple[str, int] | tuple[str, int, int, int]
#: One ``getaddrinfo`` entry: ``(family, type, proto, canonname, sockaddr)``.
AddrInfo = tuple[socket.AddressFamily, socket.SocketKind, int, str, SockAddr]


@dataclass
class PairContext:
    """What ranking needs besides the host: measurements, failures, resolver, preferences.

    The probe service (issue 4) provides one with live tables; ``translators_seen`` lists the
    translators (``ranking.Translator`` values) it detected, which make ULA or private sources
    usable towards global destinations. When the local addresses or default gateways change
    (the snapshot fingerprint moves), the failure table is dropped: failures on the old
    network say nothing about the new one.
    """

    latency: LatencyTable = field(default_factory=LatencyTable)
    failures: FailureTable = field(default_factory=FailureTable)
    resolver: Resolver | None = None
    ipv6_bias_ms: float = 5.0
    translators_seen: Collection[str] = frozenset()
    policy: PolicyTable = DEFAULT_POLICY_TABLE
    snapshot_max_age: float = interfaces.DEFAULT_MAX_AGE
    clock: Callable[[], float] = time.monotonic
    fingerprint: str | None = field(default=None, compare=False)
    #: The connect layer's checked arguments per call site (``apr_async.connect.fast``): kept
    #: here so that they live exactly as long as the context they refer to.
    call_sites: dict[tuple[object, ...], object] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        # Any collection or iterable of str (a list, a generator), kept as a frozenset.
        self.translators_seen = frozenset(
            str_tuple(self.translators_seen, "PairContext.translators_seen")
        )

    def get_resolver(self) -> Resolver:
        """This context's resolver, created on first use."""
        if self.resolver is None:
            self.resolver = Resolver()
        return self.resolver

    def observe_network(self, fingerprint: str) -> None:
        """Note the current network's fingerprint; drop failures when it changed."""
        if fingerprint != self.fingerprint:
            if self.fingerprint is not None:
                self.failures.clear()
            self.fingerprint = fingerprint


_default_lock = threading.Lock()
_default: PairContext | None = None
_default_set_explicitly = False


def default_context() -> PairContext:
    """The module-level context used when none is passed (created on first use)."""
    global _default  # noqa: PLW0603 - a replaceable process-wide default is the point
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = PairContext()
    return _default


#: Called before a module-level function falls back to the default context, so that the
#: package's lazily started default probe service can start and install its live tables
#: (``apr_async.probe.default`` registers it; a hook because that module imports this one).
before_default_use: Callable[[], object] | None = None


def implicit_context() -> PairContext:
    """The context used when a caller passes none: the default probe service's once it runs
    (it is started here, in the background, when its configuration allows), else the default.
    """
    if before_default_use is not None:
        before_default_use()
    return default_context()


def set_default_context(context: PairContext | None) -> None:
    """Replace the module-level default context (``None``: a fresh one on next use)."""
    global _default  # noqa: PLW0603
    global _default_set_explicitly  # noqa: PLW0603
    if context is not None and not isinstance(context, PairContext):
        raise TypeError(f"context must be a PairContext, not {type(context).__name__}")
    with _default_lock:
        _default = context
        _default_set_explicitly = context is not None


def default_context_was_set() -> bool:
    """Whether a default context was installed with :func:`set_default_context` (by the
    application, a probe service or ``configure()``), as opposed to none or the plain one
    created on first use."""
    return _default is not None and _default_set_explicitly


# --------------------------------------------------------------------------- checks

_TCP_UDP: dict[int, str] = {socket.SOCK_STREAM: "tcp", socket.SOCK_DGRAM: "udp"}


def _check_type(type: object) -> int:
    if isinstance(type, bool) or not isinstance(type, int):
        raise TypeError(f"type must be an int, not {type.__class__.__name__}")
    if type not in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        raise ValueError(f"type must be SOCK_STREAM or SOCK_DGRAM, not {type}")
    return int(type)


def _service_port(service: int | str, type: int, *, numeric_only: bool = False) -> int:
    if isinstance(service, int):
        return service
    if numeric_only:
        raise gaierror(socket.EAI_NONAME)
    protocol = _TCP_UDP.get(type)
    if protocol is None:
        raise gaierror(socket.EAI_SERVICE)
    try:
        return socket.getservbyname(service, protocol)
    except OSError:
        raise gaierror(socket.EAI_SERVICE) from None


def _zone_index(zone: str | None, snapshot: interfaces.HostSnapshot, host: str) -> int | None:
    if zone is None:
        return None
    if zone.isdigit():
        return int(zone)
    index = snapshot.ifindex_of(zone)
    if index is None:
        # What getaddrinfo says for "fe80::1%nosuch".
        raise gaierror(socket.EAI_NONAME, host=host, detail=f"no interface named {zone!r}")
    return index


# --------------------------------------------------------------------------- the pipeline


async def _resolve(spec: HostSpec, family: int, resolver: Resolver) -> Resolution:
    resolution = resolver.cached(spec, family)
    if resolution is None:
        resolution = await resolver.lookup(spec, family)
    error = resolution.error()
    if error is not None:
        raise error
    return resolution


#: _rank's inputs to rank_pairs per cached view (at most _VIEWS_MAX views kept alive), then
#: per destination objects: see _destinations.
_PREPARED: dict[
    int,
    tuple[
        interfaces.CachedView,
        dict[
            tuple[object, ...],
            tuple[tuple[object, ...], tuple[tuple[IPAddress, int | None], ...], KernelChoices],
        ],
    ],
] = {}
_VIEWS_MAX = 4
_PER_VIEW_MAX = 256


def _destinations(
    addresses: Sequence[Address], view: interfaces.CachedView, host: str
) -> tuple[tuple[tuple[IPAddress, int | None], ...], KernelChoices]:
    """The destinations with their zone indexes, and the kernel's source for each.

    Remembered per cached view and the identity of the address objects (a cached answer
    hands out the same objects each time; the entry keeps them, and the view, alive, so their
    ids cannot be reused while it exists): a warm call hashes no ``ipaddress`` object.
    """
    per_view = _PREPARED.get(id(view))
    if per_view is None or per_view[0] is not view:
        if len(_PREPARED) >= _VIEWS_MAX:
            _PREPARED.clear()  # old snapshots: the current one is looked up again below
        per_view = _PREPARED[id(view)] = (view, {})
    memo = per_view[1]
    key = (*[id(item[0]) for item in addresses], *[item[1] for item in addresses])
    hit = memo.get(key)
    if hit is not None:
        return hit[1], hit[2]
    snapshot = view.snapshot
    destinations = tuple([(ip, _zone_index(zone, snapshot, host)) for ip, zone in addresses])
    routes = view.route_choices(destinations)
    kernel_sources: dict[IPAddress, IPAddress] = {}
    for item in destinations:
        choice = routes.get(item)
        if choice is not None and choice.source is not None:
            kernel_sources.setdefault(item[0], choice.source)
    kernel = KernelChoices(destinations, kernel_sources)
    if len(memo) >= _PER_VIEW_MAX:
        memo.clear()
    memo[key] = (tuple([item[0] for item in addresses]), destinations, kernel)
    return destinations, kernel


def _rank(
    addresses: Sequence[Address], port: int, context: PairContext, host: str
) -> list[AddrPair]:
    view = interfaces.cached_view(max_age=context.snapshot_max_age)
    snapshot = view.snapshot
    context.observe_network(snapshot.fingerprint)
    destinations, kernel_sources = _destinations(addresses, view, host)
    return rank_pairs(
        destinations,
        snapshot.sources,
        port,
        latency=context.latency,
        failures=context.failures,
        now=context.clock(),
        ipv6_bias_ms=context.ipv6_bias_ms,
        kernel_sources=kernel_sources,
        translators_seen=context.translators_seen,
        policy=context.policy,
    )


async def get_addr_pairs(
    host: str | bytes,
    port: int | str | None,
    *,
    type: int = socket.SOCK_STREAM,
    family: int = socket.AF_UNSPEC,
    resolver: Resolver | None = None,
    context: PairContext | None = None,
) -> list[AddrPair]:
    """The ``(family, source, destination)`` pairs for ``host``, most likely to work fast first.

    ``AF, SA, DA = pair``: ``SA`` is ready for ``bind()`` and ``DA`` for ``connect()`` (IPv6
    4-tuples, with the scope id for link-local). ``pair.reason`` says why each pair is at its
    place. ``port`` may be a service name (looked up for ``type``'s protocol). Bad input raises
    ``TypeError``/``ValueError`` before any I/O; resolution failures raise ``socket.gaierror``
    with the stdlib's codes.
    """
    spec = parse_host(host)
    service = validate_port(port)
    type = _check_type(type)
    family = validate_family(family)
    ctx = context if context is not None else implicit_context()
    number = _service_port(service, type)
    resolution = await _resolve(spec, family, resolver or ctx.get_resolver())
    return _rank(resolution.addresses, number, ctx, spec.text)


async def explain(
    host: str | bytes,
    port: int | str | None,
    *,
    type: int = socket.SOCK_STREAM,
    family: int = socket.AF_UNSPEC,
    resolver: Resolver | None = None,
    context: PairContext | None = None,
) -> list[AddrPair]:
    """Same as :func:`get_addr_pairs`; read each pair's ``reason`` (or use :func:`explain_text`)."""
    return await get_addr_pairs(
        host, port, type=type, family=family, resolver=resolver, context=context
    )


def format_pairs(pairs: Sequence[AddrPair]) -> str:
    """A table of ranked pairs for people: rank, source, destination, RTT, failing, reason."""
    rows = [("#", "source", "destination", "rtt", "reason")]
    for rank, pair in enumerate(pairs, 1):
        rtt = "-" if pair.rtt is None else f"{pair.rtt * 1000:.1f} ms"
        if pair.failing:
            rtt += " (failed recently)"
        rows.append(
            (
                str(rank),
                _sockaddr_text(pair.source),
                _sockaddr_text(pair.destination),
                rtt,
                pair.reason,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = []
    for row in rows:
        cells = [row[i].ljust(widths[i]) for i in range(4)]
        lines.append("  ".join([*cells, row[4]]).rstrip())
    return "\n".join(lines)


async def explain_text(
    host: str | bytes,
    port: int | str | None,
    *,
    type: int = socket.SOCK_STREAM,
    family: int = socket.AF_UNSPEC,
    resolver: Resolver | None = None,
    context: PairContext | None = None,
    svcb: bool = False,
) -> str:
    """:func:`explain` formatted as a table (see :func:`format_pairs`).

    ``svcb=True`` also asks for the name's HTTPS records (RFC 9460) and explains them first:
    each endpoint (target, port, ALPN, the record it came from, why it ranks where it does),
    what was skipped and why, then the ranked pairs of every endpoint, as a connection with
    ``svcb=True`` would try them, and last the name's own pairs (the fallback).
    """
    if not isinstance(svcb, bool):
        raise TypeError(f"svcb must be a bool, not {svcb!r}")
    pairs = await get_addr_pairs(
        host, port, type=type, family=family, resolver=resolver, context=context
    )
    if not svcb:
        return format_pairs(pairs)
    # Lazy: resolve.https builds on this module (its lookups take a PairContext).
    from apr_async.resolve.https import explain_https, svcb_endpoints  # noqa: PLC0415

    ctx = context if context is not None else default_context()
    if resolver is not None:
        ctx = PairContext(resolver=resolver)
    name = host.decode() if isinstance(host, bytes) else host
    svc_port = 443 if port is None else _service_port(port, type)
    answer = await svcb_endpoints(name, svc_port, context=ctx)
    parts = ["HTTPS records of " + name + ":", *("  " + line for line in explain_https(answer))]
    for endpoint in answer.endpoints:
        target_pairs = await get_addr_pairs(endpoint.target, endpoint.port, type=type,
                                            family=family, context=ctx)
        parts += ["", f"endpoint #{endpoint.rank + 1} {endpoint.target}:{endpoint.port}:",
                  format_pairs(target_pairs)]
    parts += ["", f"{name} itself (A/AAAA, the fallback):", format_pairs(pairs)]
    return "\n".join(parts)


def _sockaddr_text(addr: SockAddr) -> str:
    if len(addr) == 4:
        ip, port, _flow, scope = addr
        ip_text = f"{ip}%{scope}" if scope else ip
        return f"[{ip_text}]:{port}"
    return f"{addr[0]}:{addr[1]}"


# --------------------------------------------------------------------------- getaddrinfo

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
        protocol = _TCP_UDP.get(t) or ("tcp" if t == socket.SOCK_SEQPACKET else None)
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
    resolution = await _resolve(spec, want, resolver or ctx.get_resolver())
    addresses = resolution.addresses
    if mapped:
        v6 = [a for a in addresses if a[0].version == 6]
        if v6 and not flags & socket.AI_ALL:
            addresses = v6
    canonname = ""
    if flags & socket.AI_CANONNAME:
        canonname = spec.text if spec.ip is not None else resolution.canonname
    pairs = _rank(addresses, entries[0][2], ctx, spec.text)
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
    if mapped and not ranked:
        raise gaierror(socket.EAI_NONAME, host=spec.text)
    return _infos(ranked, entries, canonname, mapped)


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
