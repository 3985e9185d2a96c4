"""The probe service's rounds (:class:`RoundLoop`): every ``probe_interval`` (with jitter,
start to start), or at once on a wake-up; each round collects the targets, plans the probes
and sends them, spread out in steady state, alongside a NAT64 lookup when one is due.

Each target is probed from each usable local source: ICMP echo (when sockets allow) and a TCP
connect on the target's port, under a global rate limit and a concurrency bound. Targets are
the configured ones, the default gateways, the destinations the application used recently
(re-probed on their own port, at most every ``recent_probe_interval``) and, optionally, RIPE
Atlas anchors (see :mod:`.plan`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from apr_async.config import Config
from apr_async.core.addresses import IPAddress
from apr_async.probe.atlas_loop import rotate_anchors
from apr_async.probe.nat64 import Nat64Discovery
from apr_async.probe.plan import PlannedProbe, RecentDestinations, Target, plan_probes
from apr_async.probe.prober import Prober
from apr_async.probe.targets import collect_targets
from apr_async.resolve import interfaces
from apr_async.resolve.resolver import Resolver

__all__ = ["RoundLoop"]

log = logging.getLogger("apr_async.probe")


class RoundLoop:
    """When rounds run and what one probes; ``targets`` are the latest round's, ``anchors``
    the Atlas anchors to probe, ``wake`` starts the next round at once."""

    def __init__(self, config: Config, rng: random.Random, resolver: Resolver,
                 prober: Prober, recent: RecentDestinations) -> None:
        self.config = config
        self._rng = rng
        self._resolver = resolver
        self._prober = prober
        self._recent = recent
        self.targets: list[Target] = []
        self.anchors: list[IPAddress] = []
        self.wake = asyncio.Event()

    def start_atlas(self, loop: asyncio.AbstractEventLoop, clock: Callable[[], float]
                    ) -> asyncio.Task[None]:
        """The task that keeps ``anchors`` filled with RIPE Atlas anchors (``Config.atlas``)."""
        def publish(anchors: list[IPAddress]) -> None:
            self.anchors = anchors

        return loop.create_task(rotate_anchors(self.config, self._rng, clock, publish),
                                name="apr_async-atlas")

    async def run(self, one_round: Callable[[bool], Awaitable[None]]) -> None:
        """Call ``one_round(spread_out)`` for ever on the schedule."""
        loop = asyncio.get_running_loop()
        urgent = True  # the first round, and one after a wake-up, is not spread out
        while True:
            started = loop.time()
            try:
                await one_round(not urgent)
            except Exception:
                # a bug in one round must not silently end the service for good
                log.exception("apr_async probe round failed")
            jitter = self.config.probe_jitter
            interval = self.config.probe_interval * (1 + self._rng.uniform(-jitter, jitter))
            # start-to-start schedule: a slow round does not stretch the period
            delay = max(0.0, started + interval - loop.time())
            if not self.wake.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self.wake.wait()
            urgent = self.wake.is_set()
            self.wake.clear()

    async def probe(
        self,
        snapshot: interfaces.HostSnapshot,
        now: float,
        *,
        nat64: Nat64Discovery,
        discover_nat64: Callable[[], Coroutine[Any, Any, None]],
        send: Callable[[PlannedProbe, float], Awaitable[None]],
        spread_out: bool,
    ) -> None:
        """One round's probes on *snapshot*: each planned probe through ``send(probe,
        spread)``, and ``discover_nat64()`` alongside when *nat64* is due."""
        lookup: asyncio.Task[None] | None = None
        if nat64.due(snapshot, now):
            lookup = asyncio.create_task(discover_nat64(), name="apr_async-nat64")
        try:
            icmp = self._prober.mode is not None
            self.targets = await collect_targets(
                self.config, self._resolver, snapshot, now, icmp=icmp,
                recent=self._recent, anchors=self.anchors)
            plan = plan_probes(snapshot, self.targets, icmp=self._prober.mode is not None)
            if plan:
                # steady-state rounds spread their probes (no bursts on the wire); the first
                # round and one after a network change go as fast as the rate limit allows
                spread = 0.0
                if spread_out:
                    spread = min(self.config.probe_jitter * self.config.probe_interval,
                                 self.config.probe_interval / 2)
                outcomes = await asyncio.gather(*(send(p, spread) for p in plan),
                                                return_exceptions=True)
                for outcome in outcomes:
                    if isinstance(outcome, Exception):
                        log.error("apr_async probe failed", exc_info=outcome)
            if lookup is not None:
                await lookup
        finally:
            if lookup is not None and not lookup.done():
                lookup.cancel()
                await asyncio.wait({lookup})
