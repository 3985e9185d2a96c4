"""aiohttp with AprConnector vs the stock TCPConnector, in lab scenarios (needs root).

    python benchmarks/bench_aiohttp.py [--quick] [--runs N]

Each sample is one GET over a fresh TCP connection (``force_close``), by name through the lab
DNS (answers cached after a warm-up request, for every client alike), timed in the client
namespace. Clients:

* stock: ``TCPConnector(resolver=AsyncResolver(lab DNS))``, aiohttp's own Happy Eyeballs
  (aiohappyeyeballs, 250 ms) with the kernel's choice of source address;
* apr cold: a new ``AprConnector`` with empty latency/failure tables for every request;
* apr warm: one ``AprConnector`` whose tables learned from the previous requests.

Prints per cell the median, 90th percentile, maximum and mean time per request in
milliseconds, and the failures. Percentiles are nearest-rank: each is a time some request
really took. That matters for the stock connector: its DNS cache rotates the address list
between connections, so with a broken family every other request starts with the good one and
the times fall in two clusters (fast, and one fallback delay later). An interpolated median
would report a time between them that no request had; the nearest-rank median and p90 show
which cluster they fall in, and the mean the cost averaged over both. A failed request ranks
as slower than any success in the percentiles (shown as "fail" where it lands), never left
out, which would flatter its client; the mean is over the successful requests.
Without the probe service, "apr warm" learns only from its own attempts (the winner's RTT and
the losers' failures); a family that was never tried stays unmeasured.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import socket
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web

from apr_async.aiohttp import AprConnector
from apr_async.lab import Lab, Scenario, lab_unavailable_reason
from apr_async.pairs import PairContext
from apr_async.resolver import Resolver

SCENARIOS: dict[str, Scenario] = {
    "healthy": Scenario.healthy(),
    "IPv6 blackholed": Scenario.v6_blackholed(),
    "IPv6 50 ms slower": Scenario.v6_slower(0.05),
    "ULA source trap": Scenario.ula_source_trap(),
}
CLIENTS = ("stock", "apr cold", "apr warm")


async def run_client(kind: str, url: str, nameservers: list[str], runs: int) -> dict[str, Any]:
    """In the client namespace: ``runs`` timed GETs (after one untimed warm-up)."""
    resolver = Resolver(nameservers)
    shared = PairContext(resolver=resolver)
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
        return AprConnector(context=shared, force_close=True)

    reuse = kind != "apr cold"
    session = aiohttp.ClientSession(connector=connector(), timeout=timeout) if reuse else None
    try:
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
        url = f"http://{lab.names.dual}:{port}/"
        try:
            for name, scenario in SCENARIOS.items():
                await lab.set_scenario(scenario)
                for kind in CLIENTS:
                    fn: Callable[..., Awaitable[dict[str, Any]]] = run_client
                    result = await lab.run_in("client", fn, kind, url, lab.dns_servers, runs)
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
    rows = asyncio.run(measure(runs))
    header = (
        f"{'scenario':<18}  {'client':<9}  {'median ms':>9}  {'p90 ms':>8}  {'max ms':>8}"
        f"  {'mean ms':>8}  {'failed':>6}"
    )
    print(f"\nGET over a fresh connection, {runs} runs per cell (nearest-rank percentiles)\n")
    print(header)
    print("-" * len(header))
    for name, kind, result in rows:
        samples = result["samples"]
        ranked = samples + [math.inf] * result["failures"]  # a failure is the slowest outcome
        print(
            f"{name:<18}  {kind:<9}  {_ms(ranked, 0.5):>9}  {_ms(ranked, 0.9):>8}  "
            f"{_ms(ranked, 1.0):>8}  {_mean(samples):>8}  {result['failures']:>6}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
