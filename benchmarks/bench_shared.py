"""One prober per host (issue 12): packets, hot-path cost and first connections (needs root).

    python benchmarks/bench_shared.py [--window 3] [--interval 0.5] [--counts 1,8,32]
        [--sizes 200,2000] [--only packets|latency|first]

Everything runs in a lab (network namespaces): worker processes start inside the client
namespace (``ip netns exec``), probe only the lab server and resolve only through the lab DNS.

1. Probe packets per probe interval sent by 1, 8 and 32 processes sharing a cache directory
   (an nftables counter on the client's output towards the server), once every worker is
   running, as a ratio to one process.
2. ``apr_async.get_addr_pairs`` per call (p50, p99, max) through the default service in the
   leader and in a follower while the leader publishes every 20 ms a table of 200 or 2000
   rows; the follower applying each new table inside the call (as before) or deferred.
3. A fresh process's first ``open_connection`` to a dual-stack name with IPv6 blackholed:
   cold host (nobody measured anything), warm host (a leader has been probing), and asyncio's
   own Happy Eyeballs (``happy_eyeballs_delay=0.25``, its getaddrinfo answered from the same
   lab DNS server).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SCRIPT = os.path.abspath(__file__)


def child_config(cache: str, targets: str, interval: str, dns: str, **extra: Any) -> Any:
    from apr_async.config import Config

    return Config(targets=tuple(targets.split(",")), probe_gateways=False,
                  nat64_discovery=False, probe_interval=float(interval), probe_timeout=0.3,
                  netwatch="off", nameservers=tuple(dns.split(",")), dns_timeout=1.0,
                  cache_path=Path(cache) / "apr_async" / "latency.json", **extra)


async def child(*argv: str) -> dict[str, Any]:
    """One worker process (inside the lab client): see the module docstring."""
    mode, cache, targets, interval, dns, name, port, extra = argv
    import apr_async
    from apr_async.probe import default

    if mode == "asyncio":
        from apr_async.resolve.resolver import Resolver

        loop = asyncio.get_running_loop()
        resolver = Resolver(dns.split(","), timeout=1.0)

        async def getaddrinfo(host: str, p: Any, *args: Any, **kwargs: Any) -> list[Any]:
            import socket

            found = await resolver.resolve(host)
            return [(socket.AF_INET6 if ip.version == 6 else socket.AF_INET,
                     socket.SOCK_STREAM, 6, "",
                     (str(ip), int(p), 0, 0) if ip.version == 6 else (str(ip), int(p)))
                    for ip, _zone in found]

        loop.getaddrinfo = getaddrinfo  # type: ignore[method-assign, assignment]
        started = time.perf_counter()
        _r, writer = await asyncio.open_connection(name, int(port), happy_eyeballs_delay=0.25)
        ms = (time.perf_counter() - started) * 1000
        writer.close()
        await writer.wait_closed()
        await resolver.close()
        return {"ms": ms}
    default.configure(child_config(cache, targets, interval, dns, autostart=True, share=True))
    try:
        if mode == "connect":
            started = time.perf_counter()
            _r, writer = await apr_async.open_connection(name, int(port))
            ms = (time.perf_counter() - started) * 1000
            writer.close()
            await writer.wait_closed()
            return {"ms": ms}
        await apr_async.get_addr_pairs(name, int(port))  # starts the service, fills the cache
        svc = default.current_service()
        assert svc is not None
        if svc.role != "follower":
            await svc.wait_ready(10)
        print(json.dumps({"ready": svc.role}), flush=True)
        if mode == "latency":
            return await hot_path(svc, name, int(port), extra)
        await asyncio.sleep(max(0.0, float(extra) - time.monotonic()))
        return {"role": svc.role}
    finally:
        await default.aclose_default()


async def hot_path(svc: Any, name: str, port: int, extra: str) -> dict[str, Any]:
    """Per-call ``get_addr_pairs`` times in a leader or a follower while the leader is busy.

    The leader holds ``rows`` latency entries (synthetic table rows: no packet is sent for
    them) and changes one every 5 ms, so it publishes every ``PUBLISH_DELAY`` (20 ms), the
    worst case for followers. ``how`` is ``deferred`` (the library as it is) or ``inline``
    (the follower applies a new table inside the call, as it did before: ``sync_shared()``
    first, in the timed region).
    """
    import apr_async
    from apr_async.core.addresses import parse_address

    start, rows, how = extra.split(":")
    leader = svc.role == "leader"
    table = [(parse_address(f"10.200.{i // 250}.{i % 250 + 1}")[0],
              parse_address(f"198.18.{i // 250}.{i % 250 + 1}")[0]) for i in range(int(rows))]
    if leader:
        for src, dst in table:
            svc.latency.record(src, dst, 0.001, time.monotonic())
        svc._share.changed()

    async def churn() -> None:
        i = 0
        while True:
            src, dst = table[i % len(table)]
            svc.latency.record(src, dst, 0.001 + (i % 7) * 1e-4, time.monotonic())
            svc._share.changed()
            i += 1
            await asyncio.sleep(0.005)

    # leader and follower measure at the same time, so they share the CPU alike
    await asyncio.sleep(max(0.0, float(start) - time.monotonic()))
    task = asyncio.create_task(churn()) if leader and table else None
    times = []
    began = time.perf_counter()
    for _ in range(3000):
        started = time.perf_counter()
        if how == "inline" and not leader:
            svc.sync_shared()
        await apr_async.get_addr_pairs(name, port)
        times.append((time.perf_counter() - started) * 1e6)
        await asyncio.sleep(0.001)  # spread the calls over ~4 s of publications
    elapsed = time.perf_counter() - began
    if task is not None:
        await asyncio.sleep(2.0)  # go on publishing until the follower is done too
        task.cancel()
    times.sort()
    sharing = svc._share.sharing
    return {"role": "leader" if leader else "follower", "p50": times[len(times) // 2],
            "p99": times[int(len(times) * 0.99)], "max": times[-1],
            "applied": sharing.applied if sharing is not None else 0,
            "apply_ms": sharing.apply_seconds * 1000 if sharing is not None else 0.0,
            "wall": elapsed,
            "published": sharing.published if sharing is not None else 0}


class Bench:
    """Spawns workers in the lab client and reads the client's packet counter."""

    def __init__(self, lab: Any, echo: Any, interval: float) -> None:
        self.lab, self.echo, self.interval = lab, echo, interval
        self.targets = f"{lab.server.v4[0]}:{echo.port},[{lab.server.v6[0]}]:{echo.port}"
        self.counter = (
            "table inet bench {\n chain out {\n  type filter hook output priority 0;\n"
            f"  ip daddr {lab.server.v4[0]} counter\n  ip6 daddr {lab.server.v6[0]} counter\n"
            " }\n}\n")

    async def spawn(self, mode: str, cache: Path, extra: str = "0") -> Any:
        return await self.lab.popen(
            "client", sys.executable, SCRIPT, "--child", mode, str(cache), self.targets,
            str(self.interval), ",".join(self.lab.dns_servers), self.lab.names.dual,
            str(self.echo.port), extra, stdout=subprocess.PIPE)

    async def leader(self, cache: Path) -> Any:
        proc = await self.spawn("probe", cache, str(time.monotonic() + 600))
        await asyncio.wait_for(proc.stdout.readline(), 120)
        return proc

    @staticmethod
    async def result(proc: Any) -> dict[str, Any]:
        out, _ = await asyncio.wait_for(proc.communicate(), 120)
        return json.loads(out.decode().splitlines()[-1])  # type: ignore[no-any-return]

    async def nft(self, *argv: str, stdin: str | None = None) -> str:
        return str((await self.lab.exec("client", "nft", *argv, input=stdin, check=True)).stdout)

    async def packets(self, count: int, window: float) -> int:
        with tempfile.TemporaryDirectory() as tmp:
            procs = [await self.leader(Path(tmp)) for _ in range(count)]
            await self.nft("-f", "-", stdin=self.counter)  # counted once all are running
            await asyncio.sleep(window)
            data = json.loads(await self.nft("-j", "list", "table", "inet", "bench"))
            await self.nft("delete", "table", "inet", "bench")
            for p in procs:
                p.kill()
                await p.wait()
        return sum(int(e["counter"]["packets"]) for item in data["nftables"]
                   for e in item.get("rule", {}).get("expr", []) if "counter" in e)


