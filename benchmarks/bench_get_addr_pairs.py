"""How long ``get_addr_pairs`` takes with a warm DNS cache, next to ``loop.getaddrinfo``.

Runs in the network lab's client namespace, topped up to 3 sources per family (IPv4: the
lab's own plus RFC 1918 extras; IPv6: two GUAs and a ULA, plus link-local), for a name with
4 A and 4 AAAA answers served by the lab DNS server. Rows:

* ``get_addr_pairs`` warm: answers from the resolver cache, snapshot and route choices from
  the interface cache, empty latency table (RFC 6724 order);
* the same with a measured latency table (every pair measured);
* ``apr_async getaddrinfo`` warm (the stdlib's tuple shape, ranked);
* ``loop.getaddrinfo`` (the peer): glibc in the same namespace, pointed at the same lab DNS
  server through ``/etc/netns/<ns>/resolv.conf`` (glibc has no cache: each call is a query).

Prints median / p10 / p90 microseconds per call. Needs root (the lab); nothing leaves it.

    python benchmarks/bench_get_addr_pairs.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from apr_async.lab import Lab, ServerPlan, ZoneEntry, default_zone, lab_unavailable_reason
from apr_async.pairs import PairContext, get_addr_pairs, getaddrinfo
from apr_async.resolver import Resolver

NAME = "bench.lab.test"
TARGET_US = 50.0


async def _timed(call: Callable[[], Awaitable[object]], rounds: int, per_round: int) -> list[float]:
    """Per-call microseconds of each round (a round is ``per_round`` back-to-back calls)."""
    await call()
    samples = []
    for _ in range(rounds):
        start = time.perf_counter_ns()
        for _ in range(per_round):
            await call()
        samples.append((time.perf_counter_ns() - start) / per_round / 1000)
    return samples


async def client_side(dns: list[str], rounds: int, per_round: int, *,
                      lab_v4: list[str], lab_v6: list[str], sources: list[str]
                      ) -> dict[str, list[float] | int]:
    async with Resolver(dns, hosts_path=None) as resolver:
        ctx = PairContext(resolver=resolver)
        pairs = await get_addr_pairs(NAME, 443, context=ctx)
        out: dict[str, list[float] | int] = {"pairs": len(pairs)}
        out["get_addr_pairs, warm"] = await _timed(
            lambda: get_addr_pairs(NAME, 443, context=ctx), rounds, per_round)
        now = ctx.clock()
        for src in sources:
            for dst in [*lab_v4, *lab_v6]:
                s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
                if s.version == d.version:
                    ctx.latency.record(s, d, 0.002 if d.version == 6 else 0.003, now)
        out["get_addr_pairs, warm, latency measured"] = await _timed(
            lambda: get_addr_pairs(NAME, 443, context=ctx), rounds, per_round)
        out["apr_async getaddrinfo, warm"] = await _timed(
            lambda: getaddrinfo(NAME, 443, type=1, context=ctx), rounds, per_round)
        return out


PEER = """
import asyncio, json, socket, sys, time
async def main(rounds, per_round):
    loop = asyncio.get_running_loop()
    call = lambda: loop.getaddrinfo(sys.argv[1], 443, type=socket.SOCK_STREAM)
    found = await call()
    samples = []
    for _ in range(rounds):
        start = time.perf_counter_ns()
        for _ in range(per_round):
            await call()
        samples.append((time.perf_counter_ns() - start) / per_round / 1000)
    print(json.dumps({"answers": len(found), "samples": samples}))
