"""LatencyTable lookups stay flat as the table grows (O(prefix length), not O(entries)).

Fills tables of 1k, 10k and 100k (source, destination) entries from one source (the worst
case for the per-source trie), then times:

* ``exact``: a measured destination (dict hit);
* ``inherited``: an unmeasured destination sharing a /48 with measured ones (trie walk);
* ``none``: an unmeasured destination sharing less than /32 (walk, then nothing);
* ``record``: one more sample for a measured destination (EWMA + path aggregates);
* ``scan`` (the peer): the same inherited lookup done the obvious way, a scan of every
  destination measured from the source for the longest common prefix, as a plain dict of
  entries would need. Summing the estimate under that prefix would cost a second scan; it is
  left out, so the peer is flattered.

The trie walk takes one step per node on the path, so ``inherited`` grows with the depth of
the trie (about log2 of the entries under the source for scattered destinations) and can never
exceed one step per bit of the address: O(prefix length), independent of the entry count
beyond that; the scan grows with the entry count.

Usage: ``python benchmarks/bench_latency_table.py [--quick]``.
"""

from __future__ import annotations

import argparse
import ipaddress
import random
import statistics
import time
import tracemalloc
from collections.abc import Callable, Sequence

from apr_async.core.latency import LatencyTable

SOURCE = ipaddress.IPv6Address("2001:db8:1::10")
BASE = 0x20010DB8 << 96  # 2001:db8::/32
SIZES = (1_000, 10_000, 100_000)


def random_destination(rng: random.Random) -> ipaddress.IPv6Address:
    """A destination in one of 256 /48s of 2001:db8::/32: clustered like real servers."""
    return ipaddress.IPv6Address(
        BASE | (rng.randrange(256) << 80) | (rng.getrandbits(16) << 64) | rng.getrandbits(64)
    )


def fill_table(table: LatencyTable, destinations: list[ipaddress.IPv6Address]) -> None:
    """One sample per destination, from SOURCE."""
    for i, dst in enumerate(destinations):
        table.record(SOURCE, dst, 0.001 + (i % 97) / 1000, now=float(i))


def scan_longest_prefix(measured: Sequence[int], destination: ipaddress.IPv6Address) -> int:
    """The peer: longest prefix *destination* shares with any measured destination, by scan."""
    value = int(destination)
    return 128 - min((value ^ other).bit_length() for other in measured)


def per_call_ns(
    func: Callable[..., object], args: Sequence[tuple[object, ...]], repeat: int
) -> float:
    """Median over *repeat* rounds of the mean time per call, in nanoseconds."""
    rounds = []
    for _ in range(repeat):
        start = time.perf_counter_ns()
        for a in args:
            func(*a)
        rounds.append((time.perf_counter_ns() - start) / len(args))
    return statistics.median(rounds)


def _memory(measured: list[ipaddress.IPv6Address]) -> str:
    # Tracing slows the fill down a lot, so memory is measured on a second fill.
    tracemalloc.start()
    try:
        fill_table(LatencyTable(max_entries=len(measured)), measured)
        return f"{tracemalloc.get_traced_memory()[0] / 2**20:.1f} MB"
    finally:
        tracemalloc.stop()


def main() -> None:
    """Print one row per table size."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, no memory figure")
    options = parser.parse_args()
    repeat = 3 if options.quick else 9
    queries = 2_000
    rng = random.Random(6724)

    print("microseconds per call; scan = the same inherited lookup by linear scan (peer)\n")
    print(
        f"| {'entries':>8} | {'exact':>6} | {'inherited':>9} | {'none':>6} | {'record':>6} "
        f"| {'scan':>8} | {'fill s':>6} | {'memory':>8} |"
    )
    print(f"|{'-' * 10}|{'-' * 8}|{'-' * 11}|{'-' * 8}|{'-' * 8}|{'-' * 10}|{'-' * 8}|{'-' * 10}|")
    for size in SIZES:
        measured = [random_destination(rng) for _ in range(size)]
        table = LatencyTable(max_entries=size)
        start = time.perf_counter()
        fill_table(table, measured)
        fill = time.perf_counter() - start
        assert len(table) == size
        memory = "-" if options.quick else _memory(measured)

        hits = [(SOURCE, rng.choice(measured)) for _ in range(queries)]
        near = [
            (SOURCE, ipaddress.IPv6Address((int(d) & ~((1 << 80) - 1)) | rng.getrandbits(64)))
            for _, d in hits
        ]
        far = [(SOURCE, ipaddress.IPv6Address(0x20010DB9 << 96 | rng.getrandbits(96)))] * queries
        values = [int(d) for d in measured]
        for _, d in near[:50]:
            estimate = table.estimate(SOURCE, d)
            assert estimate is not None and estimate.inherited
            assert estimate.prefix_len == scan_longest_prefix(values, d) >= 48
        assert table.estimate(*far[0]) is None
        again = [(SOURCE, d, 0.002, float(size)) for _, d in hits]
        scans = [(values, d) for _, d in near[: max(5, 20_000 // size)]]

        exact = per_call_ns(table.estimate, hits, repeat)
        inherited = per_call_ns(table.estimate, near, repeat)
        none = per_call_ns(table.estimate, far, repeat)
        record = per_call_ns(table.record, again, repeat)
        scan = per_call_ns(scan_longest_prefix, scans, repeat)
        print(
            f"| {size:>8} | {exact / 1000:>6.2f} | {inherited / 1000:>9.2f} | {none / 1000:>6.2f} "
            f"| {record / 1000:>6.2f} | {scan / 1000:>8.1f} | {fill:>6.2f} | {memory:>8} |"
        )


if __name__ == "__main__":
    main()
