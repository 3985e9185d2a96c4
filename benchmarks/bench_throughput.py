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

Prints the table and saves ``results/bench_throughput.md`` and ``results/bench_throughput.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

# Never the system resolver, never a probe outside the machine (as the test suite does).
os.environ.setdefault("APR_ASYNC_NAMESERVERS", "127.0.0.1:9")
os.environ.setdefault("APR_ASYNC_AUTOSTART", "0")
os.environ.setdefault("APR_ASYNC_TARGETS", "none")
os.environ.setdefault("APR_ASYNC_PROBE_GATEWAYS", "0")

import aiohappyeyeballs  # noqa: E402

from apr_async.connect.api import open_connection  # noqa: E402
from apr_async.lab import ZoneEntry  # noqa: E402
from apr_async.lab.dnsserver import DNSServer  # noqa: E402
from apr_async.resolve.pairs import PairContext  # noqa: E402
from apr_async.resolve.resolver import Resolver  # noqa: E402

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

Connect = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


def _raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))


async def _burst(connect: Connect, count: int, concurrency: int) -> float:
    """Seconds to open (and close) ``count`` connections with ``concurrency`` in flight."""

    async def worker(n: int) -> None:
        for _ in range(n):
            _, writer = await connect()
            writer.transport.abort()  # close now: no FIN handshake to wait for

    per = count // concurrency
    start = time.perf_counter()
    if concurrency == 1:
        await worker(count)
    else:
        await asyncio.gather(*(worker(per) for _ in range(concurrency)))
    return time.perf_counter() - start


async def _clients(port: int, dns: DNSServer) -> dict[str, Connect]:
    numeric = PairContext()
    resolver = Resolver(dns.nameservers, min_ttl=3600.0, hosts_path=None)
    named = PairContext(resolver=resolver)
    await resolver.resolve(NAME)  # warm the cache
    infos = [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("127.0.0.1", port))]

    async def aiohe() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        sock = await aiohappyeyeballs.start_connection(infos, happy_eyeballs_delay=0.25)
        return await asyncio.open_connection(sock=sock)

    return {
        "asyncio": lambda: asyncio.open_connection("127.0.0.1", port),
        "asyncio HE": lambda: asyncio.open_connection(
            "127.0.0.1", port, happy_eyeballs_delay=0.25
        ),
        "aiohappyeyeballs": aiohe,
        "apr numeric": lambda: open_connection("127.0.0.1", port, context=numeric),
        "apr cached name": lambda: open_connection(NAME, port, context=named),
    }


async def measure(port: int, rounds: int, per_round: int) -> dict[int, dict[str, float]]:
    """Concurrency -> client -> connections per second."""
    async with DNSServer({NAME: ZoneEntry(a=["127.0.0.1"])}, "127.0.0.1", 0) as dns:
        clients = await _clients(port, dns)
        rates: dict[int, dict[str, float]] = {}
        for concurrency in CONCURRENCY:
            spent = dict.fromkeys(clients, 0.0)
            for name, connect in clients.items():  # warm-up round, not counted
                await _burst(connect, min(per_round, 500), min(concurrency, 100))
            for _ in range(rounds):
                for name, connect in clients.items():
                    spent[name] += await _burst(connect, per_round, concurrency)
                    await asyncio.sleep(0.05)  # let the server drain its backlog
            rates[concurrency] = {k: rounds * per_round / v for k, v in spent.items()}
    return rates


async def profile(port: int, count: int) -> str:
    """cProfile top entries of ``count`` sequential connections for three clients."""
    out = io.StringIO()
    async with DNSServer({NAME: ZoneEntry(a=["127.0.0.1"])}, "127.0.0.1", 0) as dns:
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


def render(rates: dict[int, dict[str, float]]) -> str:
    names = list(next(iter(rates.values())))
    head = "| client | " + " | ".join(
        f"{'sequential' if c == 1 else f'{c} in flight'} conn/s (x asyncio)" for c in rates
    )
    lines = [head + " |", "|---" * (len(rates) + 1) + "|"]
    for name in names:
        cells = [f"{r[name]:,.0f} ({r[name] / r['asyncio']:.2f}x)" for r in rates.values()]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rates: dict[int, dict[str, float]], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    names = list(next(iter(rates.values())))
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        xs = [j + i * width for j in range(len(rates))]
        ax.bar(xs, [r[name] / r["asyncio"] for r in rates.values()], width, label=name)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(rates))])
    ax.set_xticklabels(["sequential" if c == 1 else f"{c} in flight" for c in rates])
    ax.set_ylabel("connection rate / asyncio (same run)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--per-round", type=int, default=1500)
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.per_round = 2, 500
    _raise_fd_limit(4096)
    server = subprocess.Popen(
        [sys.executable, "-c", _SERVER], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        if args.profile:
            print(asyncio.run(profile(port, 3000)))
            return 0
        rates = asyncio.run(measure(port, args.rounds, args.per_round))
    finally:
        server.kill()
        server.wait()
    load = os.getloadavg()
    table = render(rates)
    note = (
        f"\n\n{args.rounds} interleaved rounds of {args.per_round} connections per client; "
        f"load average at the end {load[0]:.1f} / {load[1]:.1f} on {os.cpu_count()} CPUs."
    )
    print(table + note)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_throughput.md").write_text(table + note + "\n")
    plot(rates, RESULTS / "bench_throughput.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())


_ = Any  # typing helper kept for readers extending the script