asyncio.run(main(int(sys.argv[2]), int(sys.argv[3])))
"""


def peer(netns: str, dns_v4: str, rounds: int, per_round: int) -> dict[str, object]:
    """loop.getaddrinfo in the client namespace, glibc pointed at the lab DNS server."""
    etc = Path("/etc/netns") / netns
    etc.mkdir(parents=True, exist_ok=True)
    try:
        (etc / "resolv.conf").write_text(f"nameserver {dns_v4}\noptions timeout:1 attempts:1\n")
        proc = subprocess.run(
            ["ip", "netns", "exec", netns, sys.executable, "-c", PEER, NAME, str(rounds),
             str(per_round)], capture_output=True, text=True, timeout=300, check=True)
        return json.loads(proc.stdout)  # type: ignore[no-any-return]
    finally:
        shutil.rmtree(etc, ignore_errors=True)


def _row(label: str, samples: list[float]) -> str:
    ordered = sorted(samples)
    p10 = ordered[len(ordered) // 10]
    p90 = ordered[(len(ordered) * 9) // 10]
    return f"| {label:<40} | {statistics.median(samples):>9.1f} | {p10:>7.1f} | {p90:>7.1f} |"


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    args = parser.parse_args()
    rounds, per_round = (20, 200) if args.quick else (50, 1000)
    reason = lab_unavailable_reason()
    if reason is not None:
        print(f"skipped: {reason}")
        return 0
    s = ServerPlan(netns="")  # the lab's fixed address plan, to build the zone up front
    v4 = [*s.v4, s.dead_v4[0]]
    v6 = [*s.v6, s.dead_v6[0]]
    zone = default_zone(s.v4, s.v6, s.dead_v4, s.dead_v6)
    zone[NAME] = ZoneEntry(a=v4, aaaa=v6, ttl=3600)
    async with Lab(dns_zone=zone) as lab:
        c = lab.client
        # The lab's client has one or two IPv4 sources depending on its plan; add RFC 1918
        # ones from its subnet until there are three.
        own_v4 = [c.v4, *([c.private_v4] if hasattr(c, "private_v4") else [])]
        prefixlen = getattr(c, "private_v4_prefixlen", c.v4_prefixlen)
        subnet = ipaddress.ip_network(f"{own_v4[-1]}/{prefixlen}", strict=False)
        extra_v4 = [str(a) for a in subnet.hosts() if str(a) not in own_v4][50:53 - len(own_v4)]
        extra_v6 = ["2001:db8:c::3"]
        for address in extra_v4:
            await lab.exec("client", "ip", "addr", "add", f"{address}/{prefixlen}", "dev",
                           c.ifname, check=True)
        for address in extra_v6:
            await lab.exec("client", "ip", "addr", "add", f"{address}/64", "dev", c.ifname,
                           "nodad", check=True)
        sources = [*own_v4, *extra_v4, c.gua, *extra_v6, c.ula]
        ours = await lab.run_in("client", client_side, lab.dns_servers, rounds, per_round,
                                lab_v4=v4, lab_v6=v6, sources=sources)
        theirs = await asyncio.to_thread(peer, lab.netns("client"), lab.dns_v4,
                                         max(5, rounds // 5), max(10, per_round // 20))
    print(f"\n{NAME}: 4 A + 4 AAAA, client with 3 sources per family; "
          f"{ours['pairs']} ranked pairs; peer got {theirs['answers']} answers\n")
    print(f"| {'call (microseconds per call)':<40} | {'median':>9} | {'p10':>7} | {'p90':>7} |")
    print(f"|{'-' * 42}|{'-' * 11}|{'-' * 9}|{'-' * 9}|")
    for label, samples in ours.items():
        if isinstance(samples, list):
            print(_row(label, samples))
    print(_row("loop.getaddrinfo (glibc, lab DNS)", theirs["samples"]))  # type: ignore[arg-type]
    warm = statistics.median(ours["get_addr_pairs, warm"])  # type: ignore[arg-type]
    verdict = "OK" if warm <= TARGET_US else "OVER TARGET"
    print(f"\nget_addr_pairs warm median {warm:.1f} us (target <= {TARGET_US:.0f} us): {verdict}")
    return 0


if __name__ == "__main__":
    if os.name != "posix":
        print("skipped: needs Linux network namespaces")
        sys.exit(0)
    sys.exit(asyncio.run(main()))
