"""PROXY protocol parse throughput: v1 and v2 headers, one-shot and byte-exact incremental.

    python benchmarks/bench_proxy_protocol.py [--quick]

Prints a table of headers parsed per second and microseconds per header. "one-shot" is
what a plain-TCP server does (it reads greedily and the header usually arrives whole);
"exact reads" is what a server with ``ssl=`` does, feeding the parser exactly
``bytes_needed()`` bytes at a time so that no byte of the ClientHello is consumed (each of
those reads is also an event-loop iteration there, not counted here).
"""

from __future__ import annotations

import argparse
import sys
import timeit
from collections.abc import Callable

from apr_async.server.proxy_header import TLVType
from apr_async.server.proxy_protocol import HeaderParser, parse_header
from apr_async.server.proxy_v1 import build_v1
from apr_async.server.proxy_v2 import build_v2

CASES: dict[str, bytes] = {
    "v1 TCP4": build_v1(("203.0.113.200", 51234), ("198.51.100.10", 443)),
    "v1 TCP6": build_v1(("2001:db8:85a3::8a2e:370:7334", 51234), ("2001:db8::10", 443)),
    "v1 UNKNOWN": build_v1(None, None),
    "v2 TCP4": build_v2(("203.0.113.200", 51234), ("198.51.100.10", 443)),
    "v2 TCP6": build_v2(("2001:db8:85a3::8a2e:370:7334", 51234), ("2001:db8::10", 443)),
    "v2 LOCAL": build_v2(None, None),
    "v2 TCP4 + TLVs": build_v2(
        ("203.0.113.200", 51234),
        ("198.51.100.10", 443),
        tlvs=[(TLVType.ALPN, b"h2"), (TLVType.AUTHORITY, b"www.example.com")],
    ),
    "v2 TCP4 + CRC32C": build_v2(("203.0.113.200", 51234), ("198.51.100.10", 443), crc=True),
}


def _exact_reads(raw: bytes) -> None:
    parser, pos = HeaderParser(), 0
    while (needed := parser.bytes_needed()) > 0:
        parser.feed(raw[pos : pos + needed])
        pos += needed


def _rate(fn: Callable[[], object], seconds: float) -> float:
    """Calls per second of ``fn``: best of three runs of about ``seconds`` each."""
    timer = timeit.Timer(fn)
    number, elapsed = timer.autorange()
    number = max(1, int(number * seconds / elapsed))
    return number / min(timer.repeat(repeat=3, number=number))


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter measurements")
    args = parser.parse_args(argv)
    seconds = 0.05 if args.quick else 0.5
    print(
        f"{'header':<18} {'bytes':>5} {'one-shot/s':>11} {'µs':>5} {'exact reads/s':>14} {'µs':>5}"
    )
    for name, raw in CASES.items():
        one = _rate(lambda raw=raw: parse_header(raw), seconds)  # type: ignore[misc]
        inc = _rate(lambda raw=raw: _exact_reads(raw), seconds)  # type: ignore[misc]
        row = f"{name:<18} {len(raw):>5} {one:>11,.0f} {1e6 / one:>5.1f}"
        print(f"{row} {inc:>14,.0f} {1e6 / inc:>5.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
