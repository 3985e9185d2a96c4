"""Ranked (source, destination) pairs for a host: :func:`get_addr_pairs` and its context.

The pipeline is: check the input (before any I/O) -> resolve (cache, hosts file or DNS) ->
the local sources (a cached snapshot of this thread's namespace) -> the kernel's own source
choice for each destination (cached with the snapshot) -> ``ranking.rank_pairs`` with the
latency and failure tables of a :class:`PairContext`. The same pipeline, shaped as
``getaddrinfo``, is in :mod:`apr_async.resolve.addrinfo`; explained for people, in
:mod:`apr_async.resolve.explain`.

The probe service will supply a context with measured latencies; until it is configured a
module-level default context (empty tables, default resolver) is used. Replace it with
:func:`set_default_context` or pass ``context=`` per call.
"""

from __future__ import annotations

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
    "PairContext",
    "default_context",
    "get_addr_pairs",
    "set_default_context",
]

SockAddr = tuple[str, int] | tuple[str, int, int, int]


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

TCP_UDP: dict[int, str] = {socket.SOCK_STREAM: "tcp", socket.SOCK_DGRAM: "udp"}


def _check_type(type: object) -> int:
    if isinstance(type, bool) or not isinstance(type, int):
        raise TypeError(f"type must be an int, not {type.__class__.__name__}")
    if type not in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        raise ValueError(f"type must be SOCK_STREAM or SOCK_DGRAM, not {type}")
    return int(type)


def service_port(service: int | str, type: int, *, numeric_only: bool = False) -> int:
    """The port number of ``service`` (a number, or a name looked up for ``type``'s protocol)."""
    if isinstance(service, int):
        return service
    if numeric_only:
        raise gaierror(socket.EAI_NONAME)
    protocol = TCP_UDP.get(type)
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


async def resolve_host(spec: HostSpec, family: int, resolver: Resolver) -> Resolution:
    """``spec``'s addresses of ``family``, from the cache when it has them; gaierror if none."""
    resolution = resolver.cached(spec, family)
    if resolution is None:
        resolution = await resolver.lookup(spec, family)
    error = resolution.error()
    if error is not None:
        raise error
    return resolution


#: rank_addresses's inputs to rank_pairs per cached view (at most _VIEWS_MAX views kept alive), then
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


def rank_addresses(
    addresses: Sequence[Address], port: int, context: PairContext, host: str
) -> list[AddrPair]:
    """The ranked pairs to ``addresses`` from this namespace's sources and ``context``."""
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
    number = service_port(service, type)
    resolution = await resolve_host(spec, family, resolver or ctx.get_resolver())
    return rank_addresses(resolution.addresses, number, ctx, spec.text)
