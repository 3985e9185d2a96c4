"""The background probe service: keeps the ranking true to the network.

:class:`ProbeService` owns the latency table, the failure table and the resolver that ranking
uses (its :attr:`~ProbeService.context` is a :class:`~apr_async.pairs.PairContext`, installed
as the package default while the service runs). In the background it:

* probes, every ``probe_interval`` (with jitter), each target from each usable local source:
  ICMP echo (when sockets allow) and a TCP connect on the target's port, under a global rate
  limit and a concurrency bound. Targets are the configured ones, the default gateways, the
  destinations the application used recently (re-probed on their own port, at most every
  ``recent_probe_interval``) and, optionally, RIPE Atlas anchors;
* records passive samples: :meth:`~ProbeService.record_attempt` takes every connection attempt
  made by ``open_connection`` and friends;
* derives a :class:`~apr_async.status.ConnectivityStatus` after each round and discovers a NAT64
  prefix (RFC 7050);
* notices network changes (netlink events or polling) and then drops the failure table and the
  stale status, and probes again at once.

Nothing blocks the start: :meth:`start` reads the interfaces (one netlink dump), checks which
ICMP sockets are allowed and schedules the first round; ranking answers at once from RFC 6724
and the kernel's routes, and measurements refine it as they arrive. ``await
service.wait_ready(timeout)`` waits for the first round. There are no threads: every probe is
an asyncio task on the caller's loop.

The module also holds the lazily started default service used by the package-level functions
(:func:`status`, :func:`configure`, :func:`default_service`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno as errno_codes
import logging
import random
import socket
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from apr_async import interfaces, pairs
from apr_async.addresses import AddressKind, IPAddress, Scope, kind_of, parse_address, scope_of
from apr_async.config import Config
from apr_async.latency import FailureTable, LatencyTable
from apr_async.netwatch import NetWatcher
from apr_async.persist import CacheBusyError, CachedLatency, load_cache, save_cache
from apr_async.probes import (
    IcmpMode,
    IcmpUnavailableError,
    ProbeResult,
    detect_icmp_mode,
    icmp_probe,
    tcp_probe,
)
from apr_async.ranking import Translator
from apr_async.resolver import Resolver
from apr_async.rfc6724 import SourceAddress
from apr_async.status import ConnectivityStatus, Observation, StatusTracker, nat64_prefixes

__all__ = [
    "PathMeasurement",
    "ProbeService",
    "Target",
    "aclose_default",
    "configure",
    "current_service",
    "default_service",
    "implicit_service",
    "status",
    "wait_ready",
]

log = logging.getLogger(__name__)

TargetKind = Literal["configured", "gateway", "recent", "atlas"]

#: How often the NAT64 prefix is looked up again when the network did not change.
_NAT64_RECHECK = 300.0
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
class PathMeasurement:
    """What is known about one (source, destination) path, for people and monitors.

    ``ok`` is the latest result (by any method); RTTs are seconds.
    """

    source: str
    destination: str
    methods: tuple[str, ...]
    ok: bool
    rtt: float | None
    min_rtt: float | None
    loss: float
    samples: int
    age: float


@dataclass(frozen=True, slots=True)
class _Probe:
    method: Literal["icmp", "tcp"]
    source: SourceAddress
    target: Target
    offlink: bool


class _Pacer:
    """Global probe rate limit: a token bucket written as "next free slot"."""

    def __init__(self, rate: float, burst: float) -> None:
        self._gap = 1.0 / rate
        self._burst = max(burst, 1.0) * self._gap
        self._next = -float("inf")

    async def wait(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        slot = max(self._next, now - self._burst + self._gap)
        self._next = slot + self._gap
        if slot > now:
            await asyncio.sleep(slot - now)


def _source_text(source: SourceAddress) -> str:
    if source.scope <= Scope.LINK_LOCAL and source.address.version == 6 and source.ifindex:
        return f"{source.address}%{source.ifindex}"
    return str(source.address)


def _ip_of(addr: object) -> tuple[IPAddress, int | None] | None:
    if not isinstance(addr, tuple) or not addr or not isinstance(addr[0], str):
        return None
    try:
        ip, zone = parse_address(addr[0])
    except ValueError:
        return None
    scope = addr[3] if len(addr) == 4 and isinstance(addr[3], int) and addr[3] else None
    if scope is None and zone is not None and zone.isdigit():
        scope = int(zone)
    return ip, scope


class ProbeService:
    """The background probe service; an async context manager.

    ``config`` defaults to ``Config.from_env()``. With ``install=True`` (default) the
    service's :attr:`context` becomes the package-wide default ranking context while it runs,
    so ``apr_async.get_addr_pairs`` uses its measurements; the previous default comes back
    when it closes. ``clock`` (monotonic seconds) and ``rng`` are for tests.
    """

    def __init__(
        self,
        config: Config | None = None,
        *,
        install: bool = True,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        if config is None:
            config = Config.from_env()
        if not isinstance(config, Config):
            raise TypeError(f"config must be an apr_async.Config, not {type(config).__name__}")
        self.config = config
        self._install = bool(install)
        self._clock = clock
        self._rng = rng or random.Random()
        self.latency = LatencyTable(
            prefix_v6=config.prefix_v6,
            prefix_v4=config.prefix_v4,
            alpha=config.ewma_weight,
            max_entries=config.table_size,
        )
        self.failures = FailureTable(config.failure_ttl, max_entries=config.table_size)
        self.resolver = Resolver(list(config.nameservers) or None, timeout=config.dns_timeout)
        #: The ranking context backed by this service's tables (pass it as ``context=``).
        self.context = pairs.PairContext(
            latency=self.latency,
            failures=self.failures,
            resolver=self.resolver,
            ipv6_bias_ms=config.ipv6_bias_ms,
            clock=clock,
        )
        self._tracker = StatusTracker(max_entries=config.table_size)
        self._state: Literal["new", "running", "closed"] = "new"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._atlas_task: asyncio.Task[None] | None = None
        self._watcher: NetWatcher | None = None
        self._snapshot: interfaces.HostSnapshot | None = None
        self._icmp: IcmpMode | None = None
        self._nat64: str | None = None
        self._nat64_checked: float | None = None
        self._recent: OrderedDict[tuple[IPAddress, int | None, int], list[float]] = (
            OrderedDict()
        )
        self._targets: list[Target] = []
        self._anchors: list[IPAddress] = []
        self._anchor_rotation: Any = None
        self._status_dirty = True
        self._status = ConnectivityStatus()
        self._ready = asyncio.Event()
        self._tick = asyncio.Event()
        self._wake = asyncio.Event()
        self._pacer = _Pacer(config.probe_rate, min(config.probe_rate, 10.0))
        self._limit = asyncio.Semaphore(config.max_concurrent_probes)
        self._previous_context: pairs.PairContext | None = None
        self._released = False
        self._last_save: float | None = None
        self._persist_warned = False
        #: Completed probe rounds.
        self.rounds = 0
        #: Network changes noticed (addresses, gateways).
        self.network_changes = 0
        #: Probes sent, by method (for diagnostics and the benchmark).
        self.probes_sent = {"icmp": 0, "tcp": 0}

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> ProbeService:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`aclose`."""
        return self._state == "running"

    @property
    def icmp_mode(self) -> IcmpMode | None:
        """The ICMP socket kind in use, or ``None`` when ICMP is off."""
        return self._icmp

    async def start(self) -> None:
        """Start probing in the background; returns at once (no network wait)."""
        self.start_nowait()

    def start_nowait(self) -> None:
        """:meth:`start` for synchronous callers that run inside the event loop."""
        if self._state != "new":
            raise RuntimeError(f"ProbeService is {self._state}; it can be started once")
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._state = "running"
        try:
            self._snapshot = interfaces.read_snapshot()
            self.context.observe_network(self._snapshot.fingerprint)
            self._icmp = detect_icmp_mode(self.config.icmp)
            if self._icmp is None and self.config.icmp != "off":
                log.warning(
                    "ICMP probes are off: neither raw sockets nor ping sockets are allowed "
                    "here (see net.ipv4.ping_group_range); TCP probes carry on"
                )
            if self.config.persist:
                self._load_cache()
            self._derive_status()
            self._watcher = NetWatcher(
                self._on_network_event,
                mode=self.config.netwatch,
                poll_interval=self.config.poll_interval,
                debounce=self.config.netwatch_debounce,
            )
            self._watcher.start()
            if self.config.atlas:
                self._start_atlas(loop)
            if self._install:
                self._previous_context = pairs.default_context()
                pairs.set_default_context(self.context)
            self._task = loop.create_task(self._run(), name="apr_async-probe-service")
        except BaseException:
            if self._atlas_task is not None:
                self._atlas_task.cancel()
            self._release_sync()
            self._state = "closed"
            raise

    async def aclose(self) -> None:
        """Stop probing and release everything (sockets, tasks, resolver). Idempotent."""
        if self._state == "new":
            self._state = "closed"
            await self.resolver.close()
            return
        tasks = [t for t in (self._task, self._atlas_task) if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        await self._release()

    def _release_sync(self) -> None:
        if self._watcher is not None:
            self._watcher.close()
        if self._install and pairs.default_context() is self.context:
            pairs.set_default_context(self._previous_context)
        self._previous_context = None

    async def _release(self) -> None:
        if self._released:
            return
        self._released = True
        self._state = "closed"
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            await watcher.aclose()
        self._release_sync()
        if self.config.persist:
            self._save_cache(final=True)
        await self.resolver.close()
        self._notify_progress()

    # ------------------------------------------------------------------ public API

    def status(self) -> ConnectivityStatus:
        """The current connectivity status (derived from recent observations)."""
        if self._status_dirty:
            self._derive_status()
        return self._status

    async def wait_ready(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109
        """Wait until the first probe round has completed; False on timeout or when closed."""
        if self._ready.is_set():
            return True
        if self._state == "closed":
            return False
        try:
            async with asyncio.timeout(timeout):
                await self._wait_progress(self._ready.is_set)
        except (TimeoutError, RuntimeError):
            return False
        return self._ready.is_set()

    async def wait_rounds(self, count: int, timeout: float | None = None) -> int:  # noqa: ASYNC109
        """Wait for ``count`` more completed rounds; return the total. TimeoutError if not."""
        target = self.rounds + count
        async with asyncio.timeout(timeout):
            await self._wait_progress(lambda: self.rounds >= target)
        return self.rounds

    async def wait_status(
        self,
        predicate: Callable[[ConnectivityStatus], bool],
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> ConnectivityStatus:
        """Wait until the status satisfies ``predicate`` (checked after every round and
        passive sample); raise ``TimeoutError`` naming the last status otherwise."""
        try:
            async with asyncio.timeout(timeout):
                await self._wait_progress(lambda: predicate(self.status()))
        except TimeoutError:
            raise TimeoutError(f"status never matched; last: {self.status().summary()}") from None
        return self.status()

    async def _wait_progress(self, done: Callable[[], bool]) -> None:
        while not done():
            if self._state == "closed":
                raise RuntimeError("ProbeService closed")
            await self._tick.wait()

    def probe_now(self) -> None:
        """Start the next probe round at once (e.g. after the application saw trouble)."""
        self._wake.set()

    def targets(self) -> list[Target]:
        """The targets of the latest round."""
        return list(self._targets)

    def measurements(self) -> list[PathMeasurement]:
        """The latest result and latency figures of every probed path, best first."""
        now = self._clock()
        by_pair: dict[tuple[IPAddress, IPAddress], list[Observation]] = {}
        for obs in self._tracker.observations():
            by_pair.setdefault((obs.source, obs.destination), []).append(obs)
        out: list[PathMeasurement] = []
        for (src, dst), items in by_pair.items():
            latest = max(items, key=lambda o: o.at)
            estimate = self.latency.estimate(src, dst)
            exact = estimate is not None and not estimate.inherited
            out.append(
                PathMeasurement(
                    source=str(src),
                    destination=str(dst),
                    methods=tuple(sorted({o.method for o in items})),
                    ok=any(o.ok for o in items),  # the latest result of any method
                    rtt=estimate.rtt if exact and estimate is not None else None,
                    min_rtt=estimate.min if exact and estimate is not None else None,
                    loss=estimate.loss if exact and estimate is not None else 0.0,
                    samples=estimate.samples if exact and estimate is not None else 0,
                    age=now - latest.at,
                )
            )
        out.sort(key=lambda m: (not m.ok, m.rtt if m.rtt is not None else float("inf")))
        return out

    def record_attempt(
        self, pair: Any, port: int, ok: bool, rtt: float | None, errno: int | None
    ) -> None:
        """Passive sample: one connection attempt's outcome (see ``connect.AttemptRecorder``).

        A refusal (``ok`` false with an ``rtt``) proves the path; a silent failure counts as
        a loss. The destination joins the recently used ones, re-probed on ``port``.
        """
        src_info = _ip_of(getattr(pair, "source", None))
        dst_info = _ip_of(getattr(pair, "destination", None))
        if src_info is None or dst_info is None:
            return
        src, _ = src_info
        dst, scope = dst_info
        valid_rtt = rtt is None or (isinstance(rtt, int | float) and 0 <= rtt < 3600)
        valid_port = isinstance(port, int) and not isinstance(port, bool) and 0 < port < 65536
        if src.version != dst.version or not valid_rtt or not valid_port:
            return  # a sample that cannot be right is dropped; the connector must not fail
        now = self._clock()
        if rtt is not None or not ok:
            self.latency.record(src, dst, rtt, now)
        if ok:
            self.failures.record_success(src, dst, port)
        else:
            name = errno_codes.errorcode.get(errno, None) if errno is not None else None
            self.failures.record_failure(src, dst, port, now, error=name or "failed")
        self._tracker.observe(
            Observation(src, dst, ok or rtt is not None, now, self._offlink(dst), "passive")
        )
        self._note_recent(dst, scope, port, now)
        self._status_dirty = True
        self._notify_progress()

    def note_destination(self, destination: IPAddress, port: int, *, ifindex: int | None = None,
                         now: float | None = None) -> None:
        """Add a destination the application uses to the re-probed set (no sample)."""
        self._note_recent(destination, ifindex, port, self._clock() if now is None else now)

    # ------------------------------------------------------------------ the loop

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        urgent = True  # the first round, and one after a wake-up, is not spread out
        try:
            while True:
                started = loop.time()
                try:
                    await self._round(spread_out=not urgent)
                except Exception:
                    # a bug in one round must not silently end the service for good
                    log.exception("apr_async probe round failed")
                jitter = self.config.probe_jitter
                interval = self.config.probe_interval * (1 + self._rng.uniform(-jitter, jitter))
                # start-to-start schedule: a slow round does not stretch the period
                delay = max(0.0, started + interval - loop.time())
                if not self._wake.is_set():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay):
                            await self._wake.wait()
                urgent = self._wake.is_set()
                self._wake.clear()
        finally:
            # also reached when the loop shuts down without aclose() (asyncio.run)
            await self._release()

    async def _round(self, *, spread_out: bool) -> None:
        self._refresh_snapshot()
        snapshot = self._snapshot
        assert snapshot is not None
        now = self._clock()
        nat64 = None
        if self._nat64_due(snapshot, now):
            nat64 = asyncio.ensure_future(self._discover_nat64())
        try:
            targets = await self._collect_targets(snapshot, now)
            self._targets = targets
            plan = self._plan(snapshot, targets)
            if plan:
                # steady-state rounds spread their probes (no bursts on the wire); the first
                # round and one after a network change go as fast as the rate limit allows
                spread = 0.0
                if spread_out:
                    spread = min(self.config.probe_jitter * self.config.probe_interval,
                                 self.config.probe_interval / 2)
                outcomes = await asyncio.gather(*(self._probe(p, spread) for p in plan),
                                                return_exceptions=True)
                for outcome in outcomes:
                    if isinstance(outcome, Exception):
                        log.error("apr_async probe failed", exc_info=outcome)
            if nat64 is not None:
                await nat64
        finally:
            if nat64 is not None and not nat64.done():
                nat64.cancel()
                await asyncio.wait({nat64})
        self.rounds += 1
        self._derive_status()
        self._ready.set()
        if self.config.persist:
            self._save_cache(final=False)
        self._notify_progress()

    def _notify_progress(self) -> None:
        # wake every waiter once; they re-check their condition and wait on the next event
        tick, self._tick = self._tick, asyncio.Event()
        tick.set()

    # ------------------------------------------------------------------ targets and plan

    async def _collect_targets(
        self, snapshot: interfaces.HostSnapshot, now: float
    ) -> list[Target]:
        cfg = self.config
        out: list[Target] = []
        tcp_default = cfg.probe_port if cfg.tcp_probes else None
        for target in cfg.probe_targets:
            port = (target.port or cfg.probe_port) if cfg.tcp_probes else None
            for ip, ifindex in await self._resolve_target(target.host, snapshot):
                out.append(Target(ip, ifindex, port, "configured", target.host))
        if cfg.probe_gateways:
            # a gateway is not a TCP service; it gets TCP only when ICMP cannot be used,
            # and then a refusal (RST) is the expected proof of the path
            gw_port = tcp_default if self._icmp is None else None
            for gw in snapshot.gateways:
                if gw.address is not None:
                    ifindex = gw.ifindex if scope_of(gw.address) <= Scope.LINK_LOCAL else None
                    out.append(Target(gw.address, ifindex, gw_port, "gateway", str(gw.address)))
        for (ip, ifindex, port), times in list(self._recent.items()):
            last_used, last_probed = times
            if now - last_used > cfg.recent_ttl:
                del self._recent[(ip, ifindex, port)]
                continue
            if now - last_probed >= cfg.recent_probe_interval:
                times[1] = now
                out.append(Target(ip, ifindex, port if cfg.tcp_probes else None, "recent",
                                  str(ip)))
        for ip in self._anchors:
            out.append(Target(ip, None, tcp_default, "atlas", str(ip)))
        return out

    async def _resolve_target(
        self, host: str, snapshot: interfaces.HostSnapshot
    ) -> list[tuple[IPAddress, int | None]]:
        try:
            ip, zone = parse_address(host)
        except ValueError:
            pass
        else:
            ifindex = None
            if zone is not None:
                ifindex = int(zone) if zone.isdigit() else snapshot.ifindex_of(zone)
                if ifindex is None:
                    return []
            return [(ip, ifindex)]
        try:
            async with asyncio.timeout(self.config.dns_timeout * 2):
                found = await self.resolver.resolve(host)
        except (OSError, TimeoutError) as exc:
            log.debug("probe target %s does not resolve: %s", host, exc)
            return []
        out: list[tuple[IPAddress, int | None]] = []
        for ip, zone in found:
            ifindex = None
            if zone is not None:
                ifindex = int(zone) if zone.isdigit() else snapshot.ifindex_of(zone)
            out.append((ip, ifindex))
        return out

    def _plan(self, snapshot: interfaces.HostSnapshot, targets: Sequence[Target]) -> list[_Probe]:
        sources = [s for s in snapshot.sources if not s.deprecated and s.kind not in _SKIP_KINDS]
        plan: list[_Probe] = []
        seen: set[tuple[str, SourceAddress, IPAddress, int | None]] = set()
        for target in targets:
            if kind_of(target.ip) in _SKIP_KINDS:
                continue
            offlink = self._offlink(target.ip)
            for source in sources:
                if not _eligible(source, target):
                    continue
                methods: list[Literal["icmp", "tcp"]] = []
                if self._icmp is not None:
                    methods.append("icmp")
                if target.port is not None:
                    methods.append("tcp")
                for method in methods:
                    key = (method, source, target.ip, target.port if method == "tcp" else None)
                    if key in seen:
                        continue
                    seen.add(key)
                    plan.append(_Probe(method, source, target, offlink))
        return plan

    def _offlink(self, ip: IPAddress) -> bool:
        """True when ``ip`` lies behind a gateway: not link-local, not a gateway, not in a
        prefix configured on a local interface."""
        snapshot = self._snapshot
        if scope_of(ip) <= Scope.LINK_LOCAL or snapshot is None:
            return False
        for gw in snapshot.gateways:
            if gw.address == ip:
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

    # ------------------------------------------------------------------ probing

    async def _probe(self, probe: _Probe, spread: float) -> None:
        loop = asyncio.get_running_loop()
        if spread > 0:
            await asyncio.sleep(self._rng.uniform(0, spread))
        async with self._limit:
            await self._pacer.wait(loop)
            source, target = _source_text(probe.source), probe.target.text()
            wait = self.config.probe_timeout
            try:
                if probe.method == "icmp":
                    if self._icmp is None:
                        return
                    self.probes_sent["icmp"] += 1
                    result = await icmp_probe(
                        source, target, max_wait=wait, privileged=self._icmp == "privileged"
                    )
                else:
                    assert probe.target.port is not None
                    self.probes_sent["tcp"] += 1
                    result = await tcp_probe(source, target, probe.target.port, max_wait=wait)
            except IcmpUnavailableError as exc:
                if self._icmp is not None:
                    log.warning("ICMP probes are off (%s); TCP probes carry on", exc.strerror)
                    self._icmp = None
                return
            except (ValueError, OSError) as exc:
                log.debug("probe %s -> %s skipped: %s", source, target, exc)
                return
        self._record_probe(probe, result)

    def _record_probe(self, probe: _Probe, result: ProbeResult) -> None:
        if result.error in (errno_codes.EADDRNOTAVAIL, errno_codes.EINVAL) and not result.ok:
            return  # the source went away mid-round: that says nothing about the path
        src, dst = probe.source.address, probe.target.ip
        now = self._clock()
        self.latency.record(src, dst, result.rtt if result.ok else None, now)
        port = probe.target.port
        if result.method == "tcp" and port is not None:
            if result.ok:
                self.failures.record_success(src, dst, port)
            else:
                name = errno_codes.errorcode.get(result.error or 0, "failed")
                self.failures.record_failure(src, dst, port, now, error=name)
        self._tracker.observe(Observation(src, dst, result.ok, now, probe.offlink,
                                          result.method))
        self._status_dirty = True

    def _note_recent(self, ip: IPAddress, ifindex: int | None, port: int, now: float) -> None:
        limit = self.config.recent_destinations
        if limit <= 0 or not 0 < port <= 65535:
            return
        key = (ip, ifindex, port)
        times = self._recent.pop(key, None)
        if times is None:
            times = [now, now]  # the attempt itself was a measurement
        times[0] = now
        self._recent[key] = times
        while len(self._recent) > limit:
            self._recent.popitem(last=False)

    # ------------------------------------------------------------------ status and network

    def _derive_status(self) -> None:
        snapshot = self._snapshot
        if snapshot is None:
            return
        gateways: dict[int, str | None] = {}
        for family in (socket.AF_INET, socket.AF_INET6):
            gw = snapshot.default_gateway(family)
            text: str | None = None
            if gw is not None:
                if gw.address is None:
                    text = f"dev {gw.interface}" if gw.interface else "on-link"
                elif scope_of(gw.address) <= Scope.LINK_LOCAL and gw.interface:
                    text = f"{gw.address}%{gw.interface}"
                else:
                    text = str(gw.address)
            gateways[family] = text
        sources = [s for s in snapshot.sources if s.kind is not AddressKind.LOOPBACK]
        before = self._status
        status = self._tracker.derive(
            sources,
            now=self._clock(),
            max_age=self.config.effective_status_max_age,
            gateway4=gateways[socket.AF_INET],
            gateway6=gateways[socket.AF_INET6],
            nat64_prefix=self._nat64,
        )
        self._status = status
        self._status_dirty = False
        translators = set()
        if status.NAT44:
            translators.add(Translator.NAT44.value)
        if status.NPTv6:
            translators.add(Translator.NPTV6.value)
        if status.NAT64_prefix:
            translators.add(Translator.NAT64.value)
        self.context.translators_seen = frozenset(translators)
        if not before.same_flags(status) and status.observations:
            log.info("apr_async connectivity: %s", status.summary())

    def _refresh_snapshot(self) -> None:
        try:
            snapshot = interfaces.read_snapshot()
        except OSError as exc:
            log.debug("cannot read interfaces: %s", exc)
            return
        if self._snapshot is None or snapshot.fingerprint != self._snapshot.fingerprint:
            self._network_changed(snapshot)
        else:
            self._snapshot = snapshot

    def _on_network_event(self) -> None:
        if self._state != "running":
            return
        before = self._snapshot.fingerprint if self._snapshot is not None else None
        self._refresh_snapshot()
        if self._snapshot is not None and self._snapshot.fingerprint != before:
            self._wake.set()

    def _network_changed(self, snapshot: interfaces.HostSnapshot) -> None:
        first = self._snapshot is None
        self._snapshot = snapshot
        self.context.observe_network(snapshot.fingerprint)
        if first:
            return
        self.network_changes += 1
        log.info("apr_async: network changed (addresses or gateways); probing again")
        # failures and observations describe the old network
        self.failures.clear()
        self._tracker.forget()
        interfaces.invalidate_cache()
        self._nat64_checked = None
        self._derive_status()
        self._notify_progress()

    def _nat64_due(self, snapshot: interfaces.HostSnapshot, now: float) -> bool:
        if not self.config.nat64_discovery:
            return False
        if not any(s.address.version == 6 and s.scope == Scope.GLOBAL for s in snapshot.sources):
            self._nat64 = None
            return False
        return self._nat64_checked is None or now - self._nat64_checked >= _NAT64_RECHECK

    async def _discover_nat64(self) -> None:
        self._nat64_checked = self._clock()
        try:
            async with asyncio.timeout(self.config.dns_timeout * 2):
                resolution = await self.resolver.lookup("ipv4only.arpa", socket.AF_INET6)
            answers = [ip for ip, _zone in resolution.addresses]
        except (OSError, TimeoutError) as exc:
            log.debug("NAT64 discovery: %s", exc)
            answers = []
        found = nat64_prefixes(answers)
        prefix = str(found[0]) if found else None
        if prefix != self._nat64:
            if prefix:
                log.info("apr_async: NAT64 prefix %s (RFC 7050)", prefix)
            self._nat64 = prefix
            self._status_dirty = True

    # ------------------------------------------------------------------ atlas

    def _start_atlas(self, loop: asyncio.AbstractEventLoop) -> None:
        from apr_async.atlas import AnchorRotation  # noqa: PLC0415 - optional feature

        self._anchor_rotation = AnchorRotation(
            per_family=self.config.atlas_per_family,
            interval=self.config.atlas_rotate_interval,
            rng=self._rng,
        )
        self._atlas_task = loop.create_task(self._atlas_loop(), name="apr_async-atlas")

    async def _atlas_loop(self) -> None:
        from apr_async.atlas import fetch_anchors  # noqa: PLC0415

        rotation = self._anchor_rotation
        while True:
            try:
                anchors = await fetch_anchors(
                    self.config.atlas_url,
                    max_wait=max(10.0, self.config.dns_timeout * 4),
                    nameservers=self.config.nameservers,
                )
            except Exception as exc:  # optional targets: never fatal
                log.info("RIPE Atlas anchors unavailable: %s", exc)
            else:
                rotation.update(anchors, self._clock())
            self._anchors = rotation.targets(self._clock())
            await asyncio.sleep(self.config.atlas_rotate_interval)

    # ------------------------------------------------------------------ persistence

    def _load_cache(self) -> None:
        path = self.config.effective_cache_path
        wall, now = time.time(), self._clock()
        entries = load_cache(path, now=wall)
        if not entries:
            return
        data = self.latency.snapshot(now)
        data["entries"] = [
            [e.source, e.destination, e.ewma, e.last, e.minimum, e.samples, e.lost, e.fill,
             max(0.0, wall - e.seen)]
            for e in entries
        ]
        try:
            self.latency.restore(data, now)
        except ValueError as exc:
            log.warning("apr_async cache %s not usable: %s", path, exc)
        else:
            log.debug("warm start: %d latency entries from %s", len(entries), path)

    def _save_cache(self, *, final: bool) -> None:
        now = self._clock()
        if not final and self._last_save is not None and (
            now - self._last_save < self.config.persist_interval
        ):
            return
        self._last_save = now
        wall = time.time()
        rows = self.latency.snapshot(now)["entries"]
        entries = [
            CachedLatency(src, dst, ewma, last, minimum, samples, lost, fill, wall - age)
            for src, dst, ewma, last, minimum, samples, lost, fill, age in rows
        ]
        if not entries:
            return
        try:
            save_cache(self.config.effective_cache_path, entries, wait=False, now=wall)
        except CacheBusyError:
            self._last_save = None if not final else now  # another process is writing: retry
        except OSError as exc:
            if not self._persist_warned:
                log.warning("apr_async cache not written: %s", exc)
                self._persist_warned = True


def _eligible(source: SourceAddress, target: Target) -> bool:
    """Can this source reach that destination at all (scope, family, zone)?"""
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


# ---------------------------------------------------------------------- the default service

_background: set[asyncio.Task[None]] = set()
_default_lock = threading.Lock()
_default_config: Config | None = None
_defaults: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, ProbeService] = (
    weakref.WeakKeyDictionary()
)
#: Loops on which implicit use found autostart off (so the configuration is not re-read).
_declined: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()


def configure(config: Config | None = None, **changes: Any) -> Config:
    """Set the configuration of the default service (``Config.from_env(**changes)`` when
    ``config`` is omitted) and return it.

    A default service already running is closed; the next use starts one with the new
    configuration. Bad values raise before anything changes.
    """
    global _default_config  # noqa: PLW0603 - the package-wide default is the point
    if config is not None and changes:
        raise TypeError("pass either a Config or keyword changes, not both")
    new = config if config is not None else Config.from_env(**changes)
    if not isinstance(new, Config):
        raise TypeError(f"config must be an apr_async.Config, not {type(new).__name__}")
    with _default_lock:
        _default_config = new
        old = list(_defaults.items())
        _defaults.clear()
        _declined.clear()
    for loop, service in old:
        _close_soon(loop, service)
    return new


def _close_soon(loop: asyncio.AbstractEventLoop, service: ProbeService) -> None:
    if loop.is_closed():
        return
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None

    def spawn() -> None:
        task = loop.create_task(service.aclose())
        _background.add(task)
        task.add_done_callback(_background.discard)

    if running is loop:
        spawn()
    else:
        loop.call_soon_threadsafe(spawn)


def current_service() -> ProbeService | None:
    """The default service of the running event loop, if one was started (never starts one)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    service = _defaults.get(loop)
    return service if service is not None and service.running else None


def default_service() -> ProbeService:
    """The default service of the running event loop, created (and, unless the config says
    ``autostart=False``, started) on first use. Needs a running event loop."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        raise RuntimeError("the apr_async default service needs a running event loop") from None
    with _default_lock:
        service = _defaults.get(loop)
        if service is not None and service._state != "closed":
            return service
        config = _default_config if _default_config is not None else Config.from_env()
        service = ProbeService(config)
        _defaults[loop] = service
    if config.autostart:
        service.start_nowait()
    return service


def implicit_service() -> ProbeService | None:
    """The running loop's default service for module-level calls, started now (in the
    background: this never waits for the network) unless the configuration says
    ``autostart=False``. ``None`` outside an event loop or when autostart is off.

    Called on every ``get_addr_pairs``/``open_connection`` without an explicit context, so the
    common path is one dictionary lookup; the configuration is read once per loop.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    service = _defaults.get(loop)
    if service is not None:
        return service if service.running else None
    if loop in _declined:
        return None
    config = _default_config if _default_config is not None else Config.from_env()
    if not config.autostart:
        _declined.add(loop)
        return None
    service = default_service()
    return service if service.running else None


pairs.before_default_use = implicit_service


def status() -> ConnectivityStatus:
    """The connectivity status from the default service (started on first use)."""
    return default_service().status()


async def wait_ready(timeout: float | None = None) -> bool:  # noqa: ASYNC109
    """Wait for the default service's first probe round (starting it if needed)."""
    service = default_service()
    if service._state == "new":
        service.start_nowait()
    return await service.wait_ready(timeout)


async def aclose_default() -> None:
    """Close the default service of the running loop, if any."""
    loop = asyncio.get_running_loop()
    with _default_lock:
        service = _defaults.pop(loop, None)
    if service is not None:
        await service.aclose()

