"""The background probe service, :class:`ProbeService`: keeps the ranking true to the network.

A service owns the latency table, the failure table and the resolver that ranking uses (its
:attr:`~ProbeService.context` is a :class:`~apr_async.resolve.pairs.PairContext`, installed as the
package default while the service runs). In the background it probes each target from each
usable local source in rounds (:mod:`.rounds`, :mod:`.targets`, :mod:`.prober`), records passive
samples of the application's own attempts (:mod:`.recording`, :mod:`.passive`), derives a
:class:`~apr_async.core.status.ConnectivityStatus` and a NAT64 prefix (:mod:`.observed`,
:mod:`.nat64`), notices network changes (netlink events or polling; it then drops the failure
table and the stale status, and probes again at once) and shares it all with the host's other
processes (:mod:`.host_share`).

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
import logging
import random
import time
from collections.abc import Callable
from typing import Literal

from apr_async.config import Config
from apr_async.core.failures import FailureTable
from apr_async.core.latency import LatencyTable
from apr_async.core.status import ConnectivityStatus
from apr_async.probe.cache_keeper import CacheKeeper
from apr_async.probe.host_share import HostShare
from apr_async.probe.measure import PathMeasurement, context_for, translators_of
from apr_async.probe.nat64 import Nat64Discovery
from apr_async.probe.netwatch import NetWatcher
from apr_async.probe.observed import StatusKeeper, measurements
from apr_async.probe.plan import PlannedProbe, RecentDestinations, Target
from apr_async.probe.prober import Prober, record_probe
from apr_async.probe.probes import IcmpMode
from apr_async.probe.progress import Progress
from apr_async.probe.recording import PassiveSamples
from apr_async.probe.registry import install, install_fallback_context, uninstall
from apr_async.probe.rounds import RoundLoop
from apr_async.resolve import interfaces, pairs
from apr_async.resolve.resolver import Resolver

__all__ = ["PathMeasurement", "ProbeService", "context_for", "install_fallback_context"]

# The service logged under this name before it had a module of its own; users filter on it.
log = logging.getLogger("apr_async.probe")


class ProbeService(PassiveSamples):
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
        self._observed = StatusKeeper(config, clock)
        self._tracker = self._observed.tracker
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
        self._round_loop = RoundLoop(config, self._rng, self.resolver, self._prober,
                                     self._recent)
        self._progress = Progress()
        self._previous_context: pairs.PairContext | None = None
        self._released = False
        self._cache = CacheKeeper(config, self.latency, clock)
        # host sharing: an explicit ``share`` (the default service's) beats the config's
        # None; only with the real monotonic clock, the time base the processes share
        wanted = share if config.share is None else config.share
        self._share_on = bool(wanted) and clock is time.monotonic
        self._share = HostShare(self._shared_refreshed)
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
            # a fresh read that also fills the ranking's cache: the first get_addr_pairs,
            # which usually started this service, then does not dump the interfaces again
            self._snapshot = interfaces.cached_view(max_age=0).snapshot
            self.context.observe_network(self._snapshot.fingerprint)
            self._prober.detect()
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
                self._atlas_task = self._round_loop.start_atlas(loop, self._clock)
            if self._install:
                install(self)
            if self._share_on:
                self._share.start(loop, self.config.effective_cache_path.parent,
                                  tables=(self.latency, self.failures), clock=self._clock,
                                  fingerprint=self._snapshot.fingerprint,
                                  on_outcome=self._on_shared_outcome, status_of=self.status)
            if self._share.following:
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
        self._share.close()
        if self.config.persist:
            self._cache.save_now()
        await self.resolver.close()
        self._progress.notify()

    # ------------------------------------------------------------------ public API

    def status(self) -> ConnectivityStatus:
        """The current connectivity status (derived from recent observations; in a follower
        of the host's shared service, the leader's, as it last published it)."""
        shared = self._share.leader_status
        if shared is not None:
            return shared
        if self._observed.dirty:
            self._derive_status()
        return self._observed.status

    async def wait_ready(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109
        """Wait until the first probe round has completed; False on timeout or when closed."""
        return await self._progress.wait_ready(timeout, self._closed)

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
        await self._progress.until(done, self._closed)

    def _closed(self) -> bool:
        return self._state == "closed"

    def probe_now(self) -> None:
        """Start the next probe round at once (e.g. after the application saw trouble)."""
        self._round_loop.wake.set()

    def targets(self) -> list[Target]:
        """The targets of the latest round."""
        return list(self._round_loop.targets)

    def measurements(self) -> list[PathMeasurement]:
        """The latest result and latency figures of every probed path, best first."""
        return measurements(self._tracker, self.latency, self._clock())

    # ------------------------------------------------------------------ the loop

    async def _run(self) -> None:
        try:
            await self._round_loop.run(self._round)
        finally:
            # also reached when the loop shuts down without aclose() (asyncio.run)
            await self._release()

    async def _round(self, spread_out: bool) -> None:
        self._refresh_snapshot()
        snapshot = self._snapshot
        assert snapshot is not None
        await self._round_loop.probe(snapshot, self._clock(), nat64=self._nat64,
                                     discover_nat64=self._discover_nat64, send=self._probe,
                                     spread_out=spread_out)
        self.rounds += 1
        self._share.publish()  # followers see a finished round at once
        self._derive_status()
        self._progress.ready.set()
        self._progress.notify()
        if self.config.persist:
            await self._cache.save_in_background()

    # ------------------------------------------------------------------ probing

    async def _probe(self, probe: PlannedProbe, spread: float) -> None:
        result = await self._prober.send(probe, spread)
        if result is not None and record_probe(self.latency, self.failures, self._tracker,
                                               probe, result, now=self._clock()):
            self._observed.dirty = True
            # no publication per probe: the round's end publishes them together, so
            # followers restore their tables once per round, not once per result

    # ------------------------------------------------------------------ status and network

    def _derive_status(self) -> None:
        if self._snapshot is not None:
            status = self._observed.derive(self._snapshot, self._nat64.prefix)
            self.context.translators_seen = translators_of(status)

    def _refresh_snapshot(self) -> bool:
        """Read the interfaces again; True when the network changed (or was first seen)."""
        try:
            snapshot = interfaces.read_snapshot()
        except OSError as exc:
            log.debug("cannot read interfaces: %s", exc)
            return False
        if self._snapshot is not None and snapshot.fingerprint == self._snapshot.fingerprint:
            self._snapshot = snapshot
            return False
        self._network_changed(snapshot)
        return True

    def _on_network_event(self) -> None:
        if self._state == "running" and self._refresh_snapshot():
            self._round_loop.wake.set()

    def _network_changed(self, snapshot: interfaces.HostSnapshot) -> None:
        first = self._snapshot is None
        self._snapshot = snapshot
        self.context.observe_network(snapshot.fingerprint)
        self._share.set_network(snapshot.fingerprint)
        if first:
            return
        self.network_changes += 1
        log.info("apr_async: network changed (addresses or gateways); probing again")
        # failures and observations describe the old network
        self.failures.clear()
        self._share.changed()
        self._tracker.forget()
        interfaces.invalidate_cache()
        self._nat64.recheck()
        self._derive_status()
        self._progress.notify()

    async def _discover_nat64(self) -> None:
        if await self._nat64.discover(self.resolver, within=self.config.dns_timeout * 2,
                                      now=self._clock()):
            self._observed.dirty = True

    # ------------------------------------------------------------------ host sharing

    @property
    def role(self) -> Literal["solo", "leader", "follower"]:
        """``leader``/``follower`` of the host's shared service, or ``solo`` (not sharing)."""
        return self._share.role

    def sync_shared(self) -> bool:
        """A follower applies the shared table if the leader published since (cheap when not:
        one 8-byte read); True when the tables changed."""
        return self._share.sync()

    def check_shared(self) -> None:
        """The module-level calls' check: a follower whose leader published applies the
        table soon, on the loop, never inside the calling ranking (one 8-byte read here)."""
        self._share.check()

    def _shared_refreshed(self) -> None:
        self._progress.ready.set()
        self._progress.notify()

    async def _follow(self) -> None:
        try:
            await self._share.follow(self.config.probe_interval)
        except BaseException:
            await self._release()
            raise
        await self._run()
