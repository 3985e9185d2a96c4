"""Time to connect: apr_async vs asyncio vs aiohappyeyeballs, in lab scenarios (needs root).

    python benchmarks/bench_connect.py [--runs N] [--quick] [--no-lab]

Each sample is one fresh TCP connection by name (``dual.lab.test`` and friends, through the
lab DNS; answers cached by a warm-up connection, for every client alike), timed in the client
namespace from the call until the connection is usable. Clients:

* ``apr cold``: ``apr_async.open_connection`` with an empty context (no history) each time;
* ``apr warm``: one context that learnt from a probe round (emulated: each family's pairs
  tried once, all at once, the way probes see them) and from the previous connections;
* ``asyncio``: ``asyncio.open_connection`` (addresses in order, no Happy Eyeballs);
* ``asyncio HE``: the same with ``happy_eyeballs_delay=0.25``;
* ``aiohappyeyeballs``: ``aiohappyeyeballs.start_connection`` (250 ms).

The asyncio and aiohappyeyeballs clients get ``getaddrinfo`` answers from the same lab DNS,
IPv6 first (what glibc's RFC 6724 sort gives here) and the kernel's choice of source
address. A connection that takes more than ``CAP`` seconds counts as failed. Every median is
also given as a ratio to the best path's RTT (a plain connect on the best working pair).
A loopback section compares a numeric-host ``open_connection`` with asyncio's.

Prints a table, checks the floors of issue 5, saves ``results/bench_connect.png`` and
``results/bench_connect.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohappyeyeballs

from apr_async.connect import connect_socket, open_connection
from apr_async.lab import Lab, Scenario, ZoneEntry, lab_unavailable_reason
from apr_async.pairs import PairContext
from apr_async.resolver import Resolver

RESULTS = Path(__file__).resolve().parent / "results"
CAP = 3.0  # seconds: slower counts as failed (plain asyncio waits ~2 min for a blackhole)
FIRST3DEAD = "first3dead.lab.test"
CLIENTS = ("apr cold", "apr warm", "asyncio", "asyncio HE", "aiohappyeyeballs")


def scenarios(lab: Lab) -> dict[str, tuple[Scenario, str]]:
    """Scenario name -> (lab scenario, host name to connect to)."""
    return {
        "healthy": (Scenario.healthy(), lab.names.dual),
        "IPv6 blackholed": (Scenario.v6_blackholed(), lab.names.dual),
        "IPv6 50 ms slower": (Scenario.v6_slower(0.05), lab.names.dual),
        "ULA source unrouted": (Scenario.ula_source_trap(), lab.names.dual),
        "first 3 AAAA dead": (Scenario.healthy(), FIRST3DEAD),
    }


# -- the client side (inside the client namespace) --------------------------------------------


def _install_getaddrinfo(resolver: Resolver) -> None:
    """Make this loop's getaddrinfo answer from the lab DNS (IPv6 first, like glibc here)."""
    loop = asyncio.get_running_loop()

    async def getaddrinfo(
        host: Any, port: Any, *, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0
    ) -> list[Any]:
        addresses = await resolver.resolve(host, family)
        return [
            (
                socket.AF_INET6 if ip.version == 6 else socket.AF_INET,
                socket.SOCK_STREAM,
                socket.IPPROTO_TCP,
                "",
                (str(ip), int(port), 0, 0) if ip.version == 6 else (str(ip), int(port)),
            )
            for ip, _zone in addresses
        ]

    loop.getaddrinfo = getaddrinfo  # type: ignore[method-assign]


async def _probe_round(host: str, port: int, ctx: PairContext) -> None:
    """What a probe round teaches: every pair of each family tried once, all at once."""
    for family in (socket.AF_INET6, socket.AF_INET):
        try:
            sock = await connect_socket(
                host, port, family=family, happy_eyeballs_delay=0, timeout=0.5, context=ctx
            )
        except OSError:
            continue
        sock.close()
    await asyncio.sleep(0)


