"""One prober per host (issue 12): packets, hot-path cost and first connections (needs root).

    python benchmarks/bench_shared.py [--window 3] [--interval 0.5] [--counts 1,8,32]

Everything runs in a lab (network namespaces): worker processes start inside the client
namespace (``ip netns exec``), probe only the lab server and resolve only through the lab DNS.

1. Probe packets per probe interval sent by 1, 8 and 32 processes sharing a cache directory
   (an nftables counter on the client's output towards the server), once every worker is
   running, as a ratio to one process.
2. ``apr_async.get_addr_pairs`` through the default service in the leader and in a follower
   (the follower's hot path adds the shared-table generation check), as a ratio.
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
            # leader and follower measure at the same time, so they share the CPU alike
            await asyncio.sleep(max(0.0, float(extra) - time.monotonic()))
            samples = []
            for _ in range(7):
                started = time.perf_counter()
                for _ in range(500):
                    await apr_async.get_addr_pairs(name, int(port))
                samples.append((time.perf_counter() - started) / 500 * 1e6)
            return {"role": svc.role, "us": statistics.median(samples)}
        await asyncio.sleep(max(0.0, float(extra) - time.monotonic()))
        return {"role": svc.role}
    finally:
        await default.aclose_default()


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


async def latency_table(bench: Bench) -> None:
    print("\n## get_addr_pairs through the default service (median of 7 x 500 calls)\n")
    print("| process | us per call | ratio to leader |\n|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        start = str(time.monotonic() + 5)
        first = await bench.spawn("latency", Path(tmp), start)
        await asyncio.wait_for(first.stdout.readline(), 120)  # it leads
        second = await bench.spawn("latency", Path(tmp), start)
        results = [await bench.result(first), await bench.result(second)]
    by_role = {r["role"]: r["us"] for r in results}
    lead = by_role["leader"]
    for role in ("leader", "follower"):
        print(f"| {role} | {by_role[role]:.1f} | {by_role[role] / lead:.2f}x |")


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
        await packets_table(bench, args.counts, args.window)
        await latency_table(bench)
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
    parser.add_argument("--counts", type=lambda s: [int(x) for x in s.split(",")],
                        default=[1, 8, 32])
    asyncio.run(main(parser.parse_args()))
