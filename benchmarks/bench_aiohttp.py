"""aiohttp with AprConnector vs the stock TCPConnector, in lab scenarios (needs root).

    python benchmarks/bench_aiohttp.py [--quick] [--runs N]

Each sample is one GET over a fresh TCP connection (``force_close``), by name through the lab
DNS (answers cached after a warm-up request, for every client alike), timed in the client
namespace. Clients:

* stock: ``TCPConnector(resolver=AsyncResolver(lab DNS))``, aiohttp's own Happy Eyeballs
  (aiohappyeyeballs, 250 ms) with the kernel's choice of source address;
* apr cold: a new ``AprConnector`` with empty latency/failure tables for every request;
* apr warm: one ``AprConnector()`` with no context of its own, so, as in an application, it
  ranks with the package's default ``ProbeService`` (started lazily by the module-level
  ``wait_ready()``) and feeds it every attempt. The service is configured for the lab only
  (``configure(Config(...))``: the name being measured as its only probe target, the lab DNS,
  no gateway probes, no NAT64 discovery, no network watcher); the built-in public targets are
  never used, and the benchmark process keeps that configuration with autostart off
  throughout. Requests are timed after its first probe round (ICMP and a TCP connect from every
  source to every address of the name), so both families are measured before the first
  request; ``probe_interval`` is an hour, so no later round runs while requests are timed.

Prints per cell the median, 90th percentile, maximum and mean time per request in
milliseconds, and the failures, and saves the table to ``results/bench_aiohttp.md``.
Percentiles are nearest-rank: each is a time some request really took. That matters for the
stock connector: its DNS cache rotates the address list between connections, so with a broken
family every other request starts with the good one and the times fall in two clusters (fast,
and one fallback delay later). An interpolated median would report a time between them that no
request had; the nearest-rank median and p90 show which cluster they fall in, and the mean the
cost averaged over both. A failed request ranks as slower than any success in the percentiles
(shown as "fail" where it lands), never left out, which would flatter its client; the mean is
over the successful requests.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from apr_async.aiohttp import AprConnector
from apr_async.config import Config
from apr_async.lab import Lab, LabNames, Scenario, lab_unavailable_reason
from apr_async.probe.default import aclose_default, configure, current_service, wait_ready
from apr_async.resolve.pairs import PairContext
from apr_async.resolve.resolver import Resolver

RESULTS = Path(__file__).resolve().parent / "results"
#: The name every request goes to: one A and one AAAA record, both the lab server's.
SERVED_NAME = LabNames().dual

SCENARIOS: dict[str, Scenario] = {
    "healthy": Scenario.healthy(),
    "IPv6 blackholed": Scenario.v6_blackholed(),
    "IPv6 50 ms slower": Scenario.v6_slower(0.05),
    "ULA source trap": Scenario.ula_source_trap(),
}
CLIENTS = ("stock", "apr cold", "apr warm")


def lab_config(target: str, nameservers: list[str]) -> Config:
    """The default service's configuration: lab target and DNS only, started explicitly."""
    return Config(
        targets=(target,),
        nameservers=tuple(nameservers),
        probe_interval=3600.0,  # one round: the timed requests are not disturbed by probes
        probe_jitter=0.0,
        probe_timeout=0.5,
        probe_rate=500.0,
        max_concurrent_probes=64,
        probe_gateways=False,
        nat64_discovery=False,
        netwatch="off",
        dns_timeout=1.0,
        # Nothing starts a default service by itself in this process; "apr warm" starts its
        # own with wait_ready(), which uses this same (lab-only) configuration.
        autostart=False,
    )


async def run_client(kind: str, url: str, nameservers: list[str], runs: int) -> dict[str, Any]:
    """In the client namespace: ``runs`` timed GETs (after one untimed warm-up)."""
    resolver = Resolver(nameservers)
    timeout = aiohttp.ClientTimeout(total=10)
    samples: list[float] = []
    failures = 0

    def connector() -> aiohttp.TCPConnector:
        if kind == "stock":
            return aiohttp.TCPConnector(
                resolver=aiohttp.AsyncResolver(nameservers=nameservers), force_close=True
            )
        if kind == "apr cold":
            return AprConnector(context=PairContext(resolver=resolver), force_close=True)
        return AprConnector(force_close=True)  # the running default service's context

    session: aiohttp.ClientSession | None = None
    try:
        if kind == "apr warm":
            # The module-level path: creates this loop's default service, starts it and
            # waits for its first probe round.
            if not await wait_ready(10):
                raise RuntimeError("the default probe service did not finish a round in 10 s")
            assert current_service() is not None  # what AprConnector() will rank with
        if kind != "apr cold":
            session = aiohttp.ClientSession(connector=connector(), timeout=timeout)
        for n in range(runs + 1):
            own = None
            if session is None:
                own = aiohttp.ClientSession(connector=connector(), timeout=timeout)
            sess = session or own
            assert sess is not None
            start = time.perf_counter()
            try:
                async with sess.get(url) as response:
                    await response.read()
                ok = response.status == 200
            except (aiohttp.ClientError, TimeoutError):
                ok = False
            elapsed = time.perf_counter() - start
            if own is not None:
                await own.close()
            if n == 0:
                continue  # warm-up: DNS answers cached, and the warm client's first lesson
            if ok:
                samples.append(elapsed)
            else:
                failures += 1
    finally:
        if session is not None:
            await session.close()
        if kind == "apr warm":
            await aclose_default()
        await resolver.close()
    return {"samples": samples, "failures": failures}