async def client_samples(
    kind: str, host: str, port: int, dns: list[str], runs: int
) -> dict[str, Any]:
    """``runs`` timed connects (after an untimed one that warms the DNS cache)."""
    resolver = Resolver(dns, hosts_path=None)
    _install_getaddrinfo(resolver)
    shared = PairContext(resolver=resolver)
    samples: list[float] = []
    failures = 0

    async def connect_once() -> Callable[[], Awaitable[None]]:
        if kind.startswith("apr"):
            ctx = shared if kind == "apr warm" else PairContext(resolver=resolver)
            _, writer = await open_connection(host, port, context=ctx)
        elif kind == "asyncio":
            _, writer = await asyncio.open_connection(host, port)
        elif kind == "asyncio HE":
            _, writer = await asyncio.open_connection(host, port, happy_eyeballs_delay=0.25)
        else:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port)
            sock = await aiohappyeyeballs.start_connection(infos, happy_eyeballs_delay=0.25)

            async def close_sock() -> None:
                sock.close()

            return close_sock

        async def close_writer() -> None:
            writer.close()
            await writer.wait_closed()

        return close_writer

    try:
        if kind == "apr warm":
            await resolver.resolve(host)
            await _probe_round(host, port, shared)
        for n in range(runs + 1):
            start = time.perf_counter()
            try:
                async with asyncio.timeout(CAP):
                    close = await connect_once()
            except (OSError, TimeoutError):
                failures += n > 0
                if failures >= 3 and not samples:
                    break  # hopeless (a plain client on a blackhole): do not wait CAP each time
                continue
            elapsed = time.perf_counter() - start
            await close()
            if n:
                samples.append(elapsed)
            await asyncio.sleep(0.002)  # let the server side settle between samples
    finally:
        await resolver.close()
    return {"samples": samples, "failures": failures}


async def plain_rtt(address: str, port: int, source: str | None, runs: int) -> float | None:
    """Median plain connect time to ``address`` from ``source`` (None: it does not work)."""
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    times = []
    for _ in range(runs):
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            if source:
                sock.bind((source, 0))
            start = time.perf_counter()
            await asyncio.wait_for(loop.sock_connect(sock, (address, port)), 1.0)
            times.append(time.perf_counter() - start)
        except (OSError, TimeoutError):
            return None
        finally:
            sock.close()
    return statistics.median(times)


# -- the lab side ---------------------------------------------------------------------------------


async def _extra_dead(lab: Lab, address: str, on: bool) -> None:
    """Drop everything towards ``address`` at the router (a third dead AAAA)."""
    if on:
        rules = (
            "table inet hebench {\n chain fw {\n  type filter hook forward priority -5;\n"
            f"  ip6 daddr {address} drop\n }}\n}}\n"
        )
        await lab.exec("router", "nft", "-f", "-", input=rules, check=True)
    else:
        await lab.exec("router", "nft", "delete", "table", "inet", "hebench")


async def measure_lab(runs: int) -> tuple[list[tuple[str, str, dict[str, Any]]], dict[str, float]]:
    rows: list[tuple[str, str, dict[str, Any]]] = []
    best: dict[str, float] = {}
    async with Lab() as lab:
        s = lab.server
        third = s.v6[2]
        lab.dns.update(FIRST3DEAD, ZoneEntry(a=(s.v4[0],), aaaa=(*s.dead_v6, third, s.v6[0])))
        echo = await lab.start_echo_server()
        port = echo.port
        await _extra_dead(lab, third, True)
        try:
            for name, (scenario, host) in scenarios(lab).items():
                await lab.set_scenario(scenario)
                candidates = [(s.v6[0], lab.client.gua), (s.v4[0], None)]
                rtts = [
                    await lab.run_in("client", plain_rtt, a, port, src, 15) for a, src in candidates
                ]
                best[name] = min(r for r in rtts if r is not None)
                for kind in CLIENTS:
                    result = await lab.run_in(
                        "client", client_samples, kind, host, port, lab.dns_servers, runs
                    )
                    rows.append((name, kind, result))
                    print(f"  {name:<20} {kind:<16} done", file=sys.stderr, flush=True)
        finally:
            await _extra_dead(lab, third, False)
            await lab.stop_echo_server(echo)
    return rows, best


