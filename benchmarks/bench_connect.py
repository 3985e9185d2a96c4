"""Time to connect: apr_async vs asyncio vs aiohappyeyeballs, in lab scenarios (needs root).

    python benchmarks/bench_connect.py [--runs N] [--quick] [--no-lab]

Each sample is one fresh TCP connection by name (``dual.lab.test`` and friends, through the
lab DNS; answers cached by a warm-up connection, for every client alike), timed in the client
namespace from the call until the connection is usable. Every client runs in the same lab, in
the same scenario, one after the other, so the figures compare as ratios. Clients:

* ``apr cold``: ``apr_async.open_connection`` with an empty context (no history) each time;
* ``apr warm``: ``apr_async.open_connection`` fed by a ``ProbeService`` (lab DNS, the name
  being measured as its only probe target) after one real probe round (ICMP and TCP from
  every source to every address of the name), and by the previous connections;
* ``asyncio``: ``asyncio.open_connection`` (addresses in order, no Happy Eyeballs);
* ``asyncio HE``: the same with ``happy_eyeballs_delay=0.25``;
* ``aiohappyeyeballs``: ``aiohappyeyeballs.start_connection`` (250 ms).

The asyncio and aiohappyeyeballs clients get ``getaddrinfo`` answers from the same lab DNS in
the order glibc would give them on this client: RFC 6724 destination sorting with, for each
address, the source the kernel would use (a netlink route lookup, which sends nothing). That
order depends on the scenario: with the ULA source trap the kernel's IPv6 source is the ULA,
which loses to IPv4 on the label rule, so IPv4 comes first there. The table notes give the
order each scenario produced. A connection that takes more than ``CAP`` seconds counts as
failed. Every median is also given as a ratio to the best path's RTT (a plain connect on the
best working pair) and each peer as a ratio to apr_async. A loopback section compares a
numeric-host ``open_connection`` with asyncio's.

Prints the tables, checks the floors of issue 5, saves ``results/bench_connect.png`` and
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohappyeyeballs

from apr_async.config import Config
from apr_async.connect.api import open_connection
from apr_async.lab import Lab, Scenario, ZoneEntry, lab_unavailable_reason
from apr_async.probe.default import ProbeService
from apr_async.resolve.pairs import PairContext, system_order
from apr_async.resolve.resolver import Resolver

RESULTS = Path(__file__).resolve().parent / "results"
CAP = 3.0  # seconds: slower counts as failed (plain asyncio waits ~2 min for a blackhole)
FIRST3DEAD = "first3dead.lab.test"
CLIENTS = ("apr cold", "apr warm", "asyncio", "asyncio HE", "aiohappyeyeballs")
PEERS = ("asyncio", "asyncio HE", "aiohappyeyeballs")


@dataclass(frozen=True)
class Case:
    """One benchmark scenario: the lab scenario, the name to connect to, the server addresses
    the router drops meanwhile, and the IPv6 address that works."""

    scenario: Scenario
    host: str
    working_v6: str
    dead: tuple[str, ...] = ()


def cases(lab: Lab) -> dict[str, Case]:
    """Scenario name -> case.

    "first 3 AAAA dead": the name has four AAAA addresses and only the last one, in the order
    RFC 6724 gives them here (rule 9 puts the longest prefix shared with the source first),
    works: ``2001:db8:5::dead`` is never routed, ``v6[0]`` and ``v6[1]`` are dropped for the
    occasion, ``v6[2]`` (another /48) answers.
    """
    s = lab.server
    return {
        "healthy": Case(Scenario.healthy(), lab.names.dual, s.v6[0]),
        "IPv6 blackholed": Case(Scenario.v6_blackholed(), lab.names.dual, s.v6[0]),
        "IPv6 50 ms slower": Case(Scenario.v6_slower(0.05), lab.names.dual, s.v6[0]),
        "ULA source unrouted": Case(Scenario.ula_source_trap(), lab.names.dual, s.v6[0]),
        "first 3 AAAA dead": Case(Scenario.healthy(), FIRST3DEAD, s.v6[2], (s.v6[0], s.v6[1])),
    }


# -- the client side (inside the client namespace) --------------------------------------------


def _install_getaddrinfo(resolver: Resolver) -> None:
    """Make this loop's getaddrinfo answer from the lab DNS, in the system's order."""
    loop = asyncio.get_running_loop()

    async def getaddrinfo(
        host: Any, port: Any, *, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0
    ) -> list[Any]:
        addresses = system_order([ip for ip, _zone in await resolver.resolve(host, family)])
        return [
            (
                socket.AF_INET6 if ip.version == 6 else socket.AF_INET,
                socket.SOCK_STREAM,
                socket.IPPROTO_TCP,
                "",
                (str(ip), int(port), 0, 0) if ip.version == 6 else (str(ip), int(port)),
            )
            for ip in addresses
        ]

    loop.getaddrinfo = getaddrinfo  # type: ignore[method-assign]


async def system_answer(host: str, dns: list[str]) -> list[str]:
    """The addresses of ``host`` as the peers get them (the system's order)."""
    resolver = Resolver(dns, hosts_path=None)
    try:
        return [str(ip) for ip in system_order([ip for ip, _ in await resolver.resolve(host)])]
    finally:
        await resolver.close()


async def warm_service(host: str, port: int, dns: list[str]) -> ProbeService:
    """A probe service that has done one real round on every address of ``host``."""
    config = Config(
        targets=(f"{host}:{port}",),
        nameservers=tuple(dns),
        probe_interval=3600.0,  # one round: the measurement is not disturbed by probes
        probe_jitter=0.0,
        probe_timeout=0.5,
        probe_rate=500.0,
        max_concurrent_probes=64,
        probe_gateways=False,
        nat64_discovery=False,
        netwatch="off",
        dns_timeout=1.0,
    )
    service = ProbeService(config, install=False)
    await service.start()
    try:
        if not await service.wait_ready(10):
            raise RuntimeError("the probe service did not finish a round in 10 s")
    except BaseException:
        await service.aclose()
        raise
    return service


async def client_samples(
    kind: str, host: str, port: int, dns: list[str], runs: int
) -> dict[str, Any]:
    """``runs`` timed connects (after an untimed one that warms the DNS cache)."""
    resolver = Resolver(dns, hosts_path=None)
    _install_getaddrinfo(resolver)
    service = await warm_service(host, port, dns) if kind == "apr warm" else None
    samples: list[float] = []
    failures = 0

    async def connect_once() -> Callable[[], Awaitable[None]]:
        if kind == "apr warm":
            _, writer = await open_connection(host, port, service=service)
        elif kind == "apr cold":
            _, writer = await open_connection(host, port, context=PairContext(resolver=resolver))
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
        if service is not None:
            await service.aclose()
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


async def _drop_at_router(lab: Lab, addresses: tuple[str, ...]) -> None:
    """Make the router drop everything towards ``addresses`` (none: stop dropping)."""
    await lab.exec("router", "nft", "delete", "table", "inet", "hebench")
    if addresses:
        rules = (
            "table inet hebench {\n chain fw {\n  type filter hook forward priority -5;\n"
            f"  ip6 daddr {{ {', '.join(addresses)} }} drop\n }}\n}}\n"
        )
        await lab.exec("router", "nft", "-f", "-", input=rules, check=True)


Rows = list[tuple[str, str, dict[str, Any]]]


def _order_note(addresses: list[str], dead: tuple[str, ...]) -> str:
    first = "IPv6" if ":" in addresses[0] else "IPv4"
    shown = [f"{a} (dead)" if a in dead else a for a in addresses]
    return f"{first} first: {', '.join(shown)}"


async def measure_lab(runs: int) -> tuple[Rows, dict[str, float], dict[str, str]]:
    """Every client in every scenario; also the best path's RTT and the peers' input order."""
    rows: Rows = []
    best: dict[str, float] = {}
    orders: dict[str, str] = {}
    async with Lab() as lab:
        s = lab.server
        lab.dns.update(
            FIRST3DEAD, ZoneEntry(a=(s.v4[0],), aaaa=(s.dead_v6[0], s.v6[0], s.v6[1], s.v6[2]))
        )
        echo = await lab.start_echo_server()
        port = echo.port
        try:
            for name, case in cases(lab).items():
                await lab.set_scenario(case.scenario)
                await _drop_at_router(lab, case.dead)
                paths = [(case.working_v6, lab.client.gua), (s.v4[0], lab.client.v4)]
                rtts = [await lab.run_in("client", plain_rtt, a, port, src, 15) for a, src in paths]
                best[name] = min(r for r in rtts if r is not None)
                order = await lab.run_in("client", system_answer, case.host, lab.dns_servers)
                orders[name] = _order_note(order, case.dead + tuple(s.dead_v6))
                for kind in CLIENTS:
                    result = await lab.run_in(
                        "client", client_samples, kind, case.host, port, lab.dns_servers, runs
                    )
                    rows.append((name, kind, result))
                    print(f"  {name:<20} {kind:<16} done", file=sys.stderr, flush=True)
        finally:
            await _drop_at_router(lab, ())
            await lab.stop_echo_server(echo)
    return rows, best, orders


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


def _cell(value: float | None, failed: int, rtt_ms: float) -> str:
    if value is None:
        return f"> {CAP * 1000:.0f} (all failed)"
    extra = f", {failed} failed" if failed else ""
    return f"{value:.1f} ({value / rtt_ms:.0f}x{extra})"


def _ratio(peer: float | None, apr: float | None) -> str:
    if apr is None:
        return "-"
    if peer is None:
        return f"> {CAP * 1000 / apr:.0f}x"
    return f"{peer / apr:.1f}x"


def report(
    rows: Rows,
    best: dict[str, float],
    orders: dict[str, str],
    loopback: dict[str, float] | None,
    runs: int,
) -> tuple[str, bool]:
    """The tables (markdown) and whether every floor of issue 5 holds."""
    table = {(name, kind): _median_ms(result) for name, kind, result in rows}
    failures = {(name, kind): int(result["failures"]) for name, kind, result in rows}
    lines: list[str] = []
    if best:
        lines += [
            f"Time to connect, median of {runs} runs (ms), and as a ratio to the best path's"
            " RTT (all clients in the same run, same lab, one after the other)",
            "",
            "| scenario | best RTT | " + " | ".join(CLIENTS) + " |",
            "|" + "---|" * (len(CLIENTS) + 2),
        ]
        for name, rtt in best.items():
            cells = [_cell(table[(name, k)], failures[(name, k)], rtt * 1000) for k in CLIENTS]
            lines.append(f"| {name} | {rtt * 1000:.2f} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "Peers as a ratio to apr_async (median / median; above 1 means apr_async is faster):",
            "",
            "| scenario | "
            + " | ".join(f"{p} / apr warm" for p in PEERS)
            + " | "
            + " | ".join(f"{p} / apr cold" for p in PEERS)
            + " |",
            "|" + "---|" * (2 * len(PEERS) + 1),
        ]
        for name in best:
            warm, cold = table[(name, "apr warm")], table[(name, "apr cold")]
            cells = [_ratio(table[(name, p)], warm) for p in PEERS]
            cells += [_ratio(table[(name, p)], cold) for p in PEERS]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "Notes:",
            "",
            "- The peers' getaddrinfo answers come in the system's order: RFC 6724 destination"
            " sorting with the kernel's source for each address (as glibc does). Per scenario:",
        ]
        lines += [f"  - {name}: {order}" for name, order in orders.items()]
        lines += [
            "- apr warm: a ProbeService made one probe round (ICMP and TCP, every source to"
            " every address of the name) before the first sample, and every connection feeds it.",
            "- apr cold: a fresh, empty pair context for every connection.",
            f"- A connection slower than {CAP:g} s counts as failed; plain asyncio gives up on a"
            " cell after 3 failures with no success (a blackholed SYN waits about 2 minutes).",
        ]
    checks: list[tuple[str, bool]] = []
    for name in (
        "IPv6 blackholed",
        "IPv6 50 ms slower",
        "ULA source unrouted",
        "first 3 AAAA dead",
    ):
        if name in best:
            warm = table[(name, "apr warm")]
            limit = best[name] * 1000 + 5
            shown = "-" if warm is None else f"{warm:.2f}"
            checks.append(
                (
                    f"apr warm, {name}: {shown} ms <= best RTT + 5 ms = {limit:.2f} ms",
                    warm is not None and warm <= limit,
                )
            )
    if "IPv6 blackholed" in best:
        cold = table[("IPv6 blackholed", "apr cold")]
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
    ok = True
    for text, passed in checks:
        ok = ok and passed
        lines.append(f"- {'PASS' if passed else 'FAIL'}: {text}")
    return "\n".join(lines), ok


