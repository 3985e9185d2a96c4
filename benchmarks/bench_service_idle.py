"""CPU and memory of an idle probe service probing 20 targets in the lab (needs root).

    python benchmarks/bench_service_idle.py [--duration 60] [--interval 30] [--targets 20]
                                            [--quick]

The service runs alone in a child process inside the lab's client namespace (``ip netns exec``),
so the process CPU time it reports (``getrusage``: user + system) is the service's and nothing
else's: the lab's DNS server, delay line and echo server live in this parent process. The
targets are extra addresses on the lab server (half IPv4, half IPv6), each probed with ICMP and
a TCP connect to the echo server's port from every source (a public-looking and an RFC 1918 IPv4,
a GUA and a ULA; the private and ULA ones are lost on the lab's NAT-free internet),
plus the two default gateways, with the default probe interval unless ``--interval`` says
otherwise. Memory is the child's resident set size just before the service starts and at the
end. The issue's budget: under 1 % of one core over 60 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import time
from typing import Any

BUDGET = 0.01  # of one core
SCRIPT = os.path.abspath(__file__)


def rss_kib() -> int:
    """Current resident set size in KiB (``VmRSS``)."""
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def child(args: argparse.Namespace) -> dict[str, Any]:
    """Inside the client namespace: run the service for ``duration`` seconds, measure."""
    from apr_async.config import Config
    from apr_async.probe.default import ProbeService

    targets = tuple(args.target)
    config = Config(
        targets=targets,
        probe_interval=args.interval,
        nameservers=tuple(args.nameserver),
        persist=False,
        atlas=False,
    )
    rss_before = rss_kib()
    cpu_before, wall_before = cpu_seconds(), time.monotonic()
    async with ProbeService(config, install=False) as service:
        ready = await service.wait_ready(30)
        await asyncio.sleep(max(0.0, args.duration - (time.monotonic() - wall_before)))
        cpu = cpu_seconds() - cpu_before
        wall = time.monotonic() - wall_before
        result = {
            "ready": ready,
            "rounds": service.rounds,
            "probes": dict(service.probes_sent),
            "paths": len(service.measurements()),
            "icmp": service.icmp_mode,
            "status": service.status().summary(),
        }
    result.update(cpu=cpu, wall=wall, rss_before=rss_before, rss_after=rss_kib(),
                  maxrss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return result


async def parent(args: argparse.Namespace) -> dict[str, Any]:
    from apr_async.lab import Lab

    half = args.targets // 2
    v4 = [f"198.51.100.{20 + i}" for i in range(args.targets - half)]
    v6 = [f"2001:db8:5::{0x20 + i:x}" for i in range(half)]
    async with Lab() as lab:
        echo = await lab.start_echo_server()
        batch = "".join(f"addr add {a}/24 dev {lab.server.ifname}\n" for a in v4)
        batch += "".join(f"addr add {a}/64 dev {lab.server.ifname} nodad\n" for a in v6)
        await lab.exec("server", "ip", "-batch", "-", input=batch, check=True)
        argv = [sys.executable, SCRIPT, "--child",
                "--duration", str(args.duration), "--interval", str(args.interval)]
        for address in v4:
            argv += ["--target", f"{address}:{echo.port}"]
        for address in v6:
            argv += ["--target", f"[{address}]:{echo.port}"]
        for server in lab.dns_servers:
            argv += ["--nameserver", server]
        out = await lab.exec("client", *argv, max_time=args.duration + 60, check=True)
        result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
        await lab.stop_echo_server(echo)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds measured")
    parser.add_argument("--interval", type=float, default=None,
                        help="probe interval (default: the Config default)")
    parser.add_argument("--targets", type=int, default=20, help="number of probe targets")
    parser.add_argument("--quick", action="store_true", help="measure 10 s only")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--target", action="append", default=[], help=argparse.SUPPRESS)
    parser.add_argument("--nameserver", action="append", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.interval is None:
        from apr_async.config import Config

        args.interval = Config().probe_interval
    if args.child:
        print(json.dumps(asyncio.run(child(args))))
        return 0
    if args.quick:
        args.duration = min(args.duration, 10.0)
    if not 2 <= args.targets <= 200 or args.duration <= 0 or args.interval <= 0:
        parser.error("need 2-200 targets and positive duration and interval")

    from apr_async.lab import lab_unavailable_reason

    reason = lab_unavailable_reason()
    if reason is not None:
        print(f"skipped: network lab unavailable ({reason})")
        return 0
    r = asyncio.run(parent(args))
    share = r["cpu"] / r["wall"]
    probes = r["probes"]
    rows = [
        ("targets", f"{args.targets} (+ 2 gateways)"),
        ("probe interval", f"{args.interval:g} s"),
        ("measured", f"{r['wall']:.1f} s, {r['rounds']} rounds"),
        ("probes sent", f"{probes['icmp']} ICMP ({r['icmp'] or 'off'}), {probes['tcp']} TCP"),
        ("paths measured", str(r["paths"])),
        ("CPU time", f"{r['cpu'] * 1000:.1f} ms"),
        ("CPU share of one core", f"{share * 100:.3f} %  (budget {BUDGET * 100:g} %)"),
        ("CPU per probe", f"{r['cpu'] / max(1, sum(probes.values())) * 1e6:.0f} us"),
        ("RSS before / after", f"{r['rss_before'] / 1024:.1f} / {r['rss_after'] / 1024:.1f} MiB"),
        ("RSS growth", f"{(r['rss_after'] - r['rss_before']) / 1024:.2f} MiB"),
        ("status", r["status"]),
    ]
    print("\nIdle probe service in the lab client namespace\n")
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    if not r["ready"] or share >= BUDGET:
        print("\nFAILED: first round not completed" if not r["ready"]
              else f"\nFAILED: over budget ({share * 100:.3f} %)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
