"""A round's probes: each planned probe sent under the rate limit and the concurrency bound
(:class:`Prober`), and its result into the tables (:func:`record_probe`)."""

from __future__ import annotations

import asyncio
import errno as errno_codes
import logging
import random

from apr_async.config import Config
from apr_async.core.failures import FailureTable
from apr_async.core.latency import LatencyTable
from apr_async.core.status import Observation, StatusTracker
from apr_async.probe.plan import Pacer, PlannedProbe, source_text
from apr_async.probe.probes import (
    IcmpMode,
    IcmpUnavailableError,
    ProbeResult,
    detect_icmp_mode,
    icmp_probe,
    tcp_probe,
)

__all__ = ["Prober", "record_probe"]

log = logging.getLogger("apr_async.probe")


class Prober:
    """Sends planned probes: paced, bounded, spread; ``mode`` is the ICMP socket kind in use
    (``None`` when ICMP is off), ``sent`` counts probes by method."""

    def __init__(self, config: Config, rng: random.Random) -> None:
        self.config = config
        self._rng = rng
        self.mode: IcmpMode | None = None
        self.sent = {"icmp": 0, "tcp": 0}
        self._pacer = Pacer(config.probe_rate, min(config.probe_rate, 10.0))
        self._limit = asyncio.Semaphore(config.max_concurrent_probes)

    def detect(self) -> None:
        """Find which ICMP sockets this process may open (``mode``), warning when none."""
        self.mode = detect_icmp_mode(self.config.icmp)
        if self.mode is None and self.config.icmp != "off":
            log.warning(
                "ICMP probes are off: neither raw sockets nor ping sockets are allowed "
                "here (see net.ipv4.ping_group_range); TCP probes carry on"
            )

    async def send(self, probe: PlannedProbe, spread: float) -> ProbeResult | None:
        """Send *probe* after a random delay up to *spread*; ``None`` when it was not sent."""
        loop = asyncio.get_running_loop()
        if spread > 0:
            await asyncio.sleep(self._rng.uniform(0, spread))
        async with self._limit:
            await self._pacer.wait(loop)
            source, target = source_text(probe.source), probe.target.text()
            wait = self.config.probe_timeout
            try:
                if probe.method == "icmp":
                    if self.mode is None:
                        return None
                    self.sent["icmp"] += 1
                    return await icmp_probe(
                        source, target, max_wait=wait, privileged=self.mode == "privileged"
                    )
                assert probe.target.port is not None
                self.sent["tcp"] += 1
                return await tcp_probe(source, target, probe.target.port, max_wait=wait)
            except IcmpUnavailableError as exc:
                if self.mode is not None:
                    log.warning("ICMP probes are off (%s); TCP probes carry on", exc.strerror)
                    self.mode = None
                return None
            except (ValueError, OSError) as exc:
                log.debug("probe %s -> %s skipped: %s", source, target, exc)
                return None


def record_probe(
    latency: LatencyTable,
    failures: FailureTable,
    tracker: StatusTracker,
    probe: PlannedProbe,
    result: ProbeResult,
    *,
    now: float,
) -> bool:
    """*result* into the tables and the tracker; False when it says nothing about the path."""
    if result.error in (errno_codes.EADDRNOTAVAIL, errno_codes.EINVAL) and not result.ok:
        return False  # the source went away mid-round: that says nothing about the path
    src, dst = probe.source.address, probe.target.ip
    latency.record(src, dst, result.rtt if result.ok else None, now)
    port = probe.target.port
    if result.method == "tcp" and port is not None:
        if result.ok:
            failures.record_success(src, dst, port)
        else:
            name = errno_codes.errorcode.get(result.error or 0, "failed")
            failures.record_failure(src, dst, port, now, error=name)
    tracker.observe(Observation(src, dst, result.ok, now, probe.offlink, result.method))
    return True
