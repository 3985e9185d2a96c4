"""httpx with apr_async's AprTransport vs httpx's default transport (needs root for the lab).

    python benchmarks/bench_httpx.py [--requests N]

1. Loopback, a hypercorn HTTP/1.1 server on 127.0.0.1: requests per second, sequential, with a
   new connection per request (``max_keepalive_connections=0``) and with keep-alive.
2. Lab, by name (``dual.lab.test``: one A, one AAAA), a new connection per request: median time
   to first byte (request sent -> response headers) per pathology. The stock client runs in a
   subprocess in the client namespace (``ip netns exec`` shows it the lab's hosts file from
   /etc/netns, so nothing is resolved outside the lab); apr_async runs with a warm context (one
   request before the timed ones), resolving through the lab DNS.
Ratios are stock / apr_async from the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from apr_async import PairContext
from apr_async.httpx import AprTransport
from apr_async.lab import Lab, PathMode, Scenario, lab_unavailable_reason
from apr_async.resolve.resolver import Resolver
from http_servers import hypercorn_server

SCENARIOS = {
    "healthy": Scenario.healthy(),
    "v6 blackholed": Scenario.v6_blackholed(),
    "v6 rejected (RST)": Scenario.v6_rejected(PathMode.REJECT_RST),
    "v6 slower 50 ms": Scenario.v6_slower(0.05),
}


def _limits(keepalive: bool) -> httpx.Limits:
    return httpx.Limits(max_keepalive_connections=10 if keepalive else 0)


async def _rps(client: httpx.AsyncClient, url: str, n: int) -> float:
    await client.get(url)  # warm-up
    start = time.perf_counter()
    for _ in range(n):
        (await client.get(url)).raise_for_status()
    return n / (time.perf_counter() - start)


async def loopback(n: int) -> list[tuple[str, float, float]]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    rows = []
    async with hypercorn_server(sock) as port:
        url = f"http://127.0.0.1:{port}/"
        for keepalive in (False, True):
            stock = httpx.AsyncClient(limits=_limits(keepalive), trust_env=False)
            apr = httpx.AsyncClient(transport=AprTransport(
                context=PairContext(), limits=_limits(keepalive)))
            async with stock, apr:
                rows.append(("keep-alive" if keepalive else "new connection",
                             await _rps(stock, url, n), await _rps(apr, url, n)))
    return rows


async def _ttfb(client: httpx.AsyncClient, url: str, n: int) -> list[float]:
    times = []
    for _ in range(n):
        marks: dict[str, float] = {}

        async def trace(event: str, info: Any, marks: dict[str, float] = marks) -> None:
            marks[event] = time.perf_counter()

        start = time.perf_counter()
        try:
            await client.get(url, extensions={"trace": trace})
        except httpx.HTTPError:
            times.append(float("inf"))
            continue
        times.append(marks.get("http11.receive_response_headers.complete", start) - start)
    return times


async def _apr_ttfb(url: str, dns: list[str], n: int) -> list[float]:
    resolver = Resolver(dns, hosts_path=None, timeout=2.0)
    transport = AprTransport(context=PairContext(resolver=resolver), limits=_limits(False))
    try:
        async with httpx.AsyncClient(transport=transport, timeout=10.0) as client:
            await client.get(url)  # warm: the failure/latency tables learn the path
            return await _ttfb(client, url, n)
    finally:
        await resolver.close()


async def _stock_worker(url: str, n: int) -> None:
    async with httpx.AsyncClient(limits=_limits(False), timeout=10.0) as client:
        await client.get(url)
        print(json.dumps(await _ttfb(client, url, n)))


async def lab_rows(n: int) -> list[tuple[str, float, float]]:
    rows = []
    async with Lab() as lab:
        sock = lab.socket("server", socket.AF_INET6)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::", 0))
        etc = Path("/etc/netns") / lab.netns("client")
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "hosts").write_text(
            f"{lab.server.v6[0]} {lab.names.dual}\n{lab.server.v4[0]} {lab.names.dual}\n")
        (etc / "resolv.conf").write_text(f"nameserver {lab.dns_v4}\n")
        try:
            async with hypercorn_server(sock) as port:
                url = f"http://{lab.names.dual}:{port}/"
                for name, scenario in SCENARIOS.items():
                    await lab.set_scenario(scenario)
                    apr = await lab.run_in("client", _apr_ttfb, url, lab.dns_servers, n)
                    out = await lab.exec("client", sys.executable, __file__, "--stock-worker",
                                         url, str(n), max_time=120, check=True)
                    stock = json.loads(out.stdout)
                    rows.append((name, statistics.median(stock), statistics.median(apr)))
        finally:
            shutil.rmtree(etc, ignore_errors=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--stock-worker", nargs=2, metavar=("URL", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stock_worker:
        asyncio.run(_stock_worker(args.stock_worker[0], int(args.stock_worker[1])))
        return 0
    print("| loopback, sequential | stock req/s | AprTransport req/s | apr / stock |")
    print("|---|---|---|---|")
    for mode, stock, apr in asyncio.run(loopback(args.requests)):
        print(f"| {mode} | {stock:.0f} | {apr:.0f} | {apr / stock:.2f}x |")
    reason = lab_unavailable_reason()
    if reason is not None:
        print(f"lab skipped: {reason}")
        return 0
    n = max(5, args.requests // 10)
    print(f"\n| lab, new connection per request (median of {n}) | stock TTFB ms "
          "| AprTransport TTFB ms | stock / apr |")
    print("|---|---|---|---|")
    for name, stock, apr in asyncio.run(lab_rows(n)):
        print(f"| {name} | {stock * 1e3:.1f} | {apr * 1e3:.1f} | {stock / apr:.1f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
