"""System calls per connection and per aiohttp request (issue 14; the lab part needs root).

    python benchmarks/bench_syscalls.py [--count 2000] [--no-lab]

Wall-clock and CPU-time ratios on this shared VM move by +-10-20 % between runs, and
``bench_instructions.py`` counts user-space instructions only; this counts what the kernel is
asked to do. Each client runs in its own process under ``strace -c -f`` twice, with
``--count`` and with 200 operations after the same warm-up, and the difference is divided
by ``count - 200``, so start-up and warm-up cancel out (the counts are exact, not sampled).

* loopback, one connection at a time to an accept-and-close server (``bench_throughput``'s):
  ``asyncio.open_connection("127.0.0.1", port)`` and ``apr_async.open_connection`` on the
  same numeric host;
* in the lab (client and server namespaces, the server's IPv4 address, two ranked pairs: the
  lead-pair path), aiohttp GETs with a new connection each, 10 in flight: ``TCPConnector``
  and ``AprConnector``.

Prints the table and saves ``results/bench_syscalls.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_throughput import _HTTP_SERVER, _SERVER, RESULTS, _requests

from apr_async.lab import Lab, Scenario, lab_unavailable_reason
from apr_async.tools import resolve_tool

BASE = 200
SCRIPT = str(Path(__file__).resolve())


async def child(kind: str, target: str, count: int) -> None:
    """One client process: 100 warm-up operations, then ``count``."""
    if kind in ("asyncio", "apr_async"):
        from apr_async import open_connection
        from apr_async.resolve.pairs import PairContext

        ctx = PairContext()
        port = int(target)

        async def once() -> None:
            if kind == "asyncio":
                _r, writer = await asyncio.open_connection("127.0.0.1", port)
            else:
                _r, writer = await open_connection("127.0.0.1", port, context=ctx)
            writer.transport.abort()

        for _ in range(100 + count):
            await once()
        return
    import aiohttp

    from apr_async.aiohttp import AprConnector
    from apr_async.resolve.pairs import PairContext

    connector = (aiohttp.TCPConnector(force_close=True, limit=0) if kind == "TCPConnector"
                 else AprConnector(context=PairContext(), force_close=True, limit=0))
    async with aiohttp.ClientSession(connector=connector) as session:
        await _requests(session, target, 100, 10)
        await _requests(session, target, count, 10)


def parse(path: Path) -> dict[str, int]:
    """``strace -c`` summary -> calls per system call name."""
    calls = {}
    for line in path.read_text().splitlines():
        cols = line.split()
        if len(cols) >= 5 and cols[0][0].isdigit() and cols[-1] != "total":
            calls[cols[-1]] = int(cols[3])
    return calls


async def per_operation(argv_prefix: list[str], kind: str, target: str,
                        count: int) -> dict[str, float]:
    """System calls per operation of ``kind``: ``count`` minus ``BASE`` operations."""
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (BASE, count):
            out = Path(tmp) / f"{n}.txt"
            proc = await asyncio.create_subprocess_exec(
                *argv_prefix, resolve_tool("strace"), "-c", "-f", "-o", str(out),
                sys.executable, SCRIPT, "--child", kind, target, str(n))
            if await proc.wait() != 0:
                raise RuntimeError(f"{kind} client failed")
            runs.append(parse(out))
    small, big = runs
    return {k: (big.get(k, 0) - small.get(k, 0)) / (count - BASE) for k in {*small, *big}}


def render(title: str, rows: dict[str, dict[str, float]]) -> str:
    names = sorted({k for r in rows.values() for k, v in r.items() if abs(v) >= 0.05})
    base = next(iter(rows.values()))
    lines = [f"{title}\n", "| client | total (x first) | " + " | ".join(names) + " |",
             "|---" * (len(names) + 2) + "|"]
    first = sum(base.values())
    for client, r in rows.items():
        total = sum(r.values())
        cells = " | ".join(f"{r.get(k, 0.0):.2f}" for k in names)
        lines.append(f"| {client} | {total:.2f} ({total / first:.2f}x) | {cells} |")
    return "\n".join(lines)


async def measure_with(server: asyncio.subprocess.Process, prefix: list[str],
                       kinds: tuple[str, str], target: Callable[[bytes], str],
                       count: int) -> dict[str, dict[str, float]]:
    """Each client kind's calls per operation against ``server`` (its first output line,
    the port, made into the clients' target by ``target``); the server is killed after."""
    try:
        assert server.stdout is not None
        where = target(await server.stdout.readline())
        return {kind: await per_operation(prefix, kind, where, count) for kind in kinds}
    finally:
        server.kill()
        await server.wait()


async def loopback(count: int) -> str:
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _SERVER, stdout=subprocess.PIPE)
    rows = await measure_with(server, [], ("asyncio", "apr_async"),
                              lambda line: line.decode().strip(), count)
    return render(f"Loopback, one connection at a time, system calls per connection ({count} - "
                  f"{BASE} connections):", rows)


async def lab_aiohttp(count: int) -> str:
    async with Lab() as lab:
        await lab.set_scenario(Scenario.healthy())
        server = await lab.popen(
            "server", sys.executable, "-c", _HTTP_SERVER, "0.0.0.0", stdout=subprocess.PIPE)
        prefix = [resolve_tool("ip"), "netns", "exec", lab.netns("client")]
        host = lab.topology.server.v4[0]
        rows = await measure_with(server, prefix, ("TCPConnector", "AprConnector"),
                                  lambda line: f"http://{host}:{int(line)}/", count)
    return render(f"aiohttp in the lab, a new connection per request, 10 in flight, system "
                  f"calls per request ({count} - {BASE} requests):", rows)


async def main(args: argparse.Namespace) -> None:
    tables = [await loopback(args.count)]
    reason = None if args.no_lab else lab_unavailable_reason()
    if args.no_lab or reason:
        print(f"bench_syscalls: lab part skipped{', ' + reason if reason else ''}",
              file=sys.stderr)
    else:
        tables.append(await lab_aiohttp(args.count))
    text = "\n\n".join(tables)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_syscalls.md").write_text(text + "\n")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        asyncio.run(child(sys.argv[2], sys.argv[3], int(sys.argv[4])))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--no-lab", action="store_true")
    asyncio.run(main(parser.parse_args()))
