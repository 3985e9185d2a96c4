"""aiohttp requests per second between the lab's client and server (issue 14; needs root).

    python benchmarks/bench_throughput_lab.py [--quick] [--rounds N] [--per-round N]

The loopback comparison of ``bench_throughput.py`` (TCPConnector vs AprConnector, a new
connection per request and keep-alive, 10 requests in flight, interleaved rounds) run over the
lab's healthy path instead: the aiohttp server is a separate process in the server namespace
(``lab.popen``), the clients run in the client namespace (``lab.run_in("client", ...)``), and
every packet crosses the lab router. The URL is the server's first IPv4 address, numeric, as
on loopback (no DNS for either connector). ``bench_throughput.py`` runs this too when the lab
is available; alone, it prints the table and saves ``results/bench_throughput_lab.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_throughput import _HTTP_SERVER, RESULTS, measure_aiohttp, render_aiohttp

from apr_async.lab import Lab, Scenario, lab_unavailable_reason

Rates = dict[str, dict[str, float]]


async def measure_lab(rounds: int, per_round: int) -> tuple[Rates, str]:
    """Mode -> connector -> requests per second over the lab, and the URL used."""
    async with Lab() as lab:
        await lab.set_scenario(Scenario.healthy())
        server = await lab.popen(
            "server", sys.executable, "-c", _HTTP_SERVER, "0.0.0.0", stdout=subprocess.PIPE
        )
        try:
            assert server.stdout is not None
            port = int(await server.stdout.readline())
            url = f"http://{lab.topology.server.v4[0]}:{port}/"
            rates = await lab.run_in("client", measure_aiohttp, url, rounds, per_round)
        finally:
            server.kill()
            await server.wait()
    return rates, url


def lab_table(rounds: int, per_round: int) -> str | None:
    """The rendered lab table, or ``None`` (with the reason on stderr) without a lab."""
    reason = lab_unavailable_reason()
    if reason is not None:
        print(f"bench_throughput_lab: skipped, {reason}", file=sys.stderr)
        return None
    rates, url = asyncio.run(measure_lab(rounds, per_round))
    load = os.getloadavg()
    return (
        f"aiohttp between the lab's client and server namespaces ({url}, healthy path), "
        f"10 requests in flight, {rounds} interleaved rounds of {per_round} requests; load "
        f"average at the end {load[0]:.1f}:\n\n" + render_aiohttp(rates)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--per-round", type=int, default=1500)
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.per_round = 2, 500
    table = lab_table(args.rounds, args.per_round)
    if table is None:
        return 0
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_throughput_lab.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
