"""Connection rate on a healthy path: apr_async vs asyncio vs aiohappyeyeballs (issue 14).

    python benchmarks/bench_throughput.py [--quick] [--profile] [--rounds N] [--per-round N]

Loopback only. The server is a separate process (a blocking accept-and-close loop), so its CPU
is not charged to the client under test. Each client opens ``--per-round`` connections per
round (each closed as soon as it is usable), one at a time or with 100 / 500 in flight; the
clients take turns round by round (interleaved), and each client's rate is its total
connections over its total time. Every figure is also given as a ratio to plain
``asyncio.open_connection`` measured in the same run, which is the robust number on a shared
machine. Clients:

* ``asyncio``: ``asyncio.open_connection("127.0.0.1", port)``;
* ``asyncio HE``: the same with ``happy_eyeballs_delay=0.25``;
* ``aiohappyeyeballs``: ``start_connection`` on a prepared addrinfo, then
  ``asyncio.open_connection(sock=...)``;
* ``apr numeric``: ``apr_async.open_connection("127.0.0.1", port, context=ctx)``;
* ``apr cached name``: ``apr_async.open_connection("lo.bench.test", ...)`` with the name's
  answer (one A record) in the resolver's cache, served by a lab DNS server on 127.0.0.1. Plain
  asyncio has no cache; it is compared with asyncio on the numeric address, its best case.

``--profile`` prints the cProfile top entries (by internal time) of 3000 sequential
connections for apr numeric, apr cached name and asyncio.

The aiohttp comparison also runs between the lab's client and server namespaces when the lab is
available (``bench_throughput_lab.py``; ``--no-lab`` skips it).

Prints the table and saves ``results/bench_throughput.md`` and ``results/bench_throughput.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import os
import pstats
import resource
import socket
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from pathlib import Path

# Never the system resolver, never a probe outside the machine (as the test suite does).
os.environ.setdefault("APR_ASYNC_NAMESERVERS", "127.0.0.1:9")
os.environ.setdefault("APR_ASYNC_AUTOSTART", "0")
os.environ.setdefault("APR_ASYNC_TARGETS", "none")
os.environ.setdefault("APR_ASYNC_PROBE_GATEWAYS", "0")

import aiohappyeyeballs
import aiohttp

from apr_async.aiohttp import AprConnector
from apr_async.connect.api import open_connection
from apr_async.lab import ZoneEntry
from apr_async.lab.dnsserver import DNSServer
from apr_async.resolve.pairs import PairContext
from apr_async.resolve.resolver import Resolver

RESULTS = Path(__file__).resolve().parent / "results"
NAME = "lo.bench.test"
CONCURRENCY = (1, 100, 500)

# A blocking accept-and-close loop: the cheapest server, in its own process.
_SERVER = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 0))
s.listen(4096)
print(s.getsockname()[1], flush=True)
while True:
    c, _ = s.accept()
    c.close()
"""

# Accepts and keeps every connection (for the memory comparison).
_HOLD_SERVER = """
import resource, socket
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(4096)
print(s.getsockname()[1], flush=True)
held = []
while True:
    held.append(s.accept()[0])
"""