async def start_server(lab: Lab) -> tuple[web.AppRunner, int]:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = lab.socket("server", socket.AF_INET6)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind(("::", 0))
    await web.SockSite(runner, sock).start()
    return runner, sock.getsockname()[1]


async def measure(runs: int) -> list[tuple[str, str, dict[str, Any]]]:
    rows: list[tuple[str, str, dict[str, Any]]] = []
    async with Lab() as lab:
        runner, port = await start_server(lab)
        assert lab.names.dual == SERVED_NAME
        url = f"http://{SERVED_NAME}:{port}/"
        configure(lab_config(f"{SERVED_NAME}:{port}", lab.dns_servers))
        try:
            for name, scenario in SCENARIOS.items():
                await lab.set_scenario(scenario)
                for kind in CLIENTS:
                    result = await lab.run_in(
                        "client", run_client, kind, url, lab.dns_servers, runs
                    )
                    rows.append((name, kind, result))
                    print(f"  {name:<18} {kind:<9} done", file=sys.stderr, flush=True)
        finally:
            await runner.cleanup()
    return rows


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile: the smallest sample with at least ``q`` of them at or below."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _ms(values: list[float], q: float) -> str:
    if not values:
        return "-"
    value = percentile(values, q)
    return "fail" if math.isinf(value) else f"{value * 1000:.1f}"


def _mean(values: list[float]) -> str:
    return f"{statistics.fmean(values) * 1000:.1f}" if values else "-"


NOTES = (
    "- stock: aiohttp's TCPConnector with AsyncResolver (lab DNS): aiohappyeyeballs, 250 ms",
    "  delay, the kernel picks the source; its DNS cache rotates the addresses per connection.",
    "  With one family broken or slow, its requests alternate: half fast, half paying the",
    "  fallback (250 ms) or the slow path. With exactly half in each cluster the nearest-rank",
    "  p50 lands in the fast one: read its p90 and mean for the cost.",
    "- apr cold: a new AprConnector with empty latency/failure tables for every request: the",
    "  ranking is RFC 6724 plus the kernel's routes, nothing measured.",
    "- apr warm: AprConnector() ranking with the package's default ProbeService (lab-only",
    "  Config: the measured name as its one target, lab DNS, no gateway probes, no NAT64",
    "  discovery), timed after the service's first probe round (ICMP and TCP from every source",
    "  to every address), so it knows both families' RTT before the first request; it also",
    "  learns from the connector's own attempts. No further round runs while timing.",
    "  Here the name is a configured target. An application that does not configure it",
    "  relies on the re-probing of recently used destinations, which covers only the addresses",
    "  the connector attempted: with IPv6 50 ms slower (it answers well within the 250 ms",
    "  delay) IPv4 is never attempted nor probed, and requests stay on IPv6 (~104 ms; checked",
    "  separately, not a row of this table).",
    "- Each request is a GET over a fresh connection (force_close); one untimed warm-up request",
    "  per cell caches the DNS answers. Percentiles are nearest-rank (each a time some request",
    "  took); a failure ranks as slower than any success; the mean is over successes.",
)


def render(rows: list[tuple[str, str, dict[str, Any]]], runs: int, load: float) -> str:
    """The results as a Markdown table with its notes."""
    lines = [
        f"GET over a fresh connection, {runs} runs per cell, to {SERVED_NAME} (one A, one AAAA).",
        "",
        "| scenario           | client    | p50 ms | p90 ms | max ms | mean ms | failed |",
        "|--------------------|-----------|--------|--------|--------|---------|--------|",
    ]
    for name, kind, result in rows:
        samples = result["samples"]
        ranked = samples + [math.inf] * result["failures"]  # a failure is the slowest outcome
        lines.append(
            f"| {name:<18} | {kind:<9} | {_ms(ranked, 0.5):>6} | {_ms(ranked, 0.9):>6} | "
            f"{_ms(ranked, 1.0):>6} | {_mean(samples):>7} | {result['failures']:>6} |"
        )
    lines += ["", *NOTES, "", f"(load average {load:.1f} on {os.cpu_count()} CPUs while "
              "measuring: figures are noisy when it nears the CPU count)"]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="timed requests per cell")
    parser.add_argument("--quick", action="store_true", help="5 runs per cell")
    args = parser.parse_args()
    reason = lab_unavailable_reason()
    if reason is not None:
        print(f"skipped: network lab unavailable ({reason})")
        return 0
    runs = 5 if args.quick else args.runs
    if runs < 1:
        parser.error("--runs must be at least 1")
    rows = asyncio.run(measure(runs))
    load = os.getloadavg()[0]
    text = render(rows, runs, load)
    print("\n" + text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_aiohttp.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