async def packets_table(bench: Bench, counts: list[int], window: float) -> None:
    print(f"## Probe packets per interval ({bench.interval} s), window {window} s\n")
    print("| processes | packets / interval | ratio to 1 |\n|---|---|---|")
    base = None
    for count in counts:
        per = await bench.packets(count, window) / (window / bench.interval)
        base = base or per
        print(f"| {count} | {per:.1f} | {per / base:.2f}x |")


async def latency_table(bench: Bench, sizes: list[int]) -> None:
    print("\n## get_addr_pairs per call through the default service, leader publishing every "
          "20 ms (3000 calls each)\n")
    print("| table rows | follower applies | process | p50 us | p99 us | max us | "
          "p50 / p99 x leader | tables applied (loop time) |\n|---|---|---|---|---|---|---|---|")
    for rows in sizes:
        for how in ("inline", "deferred"):
            with tempfile.TemporaryDirectory() as tmp:
                extra = f"{time.monotonic() + 6}:{rows}:{how}"
                first = await bench.spawn("latency", Path(tmp), extra)
                await asyncio.wait_for(first.stdout.readline(), 120)  # it leads
                second = await bench.spawn("latency", Path(tmp), extra)
                results = [await bench.result(first), await bench.result(second)]
            by_role = {r["role"]: r for r in results}
            if set(by_role) != {"leader", "follower"}:
                raise SystemExit(f"expected a leader and a follower, got {results}")
            lead = by_role["leader"]
            label = "in the call (before)" if how == "inline" else "deferred, <= 10/s (now)"
            for role in ("leader", "follower"):
                r = by_role[role]
                applied = (f"{r['applied']} ({r['apply_ms']:.0f} ms in {r['wall']:.1f} s)"
                           if role == "follower" else "-")
                print(f"| {rows} | {label} | {role} | {r['p50']:.1f} | {r['p99']:.1f} | "
                      f"{r['max']:.1f} | {r['p50'] / lead['p50']:.2f}x / "
                      f"{r['p99'] / lead['p99']:.2f}x | {applied} |")