# An aiohttp server answering "ok", in its own process.
_HTTP_SERVER = """
import asyncio, sys
from aiohttp import web
async def ok(request):
    return web.Response(text="ok")
async def main():
    app = web.Application()
    app.router.add_get("/", ok)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1", 0, backlog=4096)
    await site.start()
    print(site._server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""

Table = dict[int, dict[str, float]]
Connect = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


def _raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))


async def _burst(connect: Connect, count: int, concurrency: int) -> tuple[float, float]:
    """Wall-clock and CPU seconds (this process) to open (and close) ``count`` connections
    with ``concurrency`` in flight."""

    async def worker(n: int) -> None:
        for _ in range(n):
            _, writer = await connect()
            writer.transport.abort()  # close now: no FIN handshake to wait for

    per = count // concurrency
    start, cpu = time.perf_counter(), time.process_time()
    if concurrency == 1:
        await worker(count)
    else:
        await asyncio.gather(*(worker(per) for _ in range(concurrency)))
    return time.perf_counter() - start, time.process_time() - cpu


async def _clients(port: int, dns: DNSServer) -> dict[str, Connect]:
    numeric = PairContext()
    # Both families' answers stay cached (the name has no AAAA: that "no such record"
    # answer must not expire either, or every 5 s the client is a cache miss).
    resolver = Resolver(dns.nameservers, min_ttl=3600.0, negative_ttl=3600.0, hosts_path=None)
    named = PairContext(resolver=resolver)
    await resolver.resolve(NAME)  # warm the cache
    infos = [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("127.0.0.1", port))]

    async def aiohe() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        sock = await aiohappyeyeballs.start_connection(infos, happy_eyeballs_delay=0.25)
        return await asyncio.open_connection(sock=sock)

    return {
        "asyncio": lambda: asyncio.open_connection("127.0.0.1", port),
        "asyncio HE": lambda: asyncio.open_connection("127.0.0.1", port, happy_eyeballs_delay=0.25),
        "aiohappyeyeballs": aiohe,
        "apr numeric": lambda: open_connection("127.0.0.1", port, context=numeric),
        "apr cached name": lambda: open_connection(NAME, port, context=named),
    }


async def measure(port: int, rounds: int, per_round: int) -> tuple[Table, Table]:
    """Concurrency -> client -> connections per second, and CPU microseconds per
    connection (this process: the client's own cost, the server runs elsewhere)."""
    async with DNSServer({NAME: ZoneEntry(a=("127.0.0.1",))}, "127.0.0.1", 0) as dns:
        clients = await _clients(port, dns)
        rates: dict[int, dict[str, float]] = {}
        cpu: dict[int, dict[str, float]] = {}
        for concurrency in CONCURRENCY:
            spent = dict.fromkeys(clients, 0.0)
            used = dict.fromkeys(clients, 0.0)
            for connect in clients.values():  # warm-up round, not counted
                await _burst(connect, min(per_round, 500), min(concurrency, 100))
            for rnd in range(rounds):
                # alternate the order too, so no client always follows the same one
                order = list(clients.items())
                for name, connect in order if rnd % 2 == 0 else order[::-1]:
                    wall, proc = await _burst(connect, per_round, concurrency)
                    spent[name] += wall
                    used[name] += proc
                    await asyncio.sleep(0.05)  # let the server drain its backlog
            total = rounds * per_round
            rates[concurrency] = {k: total / v for k, v in spent.items()}
            cpu[concurrency] = {k: v / total * 1e6 for k, v in used.items()}
    return rates, cpu


async def profile(port: int, count: int) -> str:
    """cProfile top entries of ``count`` sequential connections for three clients."""
    out = io.StringIO()
    async with DNSServer({NAME: ZoneEntry(a=("127.0.0.1",))}, "127.0.0.1", 0) as dns:
        clients = await _clients(port, dns)
        for name in ("asyncio", "apr numeric", "apr cached name"):
            connect = clients[name]
            await _burst(connect, 200, 1)
            prof = cProfile.Profile()
            prof.enable()
            await _burst(connect, count, 1)
            prof.disable()
            stats = pstats.Stats(prof, stream=out)
            total = sum(v[1] for v in stats.stats.values())  # type: ignore[attr-defined]
            out.write(f"\n### {name}: {total / count:.0f} Python function calls per connection\n")
            stats.sort_stats("tottime").print_stats(14)
    return out.getvalue()


async def _requests(session: aiohttp.ClientSession, url: str, count: int, inflight: int) -> float:
    """Seconds for ``count`` GETs with ``inflight`` at a time."""

    async def worker(n: int) -> None:
        for _ in range(n):
            async with session.get(url) as resp:
                await resp.read()

    start = time.perf_counter()
    await asyncio.gather(*(worker(count // inflight) for _ in range(inflight)))
    return time.perf_counter() - start


async def measure_aiohttp(url: str, rounds: int, per_round: int) -> dict[str, dict[str, float]]:
    """Mode -> connector -> requests per second, interleaved rounds, 10 requests in flight;
    and ``"<mode>, CPU"`` -> connector -> the client thread's CPU microseconds per request
    (``time.thread_time``: the server, another process, is not in it, so this is steadier
    than the rate when both share the CPUs)."""
    ctx = PairContext()
    result: dict[str, dict[str, float]] = {}
    for mode, force_close in (("new connection per request", True), ("keep-alive", False)):
        sessions = {
            "aiohttp TCPConnector": aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=force_close, limit=0)
            ),
            "apr_async AprConnector": aiohttp.ClientSession(
                connector=AprConnector(context=ctx, force_close=force_close, limit=0)
            ),
        }
        spent = dict.fromkeys(sessions, 0.0)
        cpu = dict.fromkeys(sessions, 0.0)
        try:
            for session in sessions.values():
                await _requests(session, url, 200, 10)
            for rnd in range(rounds):
                order = list(sessions.items())
                for name, session in order if rnd % 2 == 0 else order[::-1]:
                    before = time.thread_time()
                    spent[name] += await _requests(session, url, per_round, 10)
                    cpu[name] += time.thread_time() - before
                    await asyncio.sleep(0.05)
        finally:
            for session in sessions.values():
                await session.close()
        result[mode] = {k: rounds * per_round / v for k, v in spent.items()}
        result[f"{mode}, CPU"] = {k: v / (rounds * per_round) * 1e6 for k, v in cpu.items()}
    return result


def render_aiohttp(rps: dict[str, dict[str, float]]) -> str:
    """The aiohttp table: rates as x TCPConnector, CPU per request as TCPConnector / it (so
    above 1.00x is better in both)."""
    heads = [f"{m[:-5]}: client CPU us/req (TCPConnector / it)" if m.endswith(", CPU")
             else f"{m}: req/s (x TCPConnector)" for m in rps]
    lines = ["| connector | " + " | ".join(heads) + " |", "|---" * (len(rps) + 1) + "|"]
    for name in next(iter(rps.values())):
        cells = []
        for mode, r in rps.items():
            tcp = r["aiohttp TCPConnector"]
            if mode.endswith(", CPU"):
                cells.append(f"{r[name]:,.0f} ({tcp / r[name]:.2f}x)")
            else:
                cells.append(f"{r[name]:,.0f} ({r[name] / tcp:.2f}x)")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def _hold(client: str, port: int, count: int) -> tuple[int, int]:
    """Open ``count`` connections with ``client`` and keep them: (RSS KiB, traced bytes)
    grown, after 200 warm-up connections (imports, tables, caches) were opened and closed."""
    ctx = PairContext()

    def connect() -> Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
        if client == "asyncio":
            return asyncio.open_connection("127.0.0.1", port)
        return open_connection("127.0.0.1", port, context=ctx)

    for _ in range(200):
        (await connect())[1].transport.abort()
    await asyncio.sleep(0.1)
    gc.collect()
    rss = _rss_kib()
    tracemalloc.start()
    held = []
    for start in range(0, count, 500):
        held += await asyncio.gather(*(connect() for _ in range(min(500, count - start))))
    await asyncio.sleep(0.1)
    gc.collect()
    traced = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    grown = _rss_kib() - rss
    for _, writer in held:
        writer.transport.abort()
    return grown, traced


def memory(count: int) -> dict[str, tuple[int, int]]:
    """Client -> (RSS KiB, traced bytes) for ``count`` open connections, each client in a
    fresh process against a server that keeps every connection."""
    out: dict[str, tuple[int, int]] = {}
    for client in ("asyncio", "apr_async"):
        server = subprocess.Popen(
            [sys.executable, "-c", _HOLD_SERVER], stdout=subprocess.PIPE, text=True
        )
        try:
            assert server.stdout is not None
            port = server.stdout.readline().strip()
            child = subprocess.run(
                [sys.executable, __file__, "--memory-child", client, port, str(count)],
                capture_output=True,
                text=True,
                check=True,
            )
        finally:
            server.kill()
            server.wait()
        rss, traced = child.stdout.split()
        out[client] = (int(rss), int(traced))
    return out


def render_memory(mem: dict[str, tuple[int, int]], count: int) -> str:
    lines = [f"| {count:,} open connections | RSS growth MiB | tracemalloc MiB | x asyncio |"]
    lines.append("|---|---|---|---|")
    base = mem["asyncio"][1]
    for name, (rss, traced) in mem.items():
        lines.append(f"| {name} | {rss / 1024:.1f} | {traced / 2**20:.1f} | {traced / base:.2f}x |")
    return "\n".join(lines)


def render(rates: Table, cpu: Table) -> str:
    names = list(next(iter(rates.values())))
    cols = ["sequential" if c == 1 else f"{c} in flight" for c in rates]
    head = "| client | " + " | ".join(f"{c}: conn/s (x asyncio)" for c in cols)
    head += " | " + " | ".join(f"{c}: CPU us/conn (asyncio / it)" for c in cols)
    lines = [head + " |", "|---" * (2 * len(rates) + 1) + "|"]
    for name in names:
        cells = [f"{r[name]:,.0f} ({r[name] / r['asyncio']:.2f}x)" for r in rates.values()]
        cells += [f"{c[name]:.0f} ({c['asyncio'] / c[name]:.2f}x)" for c in cpu.values()]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rates: Table, cpu: Table, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    names = list(next(iter(rates.values())))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    width = 0.8 / len(names)
    panels = (
        (rates, False, "connection rate / asyncio's"),
        (cpu, True, "asyncio's CPU per connection / its"),
    )
    for ax, (table, inverse, label) in zip(axes, panels, strict=True):
        for i, name in enumerate(names):
            xs = [j + i * width for j in range(len(table))]
            ys = [
                t["asyncio"] / t[name] if inverse else t[name] / t["asyncio"]
                for t in table.values()
            ]
            ax.bar(xs, ys, width, label=name)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(table))])
        ax.set_xticklabels(["sequential" if c == 1 else f"{c} in flight" for c in table])
        ax.set_ylabel(f"{label} (same run)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--per-round", type=int, default=1500)
    parser.add_argument("--memory-child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--connections", type=int, default=10_000, help="for the memory table")
    parser.add_argument("--no-lab", action="store_true", help="skip the lab aiohttp table")
    args = parser.parse_args(argv)
    _raise_fd_limit(args.connections + 1024)
    if args.memory_child:
        client, port, count = args.memory_child
        print(*asyncio.run(_hold(client, int(port), int(count))))
        return 0
    if args.quick:
        args.rounds, args.per_round = 2, 500
    server = subprocess.Popen([sys.executable, "-c", _SERVER], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        if args.profile:
            print(asyncio.run(profile(port, 3000)))
            return 0
        rates, cpu = asyncio.run(measure(port, args.rounds, args.per_round))
    finally:
        server.kill()
        server.wait()
    http = subprocess.Popen([sys.executable, "-c", _HTTP_SERVER], stdout=subprocess.PIPE, text=True)
    try:
        assert http.stdout is not None
        http_port = int(http.stdout.readline())
        rps = asyncio.run(
            measure_aiohttp(f"http://127.0.0.1:{http_port}/", args.rounds, args.per_round)
        )
    finally:
        http.kill()
        http.wait()
    lab = None
    if not args.no_lab:
        import bench_throughput_lab  # here, not at the top: it imports this module

        lab = bench_throughput_lab.lab_table(args.rounds, args.per_round)
    mem = memory(args.connections)
    load = os.getloadavg()
    table = render(rates, cpu) + "\n\naiohttp on loopback, 10 requests in flight:\n\n"
    table += render_aiohttp(rps) + "\n\n" + (lab + "\n\n" if lab else "")
    table += render_memory(mem, args.connections)
    note = (
        f"\n\n{args.rounds} interleaved rounds of {args.per_round} connections per client; "
        f"load average at the end {load[0]:.1f} / {load[1]:.1f} on {os.cpu_count()} CPUs."
    )
    print(table + note)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_throughput.md").write_text(table + note + "\n")
    plot(rates, cpu, RESULTS / "bench_throughput.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
