"""How long ``get_addr_pairs`` takes with a warm DNS cache, next to what callers use today.

Runs in the network lab's client namespace, topped up to 3 sources per family (IPv4: the
lab's own plus RFC 1918 extras; IPv6: two GUAs and a ULA, plus link-local), for a name with
4 A and 4 AAAA answers served by the lab DNS server. Ours:

* ``get_addr_pairs`` warm: answers from the resolver cache, snapshot and route choices from
  the interface cache, empty latency table (RFC 6724 order): the figure issue 3 sets a
  50 microsecond ceiling on;
* the same with every pair measured (the ranking is memoised while the table is unchanged);
* the same with one recent failure as well (still memoised: the failure table's generation
  moves only when an entry is recorded, cleared or expires);
* a numeric host (no resolver at all), and ``apr_async.getaddrinfo`` warm (stdlib shape).

Peers, in the same namespace (they return destinations only, no source per destination):

* ``aiodns`` A + AAAA queried concurrently on every call, no cache (aiohttp's AsyncResolver);
* ``loop.getaddrinfo`` on the lab DNS name: glibc has no cache, each call is a query;
* ``loop.getaddrinfo`` on a name from the hosts file: glibc's best case, no DNS;
* ``loop.getaddrinfo`` on a numeric host: the executor round trip alone.

glibc runs in a child process (``ip netns exec`` so that ``/etc/netns/<ns>/resolv.conf`` and
``hosts`` point it at the lab). Prints median / p10 / p90 microseconds per call and saves the
table to ``results/bench_get_addr_pairs.md``. Needs root (the lab); nothing leaves it.

    python benchmarks/bench_get_addr_pairs.py [--quick] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import ipaddress
import json
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiodns

from apr_async.lab import Lab, ServerPlan, ZoneEntry, default_zone, lab_unavailable_reason
from apr_async.resolve.addrinfo import getaddrinfo
from apr_async.resolve.pairs import PairContext, get_addr_pairs
from apr_async.resolve.resolver import Resolver

NAME = "bench.lab.test"
HOSTS_NAME = "bench-hosts.lab.test"  # only in the namespace's hosts file, for glibc
TARGET_US = 50.0
TARGET_ROW = "get_addr_pairs, warm"
RESULTS = Path(__file__).resolve().parent / "results"

Samples = list[float]


async def _timed(call: Callable[[], Awaitable[object]], rounds: int, per_round: int) -> Samples:
    """Per-call microseconds of each round (a round is ``per_round`` back-to-back calls)."""
    for _ in range(per_round):  # one discarded round: caches, allocator, branch predictors
        await call()
    samples = []
    for _ in range(rounds):
        start = time.perf_counter_ns()
        for _ in range(per_round):
            await call()
        samples.append((time.perf_counter_ns() - start) / per_round / 1000)
    return samples


#: ``--profile``: print the cProfile entries of the warm rows (by internal time) too.
PROFILE = False


async def _profile(call: Callable[[], Awaitable[object]], label: str, count: int = 5000) -> None:
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(count):
        await call()
    prof.disable()
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    total = sum(v[1] for v in stats.stats.values())  # type: ignore[attr-defined]
    out.write(f"\n### {label}: {total / count:.0f} Python function calls per call\n")
    stats.sort_stats("tottime").print_stats(25)
    print(out.getvalue())


async def client_side(dns: list[str], rounds: int, per_round: int, *, numeric: str,
                      lab_v4: list[str], lab_v6: list[str], sources: list[str]
                      ) -> tuple[int, dict[str, Samples]]:
    """Our rows and the aiodns peer, timed inside the client namespace."""
    out: dict[str, Samples] = {}
    async with Resolver(dns, hosts_path=None) as resolver:
        ctx = PairContext(resolver=resolver)
        pairs = await get_addr_pairs(NAME, 443, context=ctx)
        out[TARGET_ROW] = await _timed(
            lambda: get_addr_pairs(NAME, 443, context=ctx), rounds, per_round)
        if PROFILE:
            await _profile(lambda: get_addr_pairs(NAME, 443, context=ctx), TARGET_ROW)
        now = ctx.clock()
        for src in sources:
            for dst in [*lab_v4, *lab_v6]:
                s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
                if s.version == d.version:
                    ctx.latency.record(s, d, 0.002 if d.version == 6 else 0.003, now)
        out["get_addr_pairs, warm, every pair measured"] = await _timed(
            lambda: get_addr_pairs(NAME, 443, context=ctx), rounds, per_round)
        if PROFILE:
            await _profile(lambda: get_addr_pairs(NAME, 443, context=ctx), "every pair measured")
        ctx.failures.record_failure(ipaddress.ip_address(sources[-1]),
                                    ipaddress.ip_address(lab_v6[0]), 443, now)
        out["get_addr_pairs, warm, measured + 1 failure"] = await _timed(
            lambda: get_addr_pairs(NAME, 443, context=ctx), rounds, per_round)
        ctx.failures.clear()
        out["get_addr_pairs, numeric host"] = await _timed(
            lambda: get_addr_pairs(numeric, 443, context=ctx), rounds, per_round)
        out["apr_async getaddrinfo, warm"] = await _timed(
            lambda: getaddrinfo(NAME, 443, type=1, context=ctx), rounds, per_round)
    channel = aiodns.DNSResolver(nameservers=[dns[0]], timeout=1.0, tries=1)
    try:
        async def both() -> object:
            return await asyncio.gather(channel.query_dns(NAME, "AAAA"),
                                        channel.query_dns(NAME, "A"))
        out["peer: aiodns A + AAAA, no cache"] = await _timed(
            both, max(5, rounds // 5), max(10, per_round // 20))
    finally:
        await channel.close()
    return len(pairs), out


PEER = """
import asyncio, json, socket, sys, time
async def main(rounds, per_round, hosts):
    loop = asyncio.get_running_loop()
    out = {}
    for host in hosts:
        call = lambda: loop.getaddrinfo(host, 443, type=socket.SOCK_STREAM)
        found = await call()
        assert len(found) == len({*(i[4][0] for i in found)}), found
        samples = []
        for _ in range(rounds):
            start = time.perf_counter_ns()
            for _ in range(per_round):
                await call()
            samples.append((time.perf_counter_ns() - start) / per_round / 1000)
        out[host] = {"answers": len(found), "samples": samples}
    print(json.dumps(out))
asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]))
"""


def glibc_peers(netns: str, dns_v4: str, *, hosts: dict[str, list[str]], numeric: str,
                rounds: int, per_round: int) -> dict[str, Samples]:
    """loop.getaddrinfo in the client namespace: lab DNS, the hosts file, a numeric host."""
    etc = Path("/etc/netns") / netns
    etc.mkdir(parents=True, exist_ok=True)
    try:
        (etc / "resolv.conf").write_text(f"nameserver {dns_v4}\noptions timeout:1 attempts:1\n")
        lines = ["127.0.0.1 localhost", "::1 localhost"]
        lines += [f"{address} {name}" for name, addresses in hosts.items() for address in addresses]
        (etc / "hosts").write_text("\n".join(lines) + "\n")
        proc = subprocess.run(
            ["ip", "netns", "exec", netns, sys.executable, "-c", PEER, str(rounds),
             str(per_round), NAME, HOSTS_NAME, numeric],
            capture_output=True, text=True, timeout=300, check=True)
    finally:
        shutil.rmtree(etc, ignore_errors=True)
    found = json.loads(proc.stdout)
    for host in (NAME, HOSTS_NAME):
        if found[host]["answers"] != 8:
            raise RuntimeError(f"glibc got {found[host]['answers']} answers for {host}")
    return {
        "peer: loop.getaddrinfo, lab DNS (glibc)": found[NAME]["samples"],
        "peer: loop.getaddrinfo, hosts file": found[HOSTS_NAME]["samples"],
        "peer: loop.getaddrinfo, numeric host": found[numeric]["samples"],
    }


def table(rows: dict[str, Samples]) -> str:
    """A markdown table: median, p10, p90 and the median as a multiple of the target row's."""
    base = statistics.median(rows[TARGET_ROW])
    out = [f"| {'call (microseconds per call)':<42} | {'median':>8} | {'p10':>7} | {'p90':>7} "
           f"| {'x ours':>7} |",
           f"|{'-' * 44}|{'-' * 10}|{'-' * 9}|{'-' * 9}|{'-' * 9}|"]
    for label, samples in rows.items():
        ordered = sorted(samples)
        median = statistics.median(ordered)
        p10 = ordered[len(ordered) // 10]
        p90 = ordered[(len(ordered) * 9) // 10]
        out.append(f"| {label:<42} | {median:>8.1f} | {p10:>7.1f} | {p90:>7.1f} "
                   f"| {median / base:>6.1f}x |")
    return "\n".join(out)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--profile", action="store_true", help="print cProfile of warm calls")
    args = parser.parse_args()
    global PROFILE  # noqa: PLW0603 - a command-line switch
    PROFILE = args.profile
    rounds, per_round = (20, 200) if args.quick else (50, 1000)
    reason = lab_unavailable_reason()
    if reason is not None:
        print(f"skipped: {reason}")
        return 0
    s = ServerPlan(netns="")  # the lab's fixed address plan, to build the zone up front
    v4 = [*s.v4, s.dead_v4[0]]
    v6 = [*s.v6, s.dead_v6[0]]
    numeric = s.v4[0]
    zone = default_zone(s.v4, s.v6, s.dead_v4, s.dead_v6)
    zone[NAME] = ZoneEntry(a=tuple(v4), aaaa=tuple(v6), ttl=3600)
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
        count, rows = await lab.run_in(
            "client", client_side, lab.dns_servers, rounds, per_round, numeric=numeric,
            lab_v4=v4, lab_v6=v6, sources=sources)
        rows.update(await asyncio.to_thread(
            glibc_peers, lab.netns("client"), lab.dns_v4, hosts={HOSTS_NAME: [*v6, *v4]},
            numeric=numeric, rounds=max(5, rounds // 5), per_round=max(10, per_round // 20)))
    warm = statistics.median(rows[TARGET_ROW])
    verdict = "OK" if warm <= TARGET_US else "OVER TARGET"
    text = "\n".join([
        f"{NAME}: 4 A + 4 AAAA, client with 3 sources per family: {count} ranked pairs "
        "(peers return 8 destinations, no sources).",
        "",
        table(rows),
        "",
        f"{TARGET_ROW} median {warm:.1f} us (target <= {TARGET_US:.0f} us): {verdict}",
        f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs while measuring: "
        "figures are noisy when it nears the CPU count)",
    ])
    print("\n" + text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_get_addr_pairs.md").write_text(text + "\n")
    print(f"\nsaved {RESULTS / 'bench_get_addr_pairs.md'}")
    return 0 if warm <= TARGET_US else 1


if __name__ == "__main__":
    if os.name != "posix":
        print("skipped: needs Linux network namespaces")
        sys.exit(0)
    sys.exit(asyncio.run(main()))