def plot(rows: Rows, best: dict[str, float], path: Path) -> None:
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


async def timer_calibration(samples: int = 10) -> float:
    """Median milliseconds an ``asyncio.sleep(0.25)`` really takes here.

    Every Happy Eyeballs client in the table waits a 250 ms Connection Attempt Delay on a
    blackholed path, so a machine whose timers fire late (a VM's deadline timer drifting from
    its TSC clock) adds the same lateness to all of them; printed so figures near the 260 ms
    floor can be read against it.
    """
    taken = []
    for _ in range(samples):
        start = time.perf_counter()
        await asyncio.sleep(0.25)
        taken.append((time.perf_counter() - start) * 1000)
    return statistics.median(taken)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=21, help="timed connects per cell (>= 20)")
    parser.add_argument("--quick", action="store_true", help="5 runs per cell")
    parser.add_argument("--no-lab", action="store_true", help="loopback section only")
    args = parser.parse_args()
    runs = 5 if args.quick else args.runs
    loopback = asyncio.run(measure_loopback(500 if args.quick else 3000))
    rows: Rows = []
    best: dict[str, float] = {}
    orders: dict[str, str] = {}
    reason = lab_unavailable_reason()
    if args.no_lab or reason is not None:
        if reason is not None:
            print(f"lab part skipped: network lab unavailable ({reason})")
    else:
        rows, best, orders = asyncio.run(measure_lab(runs))
    text, ok = report(rows, best, orders, loopback, runs)
    sleep_ms = asyncio.run(timer_calibration())
    text += (f"\n\nTimer calibration on this machine: asyncio.sleep(0.250) took {sleep_ms:.1f} ms"
             " (median of 10); every client's 250 ms fallback pays the same lateness.")
    print("\n" + text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    if rows:
        plot(rows, best, RESULTS / "bench_connect.png")
        (RESULTS / "bench_connect.md").write_text(text + "\n")
        print(f"\nsaved {RESULTS / 'bench_connect.png'} and {RESULTS / 'bench_connect.md'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