async def measure_loopback(samples: int) -> dict[str, float]:
    """Median time to a usable connection for a numeric loopback host."""
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    ctx = PairContext()
    clients: dict[str, Callable[[], Awaitable[Any]]] = {
        "asyncio": lambda: asyncio.open_connection("127.0.0.1", port),
        "apr_async": lambda: open_connection("127.0.0.1", port, context=ctx),
    }
    times: dict[str, list[float]] = {k: [] for k in clients}
    try:
        for rnd in range(11):
            for name, fn in clients.items():
                for _ in range(samples // 10):
                    start = time.perf_counter()
                    _, writer = await fn()
                    elapsed = time.perf_counter() - start
                    writer.close()
                    if rnd:
                        times[name].append(elapsed)
                await asyncio.sleep(0.01)
    finally:
        server.close()
        await server.wait_closed()
    return {k: statistics.median(v) for k, v in times.items()}


# -- report ---------------------------------------------------------------------------------------


def _median_ms(result: dict[str, Any]) -> float | None:
    samples = result["samples"]
    return statistics.median(samples) * 1000 if samples else None


def report(
    rows: list[tuple[str, str, dict[str, Any]]],
    best: dict[str, float],
    loopback: dict[str, float] | None,
    runs: int,
) -> tuple[str, bool]:
    lines = [
        f"Time to connect, median of {runs} runs (ms), and as a ratio to the best path's RTT",
        "",
    ]
    header = "| scenario | best RTT | " + " | ".join(CLIENTS) + " |"
    lines += [header, "|" + "---|" * (len(CLIENTS) + 2)]
    table: dict[tuple[str, str], float | None] = {}
    for name, kind, result in rows:
        table[(name, kind)] = _median_ms(result)
    for name, rtt in best.items():
        cells = []
        for kind in CLIENTS:
            value = table.get((name, kind))
            failed = next(r["failures"] for n, k, r in rows if n == name and k == kind)
            if value is None:
                cells.append(f"> {CAP * 1000:.0f} (all failed)")
                continue
            ratio = value / (rtt * 1000)
            extra = f", {failed} failed" if failed else ""
            cells.append(f"{value:.1f} ({ratio:.0f}x{extra})")
        lines.append(f"| {name} | {rtt * 1000:.2f} | " + " | ".join(cells) + " |")
    ok = True
    checks: list[tuple[str, bool]] = []
    for name in (
        "IPv6 blackholed",
        "IPv6 50 ms slower",
        "ULA source unrouted",
        "first 3 AAAA dead",
    ):
        if name in best:
            warm = table.get((name, "apr warm"))
            limit = best[name] * 1000 + 5
            shown = "-" if warm is None else f"{warm:.2f}"
            checks.append(
                (
                    f"apr warm, {name}: {shown} ms <= best RTT + 5 ms = {limit:.2f} ms",
                    warm is not None and warm <= limit,
                )
            )
    if "IPv6 blackholed" in best:
        cold = table.get(("IPv6 blackholed", "apr cold"))
        shown = "-" if cold is None else f"{cold:.1f}"
        checks.append(
            (f"apr cold, IPv6 blackholed: {shown} ms <= 260 ms", cold is not None and cold <= 260)
        )
    if loopback is not None:
        ratio = loopback["apr_async"] / loopback["asyncio"]
        lines += [
            "",
            "Loopback, numeric host (median microseconds):",
            "",
            "| asyncio.open_connection | apr_async.open_connection | ratio |",
            "|---|---|---|",
            f"| {loopback['asyncio'] * 1e6:.1f} | {loopback['apr_async'] * 1e6:.1f} |"
            f" {ratio:.2f}x |",
        ]
        checks.append((f"loopback numeric host overhead {ratio:.2f}x <= 1.3x", ratio <= 1.3))
    lines += ["", "Floors (issue 5):", ""]
    for text, passed in checks:
        ok = ok and passed
        lines.append(f"- {'PASS' if passed else 'FAIL'}: {text}")
    return "\n".join(lines), ok


def plot(rows: list[tuple[str, str, dict[str, Any]]], best: dict[str, float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(best)
    width = 0.8 / len(CLIENTS)
    fig, ax = plt.subplots(figsize=(11, 5))
    for i, kind in enumerate(CLIENTS):
        values = []
        for name in names:
            result = next(r for n, k, r in rows if n == name and k == kind)
            median = _median_ms(result)
            values.append(median if median is not None else CAP * 1000)
        xs = [j + i * width for j in range(len(names))]
        ax.bar(xs, values, width, label=kind)
    ax.scatter(
        [j + 0.4 - width / 2 for j in range(len(names))],
        [best[n] * 1000 for n in names],
        color="black",
        marker="_",
        s=400,
        label="best path RTT",
        zorder=3,
    )
    ax.set_yscale("log")
    ax.set_ylabel("time to connect, median (ms, log scale)")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(names))], names)
    ax.set_title("Time to connect in lab scenarios (capped failures drawn at the cap)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=21, help="timed connects per cell (>= 20)")
    parser.add_argument("--quick", action="store_true", help="5 runs per cell")
    parser.add_argument("--no-lab", action="store_true", help="loopback section only")
    args = parser.parse_args()
    runs = 5 if args.quick else args.runs
    loopback = asyncio.run(measure_loopback(500 if args.quick else 3000))
    rows: list[tuple[str, str, dict[str, Any]]] = []
    best: dict[str, float] = {}
    reason = lab_unavailable_reason()
    if args.no_lab or reason is not None:
        if reason is not None:
            print(f"lab part skipped: network lab unavailable ({reason})")
    else:
        rows, best = asyncio.run(measure_lab(runs))
    text, ok = report(rows, best, loopback, runs)
    print("\n" + text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    if rows:
        plot(rows, best, RESULTS / "bench_connect.png")
        (RESULTS / "bench_connect.md").write_text(text + "\n")
        print(f"\nsaved {RESULTS / 'bench_connect.png'} and {RESULTS / 'bench_connect.md'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
