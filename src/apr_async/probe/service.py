"""The background probe service, :class:`ProbeService`: keeps the ranking true to the network.

A service owns the latency table, the failure table and the resolver that ranking uses (its
:attr:`~ProbeService.context` is a :class:`~apr_async.resolve.pairs.PairContext`, installed as the
package default while the service runs). In the background it:

* probes, every ``probe_interval`` (with jitter), each target from each usable local source:
  ICMP echo (when sockets allow) and a TCP connect on the target's port, under a global rate
  limit and a concurrency bound. Targets are the configured ones, the default gateways, the
  destinations the application used recently (re-probed on their own port, at most every
  ``recent_probe_interval``) and, optionally, RIPE Atlas anchors (see :mod:`.probe_plan`);
* records passive samples: :meth:`~ProbeService.record_attempt` takes every connection attempt
  made by ``open_connection`` and friends, and :meth:`~ProbeService.record_untried` the best
  pair of each family a won race never tried, re-probed like a used destination so that a
  family that always loses within the attempt delay gets measured all the same;
* derives a :class:`~apr_async.core.status.ConnectivityStatus` after each round and discovers a
  NAT64 prefix (RFC 7050);
* notices network changes (netlink events or polling) and then drops the failure table and the
  stale status, and probes again at once.

Nothing blocks the start: :meth:`~ProbeService.start` reads the interfaces (one netlink dump),
checks which ICMP sockets are allowed and schedules the first round; ranking answers at once
from RFC 6724 and the kernel's routes, and measurements refine it as they arrive. ``await
service.wait_ready(timeout)`` waits for the first round. Every probe is an asyncio task on the
caller's loop; the only thread is the periodic warm-start cache write (it fsyncs) when
``Config.persist`` is on.

The package's lazily started default service lives in :mod:`apr_async.probe.default`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import Literal

from apr_async.config import Config
from apr_async.core.addresses import IPAddress, parse_address
from apr_async.core.failures import FailureTable
from apr_async.core.latency import LatencyTable
from apr_async.core.outcomes import record_outcome
from apr_async.core.status import ConnectivityStatus, Observation, StatusTracker
from apr_async.probe import table_codec as codec
from apr_async.probe.atlas_loop import rotate_anchors
from apr_async.probe.cache_keeper import CacheKeeper
from apr_async.probe.measure import PathMeasurement, context_for, ip_of, translators_of
from apr_async.probe.nat64 import Nat64Discovery
from apr_async.probe.netwatch import NetWatcher
from apr_async.probe.observed import derive_status, measurements
from apr_async.probe.plan import PlannedProbe, RecentDestinations, Target, is_offlink, plan_probes
from apr_async.probe.prober import Prober, record_probe
from apr_async.probe.probes import IcmpMode, detect_icmp_mode
from apr_async.probe.registry import install, install_fallback_context, uninstall
from apr_async.probe.shared import ShareUnavailable
from apr_async.probe.sharing import POLL, Sharing
from apr_async.probe.targets import collect_targets
from apr_async.resolve import interfaces, pairs
from apr_async.resolve.resolver import Resolver

__all__ = ["PathMeasurement", "ProbeService", "context_for", "install_fallback_context"]

# The service logged under this name before it had a module of its own; users filter on it.
log = logging.getLogger("apr_async.probe")

#: Untried destinations of one family kept from one :meth:`ProbeService.record_untried` call.
_UNTRIED_PER_FAMILY = 2


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
        share: bool | None = None,
    ) -> None:
        if config is None:
            config = Config.from_env()
        if not isinstance(config, Config):
            raise TypeError(f"config must be an apr_async.Config, not {type(config).__name__}")
        self.config = config
        self._install = bool(install)
        self._clock = clock
        self._rng = rng or random.Random()
        #: The ranking context backed by this service's tables (pass it as ``context=``).
        self.context = context_for(config, clock=clock)
        self.latency: LatencyTable = self.context.latency
        self.failures: FailureTable = self.context.failures
        self.resolver: Resolver = self.context.get_resolver()
        self._tracker = StatusTracker(max_entries=config.table_size)
        self._state: Literal["new", "running", "closed"] = "new"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._atlas_task: asyncio.Task[None] | None = None
        self._watcher: NetWatcher | None = None
        self._snapshot: interfaces.HostSnapshot | None = None
        self._prober = Prober(config, self._rng)
        self._nat64 = Nat64Discovery(config.nat64_discovery)
        self._recent = RecentDestinations(
            config.recent_destinations,
            ttl=config.recent_ttl,
            interval=config.recent_probe_interval,
        )
        self._targets: list[Target] = []
        self._anchors: list[IPAddress] = []
        self._status_dirty = True
        self._status = ConnectivityStatus()
        self._ready = asyncio.Event()
        self._tick = asyncio.Event()
        self._wake = asyncio.Event()
        self._previous_context: pairs.PairContext | None = None
        self._released = False
        self._cache = CacheKeeper(config, self.latency, clock)
        # host sharing: an explicit ``share`` (the default service's) beats the config's
        # None; only with the real monotonic clock, the time base the processes share
        wanted = share if config.share is None else config.share
        self._share_on = bool(wanted) and clock is time.monotonic
        self._sharing: Sharing | None = None
        #: Completed probe rounds.
        self.rounds = 0
        #: Network changes noticed (addresses, gateways).
        self.network_changes = 0
        #: Probes sent, by method (for diagnostics and the benchmark).
        self.probes_sent = self._prober.sent

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
        return self._prober.mode

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
            self._prober.mode = detect_icmp_mode(self.config.icmp)
            if self._prober.mode is None and self.config.icmp != "off":
                log.warning(
                    "ICMP probes are off: neither raw sockets nor ping sockets are allowed "
                    "here (see net.ipv4.ping_group_range); TCP probes carry on"
                )
            if self.config.persist:
                self._cache.load()
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
                install(self)
            if self._share_on:
                self._start_sharing(loop)
            if self._sharing is not None and not self._sharing.leader:
                self._task = loop.create_task(self._follow(), name="apr_async-probe-follower")
            else:
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
        uninstall(self)

    async def _release(self) -> None:
        if self._released:
            return
        self._released = True
        self._state = "closed"
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            await watcher.aclose()
        self._release_sync()
        if self._sharing is not None:
            self._sharing.close(self._loop)
        if self.config.persist:
            self._cache.save_now()
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
        return measurements(self._tracker, self.latency, self._clock())

    def record_attempt(
        self, pair: object, port: int, ok: bool, rtt: float | None, errno: int | None
    ) -> None:
        """Passive sample: one connection attempt's outcome (see ``connect.AttemptRecorder``).

        A refusal (``ok`` false with an ``rtt``) proves the path; a silent failure counts as
        a loss. The destination joins the recently used ones, re-probed on ``port``.
        """
        src_info = ip_of(getattr(pair, "source", None))
        dst_info = ip_of(getattr(pair, "destination", None))
        if src_info is None or dst_info is None:
            return
        src, _ = src_info
        dst, scope = dst_info
        if self._record_passive(src, dst, scope, port, ok=ok, rtt=rtt, errno=errno):
            sharing = self._sharing
            if sharing is not None and not sharing.leader:
                sharing.report(0, src, dst, port, ok=ok, rtt=rtt, errno=errno)

    def _record_passive(self, src: IPAddress, dst: IPAddress, scope: int | None, port: int, *,
                        ok: bool, rtt: float | None, errno: int | None) -> bool:
        now = self._clock()
        if not record_outcome(
            self.latency, self.failures, src, dst, port, ok=ok, rtt=rtt, errno=errno, now=now
        ):
            return False  # a sample that cannot be right is dropped; the connector must not fail
        self._tracker.observe(
            Observation(src, dst, ok or rtt is not None, now, is_offlink(dst, self._snapshot),
                        "passive")
        )
        self._recent.note(dst, scope, port, now)
        self._status_dirty = True
        self._shared_changed()
        self._notify_progress()
        return True

    def record_untried(self, pairs: Sequence[object], port: int) -> None:
        """Pairs a won connection race never tried (see ``connect_types.UntriedRecorder``):
        their destinations join the recently used ones, due for a probe on ``port`` in the
        next round and then rate-limited like any other. No sample: nothing was sent.

        The connector gives the best untried pair of each family other than the winner's;
        without it a family that always loses within the attempt delay would never be
        measured, so the ranking could never learn that it is faster. At most
        ``_UNTRIED_PER_FAMILY`` per family of each call are kept, whoever the caller is.
        """
        now = self._clock()
        taken: dict[int, int] = {}
        for pair in pairs:
            dst_info = ip_of(getattr(pair, "destination", None))
            if dst_info is None:
                continue
            dst, scope = dst_info
            count = taken.get(dst.version, 0)
            if count >= _UNTRIED_PER_FAMILY:
                continue
            taken[dst.version] = count + 1
            self._recent.note(dst, scope, port, now, measured=False)
            sharing = self._sharing
            if sharing is not None and not sharing.leader:
                unspecified = parse_address("::" if dst.version == 6 else "0.0.0.0")[0]
                sharing.report(1, unspecified, dst, port, ok=False, rtt=None, errno=None)

    def note_destination(self, destination: IPAddress, port: int, *, ifindex: int | None = None,
                         now: float | None = None) -> None:
        """Add a destination the application uses to the re-probed set (no sample)."""
        self._recent.note(destination, ifindex, port, self._clock() if now is None else now)

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
        if self._nat64.due(snapshot, now):
            nat64 = asyncio.create_task(self._discover_nat64(), name="apr_async-nat64")
        try:
            targets = await collect_targets(
                self.config, self.resolver, snapshot, now, icmp=self._prober.mode is not None,
                recent=self._recent, anchors=self._anchors)
            self._targets = targets
            plan = plan_probes(snapshot, targets, icmp=self._prober.mode is not None)
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
        if self._sharing is not None and self._sharing.leader:
            self._sharing.publish()  # followers see a finished round at once
        self._derive_status()
        self._ready.set()
        self._notify_progress()
        if self.config.persist:
            await self._cache.save_in_background()

    def _notify_progress(self) -> None:
        # wake every waiter once; they re-check their condition and wait on the next event
        tick, self._tick = self._tick, asyncio.Event()
        tick.set()

    # ------------------------------------------------------------------ probing

    async def _probe(self, probe: PlannedProbe, spread: float) -> None:
        result = await self._prober.send(probe, spread)
        if result is not None and record_probe(self.latency, self.failures, self._tracker,
                                               probe, result, now=self._clock()):
            self._status_dirty = True
            # no publication per probe: the round's end publishes them together, so
            # followers restore their tables once per round, not once per result

    # ------------------------------------------------------------------ status and network

    def _derive_status(self) -> None:
        snapshot = self._snapshot
        if snapshot is None:
            return
        before = self._status
        status = derive_status(self._tracker, snapshot, self.config, self._clock(),
                               self._nat64.prefix)
        self._status = status
        self._status_dirty = False
        self.context.translators_seen = translators_of(status)
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
        if self._sharing is not None:
            self._sharing.set_network(snapshot.fingerprint)
        if first:
            return
        self.network_changes += 1
        log.info("apr_async: network changed (addresses or gateways); probing again")
        # failures and observations describe the old network
        self.failures.clear()
        self._shared_changed()
        self._tracker.forget()
        interfaces.invalidate_cache()
        self._nat64.recheck()
        self._derive_status()
        self._notify_progress()

    async def _discover_nat64(self) -> None:
        if await self._nat64.discover(self.resolver, within=self.config.dns_timeout * 2,
                                      now=self._clock()):
            self._status_dirty = True

    # ------------------------------------------------------------------ host sharing

    @property
    def role(self) -> Literal["solo", "leader", "follower"]:
        """``leader``/``follower`` of the host's shared service, or ``solo`` (not sharing)."""
        if self._sharing is None:
            return "solo"
        return "leader" if self._sharing.leader else "follower"

    def sync_shared(self) -> bool:
        """A follower applies the shared table if the leader published since (cheap when not:
        one 8-byte read); True when the tables changed. Module-level calls do this."""
        sharing = self._sharing
        if sharing is None or sharing.leader or not sharing.refresh():
            return False
        self._ready.set()
        self._notify_progress()
        return True

    def _start_sharing(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self._snapshot is not None
        try:
            sharing = Sharing(self.config.effective_cache_path.parent, self.latency,
                              self.failures, self._clock)
            sharing.set_network(self._snapshot.fingerprint)
            sharing.on_outcome = self._on_shared_outcome
            self._sharing = sharing
            if not sharing.try_lead(loop):
                self.sync_shared()  # warm from the first ranking on
        except ShareUnavailable as exc:
            self._share_failed(exc)

    def _share_failed(self, exc: OSError) -> None:
        log.warning("apr_async: not sharing probes with other processes (%s); probing "
                    "on our own", exc)
        if self._sharing is not None:
            self._sharing.close(self._loop)
        self._sharing = None

    def _shared_changed(self) -> None:
        if self._sharing is not None and self._loop is not None:
            self._sharing.mark_dirty(self._loop)

    def _on_shared_outcome(self, outcome: codec.Outcome) -> None:
        if outcome.kind == 1:
            self._recent.note(outcome.destination, None, outcome.port, self._clock(),
                              measured=False)
            return
        with contextlib.suppress(ValueError, TypeError):
            self._record_passive(outcome.source, outcome.destination, None, outcome.port,
                                 ok=outcome.ok, rtt=outcome.rtt, errno=outcome.errno)

    async def _follow(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.config.probe_interval
        next_try = loop.time() + interval / 2
        try:
            while self._sharing is not None:
                await asyncio.sleep(interval * POLL)
                self.sync_shared()
                if loop.time() < next_try:
                    continue
                # two attempts per interval: a takeover within one interval of the exit
                next_try = loop.time() + interval / 2
                try:
                    if self._sharing.try_lead(loop):
                        log.info("apr_async: this process now probes for the host")
                        break
                except ShareUnavailable as exc:
                    self._share_failed(exc)
        except BaseException:
            await self._release()
            raise
        await self._run()

    # ------------------------------------------------------------------ atlas

    def _start_atlas(self, loop: asyncio.AbstractEventLoop) -> None:
        def publish(anchors: list[IPAddress]) -> None:
            self._anchors = anchors

        self._atlas_task = loop.create_task(
            rotate_anchors(self.config, self._rng, self._clock, publish), name="apr_async-atlas")
