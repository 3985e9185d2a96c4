"""LatencyTable lookups stay flat as the table grows (O(prefix length), not O(entries)).

Fills tables of 1k, 10k and 100k (source, destination) entries from one source (the worst
case for the per-source trie), then times:

* ``exact``: a measured destination (dict hit);
* ``inherited``: an unmeasured destination sharing a /48 with measured ones (trie walk);
* ``none``: an unmeasured destination sharing less than /32 (walk, then nothing);
* ``record``: one more sample for a measured destination (EWMA + path aggregates).

The trie walk takes one step per node on the path, so ``inherited`` grows with the depth of
the trie (about log2 of the entries under the source for scattered destinations) and can never
exceed one step per bit of the address: O(prefix length), independent of the entry count
beyond that. A linear scan would be 100 times slower at 100k than at 1k.

Usage: ``python benchmarks/bench_latency_table.py [--quick]``.
"""

from __future__ import annotations

import argparse
import ipaddress
import random
import statistics
import time
import tracemalloc

from apr_async.latency import LatencyTable

SOURCE = ipaddress.IPv6Address("2001:db8:1::10")
BASE = 0x20010DB8 << 96  # 2001:db8::/32


def random_destination(rng: random.Random) -> ipaddress.IPv6Address:
    # 256 /48s of 2001:db8::/32, random /64 and interface id: clustered like real servers.
    return ipaddress.IPv6Address(
        BASE | (rng.randrange(256) << 80) | (rng.getrandbits(16) << 64) | rng.getrandbits(64)
    )


def fill_table(table: LatencyTable, destinations: list[ipaddress.IPv6Address]) -> None:
    for i, dst in enumerate(destinations):
        table.record(SOURCE, dst, 0.001 + (i % 97) / 1000, now=float(i))


def per_call_ns(func: object, args: list[tuple[object, ...]], repeat: int) -> float:
    """Median over *repeat* rounds of the mean time per call, in nanoseconds."""
    call = func  # type: ignore[assignment]
    rounds = []
    for _ in range(repeat):
        start = time.perf_counter_ns()
        for a in args:
            call(*a)  # type: ignore[operator]
        rounds.append((time.perf_counter_ns() - start) / len(args))
    return statistics.median(rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, no memory figure")
    options = parser.parse_args()
    repeat = 3 if options.quick else 9
    queries = 2_000
    rng = random.Random(6724)

    print(
        f"{'entries':>8} {'exact':>9} {'inherited':>10} {'none':>9} {'record':>9} "
        f"{'fill s':>7} {'memory':>8}"
    )
    for size in (1_000, 10_000, 100_000):
        measured = [random_destination(rng) for _ in range(size)]
        table = LatencyTable(max_entries=size)
        start = time.perf_counter()
        fill_table(table, measured)
        fill = time.perf_counter() - start
        assert len(table) == size
        memory = "-"
        if not options.quick:  # tracing slows the fill down a lot, so it is a second fill
            tracemalloc.start()
            fill_table(LatencyTable(max_entries=size), measured)
            memory = f"{tracemalloc.get_traced_memory()[0] / 2**20:.1f}MB"
            tracemalloc.stop()

        hits = [(SOURCE, rng.choice(measured)) for _ in range(queries)]
        near = [
            (SOURCE, ipaddress.IPv6Address((int(d) & ~((1 << 80) - 1)) | rng.getrandbits(64)))
            for _, d in hits
        ]
        far = [(SOURCE, ipaddress.IPv6Address(0x20010DB9 << 96 | rng.getrandbits(96)))] * queries
        for _, d in near[:50]:
            estimate = table.estimate(SOURCE, d)
            assert estimate is not None and estimate.inherited and estimate.prefix_len >= 48
        assert table.estimate(*far[0]) is None
        again = [(SOURCE, d, 0.002, float(size)) for _, d in hits]

        exact = per_call_ns(table.estimate, hits, repeat)
        inherited = per_call_ns(table.estimate, near, repeat)
        none = per_call_ns(table.estimate, far, repeat)
        record = per_call_ns(table.record, again, repeat)  # type: ignore[arg-type]
        print(
            f"{size:>8} {exact / 1000:>7.2f}us {inherited / 1000:>8.2f}us {none / 1000:>7.2f}us "
            f"{record / 1000:>7.2f}us {fill:>7.2f} {memory:>8}"
        )


if __name__ == "__main__":
    main()