async def first_connection_table(bench: Bench, rounds: int) -> None:
    print(f"\n## First connection of a fresh process, IPv6 blackholed (median of {rounds})\n")
    print("| case | ms |\n|---|---|")
    rows: dict[str, list[float]] = {"asyncio Happy Eyeballs (0.25 s)": [],
                                    "apr_async, cold host": [], "apr_async, warm host": []}
    for _ in range(rounds):
        rows["asyncio Happy Eyeballs (0.25 s)"].append(
            (await bench.result(await bench.spawn("asyncio", Path("/nonexistent"))))["ms"])
        with tempfile.TemporaryDirectory() as tmp:
            rows["apr_async, cold host"].append(
                (await bench.result(await bench.spawn("connect", Path(tmp))))["ms"])
            leader = await bench.leader(Path(tmp))
            await asyncio.sleep(bench.interval * 2)
            rows["apr_async, warm host"].append(
                (await bench.result(await bench.spawn("connect", Path(tmp))))["ms"])
            leader.kill()
            await leader.wait()
    for case, values in rows.items():
        each = ", ".join(f"{v:.1f}" for v in values)
        print(f"| {case} | {statistics.median(values):.1f} ({each}) |")


async def main(args: argparse.Namespace) -> None:
    from apr_async.lab import Lab, Scenario, lab_unavailable_reason

    reason = lab_unavailable_reason()
    if reason:
        sys.exit(f"needs a lab: {reason}")
    async with Lab() as lab:
        echo = await lab.start_echo_server()
        bench = Bench(lab, echo, args.interval)
        if args.only in (None, "packets"):
            await packets_table(bench, args.counts, args.window)
        if args.only in (None, "latency"):
            await latency_table(bench, args.sizes)
        if args.only in (None, "first"):
            await lab.set_scenario(Scenario.v6_blackholed())
            await first_connection_table(bench, args.rounds)
        await lab.stop_echo_server(echo)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(asyncio.run(child(*sys.argv[2:10]))), flush=True)
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=float, default=3.0)
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")],
                        default=[200, 2000])
    parser.add_argument("--only", choices=["packets", "latency", "first"], default=None)
    parser.add_argument("--counts", type=lambda s: [int(x) for x in s.split(",")],
                        default=[1, 8, 32])
    asyncio.run(main(parser.parse_args()))
