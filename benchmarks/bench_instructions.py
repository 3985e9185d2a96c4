"""Instructions per loopback connection, counted by callgrind: apr_async vs asyncio (issue 14).

    python benchmarks/bench_instructions.py [--count N] [--inflight 1,100] [--clock-scale S]
                                            [--src DIR] [--out FILE]

Wall-clock and CPU-time rates swing by tens of percent on a shared machine; the number of
instructions the client process executes does not. Each client runs in a fresh
``valgrind --tool=callgrind`` process that opens ``--count`` loopback connections (each closed
at once, as ``bench_throughput.py`` does) after a warm-up, against an accept-and-close server
in a separate process (not under valgrind). A second run of the same client with 0 connections
(same start-up, imports, warm-up) is subtracted, so the figure is the instructions of one
connection alone. Clients: ``asyncio`` (``asyncio.open_connection("127.0.0.1", port)``),
``apr numeric`` (``apr_async.open_connection("127.0.0.1", ...)``) and ``apr cached name``
(a name with one A record in the resolver's cache, answered once by a DNS server on
127.0.0.1 during the warm-up).

Under callgrind the program runs ~50x slower, but the ranking memo expires after 1 s of the
context's clock: the apr clients' context gets a clock slowed by ``--clock-scale`` (default
50) so the general path is taken about as rarely per connection as at native speed.
``PYTHONHASHSEED`` is fixed, so two runs of a client count the same to a fraction of a percent.
``--src`` makes the children import apr_async from another tree (e.g. a worktree of the
commit to compare with), so before and after are measured by the same benchmark.

Prints the table and saves ``results/bench_instructions.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import re
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from apr_async.tools import resolve_tool

RESULTS = Path(__file__).resolve().parent / "results"
CLIENTS = ("asyncio", "apr numeric", "apr cached name")
NAME = "lo.bench.test"
WARMUP = 300


Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _run(connect: Callable[[], Awaitable[Streams]], count: int, inflight: int) -> None:
    async def worker(n: int) -> None:
        for _ in range(n):
            _, writer = await connect()
            writer.transport.abort()

    await asyncio.gather(*(worker(count // inflight) for _ in range(inflight)))


async def child(client: str, port: int, count: int, inflight: int, scale: float) -> None:
    """Warm up, then open ``count`` connections with ``inflight`` at a time (the counted part)."""
    # Never the system resolver, never a probe outside the machine (as the test suite does).
    os.environ.update(APR_ASYNC_NAMESERVERS="127.0.0.1:9", APR_ASYNC_AUTOSTART="0",
                      APR_ASYNC_TARGETS="none", APR_ASYNC_PROBE_GATEWAYS="0")
    from apr_async.connect.api import open_connection
    from apr_async.lab import ZoneEntry
    from apr_async.lab.dnsserver import DNSServer
    from apr_async.resolve.pairs import PairContext
    from apr_async.resolve.resolver import Resolver

    def clock() -> float:
        return time.monotonic() / scale

    async with DNSServer({NAME: ZoneEntry(a=("127.0.0.1",))}, "127.0.0.1", 0) as dns:
        # Both families' answers stay cached (the name has no AAAA: that "no such record"
        # answer must not expire either, or every 5 s the client is a cache miss).
        resolver = Resolver(dns.nameservers, min_ttl=3600.0, negative_ttl=3600.0, hosts_path=None)
        await resolver.resolve(NAME)  # the answer stays cached for the whole run
    numeric = PairContext(clock=clock)
    named = PairContext(resolver=resolver, clock=clock)
    connect: Callable[[], Awaitable[Streams]] = {
        "asyncio": lambda: asyncio.open_connection("127.0.0.1", port),
        "apr numeric": lambda: open_connection("127.0.0.1", port, context=numeric),
        "apr cached name": lambda: open_connection(NAME, port, context=named),
    }[client]
    await _run(connect, WARMUP, min(inflight, WARMUP))
    gc.collect()
    if count:
        await _run(connect, count, inflight)
    gc.collect()  # what the connections left behind is theirs too


def count_instructions(
    client: str, port: int, count: int, inflight: int, *, scale: float, src: str | None
) -> int:
    """Instructions (callgrind ``Ir``) of one fresh child process."""
    out = Path(f"/tmp/apr-callgrind-{os.getpid()}.out")
    argv = [resolve_tool("valgrind"), "--tool=callgrind", f"--callgrind-out-file={out}",
            sys.executable, __file__, "--child", client, str(port), str(count), str(inflight),
            str(scale)]
    env = dict(os.environ, PYTHONHASHSEED="0")
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (src, env.get("PYTHONPATH"))))
    try:
        done = subprocess.run(argv, capture_output=True, text=True, env=env, check=True)
    finally:
        out.unlink(missing_ok=True)
    found = re.search(r"Collected\s*:\s*(\d+)", done.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count in callgrind's output:\n{done.stderr}")
    return int(found.group(1))


def measure(
    count: int, inflight: tuple[int, ...], scale: float, src: str | None
) -> dict[int, dict[str, float]]:
    """In-flight -> client -> instructions per connection (start-up subtracted)."""
    # bench_throughput's accept-and-close server; imported here, in the parent only, so the
    # callgrind children do not count bench_throughput's imports.
    from bench_throughput import _SERVER

    server = subprocess.Popen([sys.executable, "-c", _SERVER], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        table: dict[int, dict[str, float]] = {}
        for n in inflight:
            table[n] = {}
            for client in CLIENTS:
                base = count_instructions(client, port, 0, n, scale=scale, src=src)
                full = count_instructions(client, port, count, n, scale=scale, src=src)
                table[n][client] = (full - base) / count
                print(f"{n} in flight, {client}: {table[n][client]:,.0f}", file=sys.stderr)
    finally:
        server.kill()
        server.wait()
    return table


def render(table: dict[int, dict[str, float]]) -> str:
    cols = ["sequential" if n == 1 else f"{n} in flight" for n in table]
    lines = ["| client | " + " | ".join(f"{c}: instructions/conn (asyncio / it)" for c in cols)
             + " |", "|---" * (len(table) + 1) + "|"]
    for client in CLIENTS:
        cells = [f"{t[client]:,.0f} ({t['asyncio'] / t[client]:.2f}x)" for t in table.values()]
        lines.append(f"| {client} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--inflight", default="1,100")
    parser.add_argument("--clock-scale", type=float, default=50.0)
    parser.add_argument("--out", default="bench_instructions.md")
    parser.add_argument("--src", help="the src directory the children import apr_async from")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        client, port, count, inflight, scale = args.child
        asyncio.run(child(client, int(port), int(count), int(inflight), float(scale)))
        return 0
    inflight = tuple(int(n) for n in args.inflight.split(","))
    load = os.getloadavg()
    table = render(measure(args.count, inflight, args.clock_scale, args.src))
    note = (f"\n\ncallgrind, {args.count} connections per client after {WARMUP} warm-up ones, "
            f"a 0-connection run subtracted; apr_async from {args.src or 'this tree'}; clock "
            f"scale {args.clock_scale:g}; load average at the start {load[0]:.1f} "
            "(instruction counts do not depend on it).")
    print(table + note)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / args.out).write_text(table + note + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
