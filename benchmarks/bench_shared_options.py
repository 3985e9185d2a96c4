"""How a follower could see the leader's tables (issue 12): mmap vs JSON vs sqlite vs a socket.

    python benchmarks/bench_shared_options.py [--sizes 200,2000] [--quick]

Issue 12 asked for the shared state to be cheap on the hot path and for the options to be
measured. This script measures them in one run, on tables of realistic size (latency records
like the real ones: a few sources per family times many destinations), local files and Unix
sockets in a temporary directory only (no network, no name resolution, no probe service):

1. hot path, nothing changed (what every ``get_addr_pairs`` of a follower pays):
   (a) mmap: the real :meth:`TableReader.changed` (one 8-byte generation read);
   (b) JSON file: ``os.stat`` and compare inode + mtime (the cheapest honest JSON variant:
       the leader replaces the file by rename, so the inode changes on every publish);
   (c) JSON file: parse it on every call;
   (d) sqlite WAL: ``PRAGMA data_version`` on every call;
   (e) sqlite WAL: ``SELECT`` the rows of the name's destinations on every call;
   (f) ask the leader (another process) over a Unix datagram socket on every call, one
       request and one reply carrying the destinations' rows;
2. full refresh after a change: mmap copy + seqlock check + CRC + decode (the real
   :meth:`TableReader.read`), JSON load of the whole file, sqlite ``SELECT`` of all rows;
   and (2b) the same followed by what a follower then does with the rows: replace its own
   ``LatencyTable`` (the real :func:`apply_snapshot` / ``LatencyTable.restore``);
3. the leader's publish: mmap encode + write (the real :meth:`TableWriter.publish`), JSON
   dump to a temporary file + ``os.replace``, one sqlite transaction of N upserts.

Each figure is per call: a batch of back-to-back calls is timed and divided by its size; the
median and p90 are over the batches. Ratios are to the mmap row of the same group and size.
No fsync anywhere (sqlite runs ``synchronous=NORMAL``, which does not sync a WAL commit): the
comparison is of the representations, not of the disk. Writes the table (full runs only) to
``results/bench_shared_options.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import random
import socket
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Before importing apr_async: nothing here may start the default probe service, resolve a
# name or send a packet (the script uses only files and Unix sockets in a temporary dir).
os.environ.update(APR_ASYNC_AUTOSTART="0", APR_ASYNC_TARGETS="none",
                  APR_ASYNC_NAMESERVERS="127.0.0.1:9", APR_ASYNC_PROBE_GATEWAYS="0")

from apr_async.core.failures import FailureTable
from apr_async.core.latency import LatencyTable
from apr_async.probe import table_codec as codec
from apr_async.probe.shared import TableReader, TableWriter, apply_snapshot

RESULTS = Path(__file__).resolve().parent / "results"
SCRIPT = os.path.abspath(__file__)
#: sources per family: a host with two IPv4 and two IPv6 source addresses
SOURCES_V4 = ["192.0.2.10", "198.51.100.10"]
SOURCES_V6 = ["2001:db8::10", "2001:db8:1::10"]
#: a looked-up name resolves to one IPv4 and one IPv6 destination of the table
REQ = struct.Struct("<16s16s")  # the two destinations a follower asks the leader about
NETID = bytes(range(16))
BOOT = bytes(range(16, 32))


def make_rows(n: int, seed: int = 12) -> list[codec.LatencyRow]:
    """``n`` latency rows: each destination is paired with both sources of its family."""
    rnd = random.Random(seed)
    rows: list[codec.LatencyRow] = []
    now = time.monotonic()
    i = 0
    while len(rows) < n:
        v6 = i % 2 == 1
        dst: Any = (ipaddress.IPv6Address(f"2001:db8:ff::{i:x}") if v6
                    else ipaddress.IPv4Address(f"203.0.{(i // 250) % 256}.{i % 250 + 1}"))
        for src in (SOURCES_V6 if v6 else SOURCES_V4):
            if len(rows) == n:
                break
            rtt = rnd.uniform(0.001, 0.2)
            rows.append(codec.LatencyRow(ipaddress.ip_address(src), dst, rtt, rtt * 1.1,
                                         rtt * 0.9, rnd.randint(1, 500), rnd.getrandbits(16),
                                         rnd.randint(1, 16), now - rnd.uniform(0, 3000)))
        i += 1
    return rows


def json_doc(rows: list[codec.LatencyRow]) -> dict[str, Any]:
    """The rows as the library's own JSON cache writes a latency table (lists, strings)."""
    return {"kind": "apr_async.latency", "version": 1,
            "entries": [[str(r.source), str(r.destination), r.ewma, r.last, r.minimum,
                         r.samples, r.lost, r.fill, r.updated] for r in rows]}


def json_publish(path: Path, rows: list[codec.LatencyRow]) -> None:
    """Dump to a temporary file then rename: readers never see a half-written file."""
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as fh:
        json.dump(json_doc(rows), fh, separators=(",", ":"))
    os.replace(tmp, path)


SQL_SCHEMA = """CREATE TABLE IF NOT EXISTS latency (
    src TEXT NOT NULL, dst TEXT NOT NULL, ewma REAL, last REAL, min REAL,
    samples INTEGER, lost INTEGER, fill INTEGER, updated REAL, PRIMARY KEY (dst, src))"""
SQL_UPSERT = """INSERT INTO latency VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (dst, src) DO UPDATE SET ewma = excluded.ewma, last = excluded.last,
    min = excluded.min, samples = excluded.samples, lost = excluded.lost,
    fill = excluded.fill, updated = excluded.updated"""


def sql_connect(path: Path) -> sqlite3.Connection:
    # autocommit (isolation_level None): the reader sees new commits without ending a
    # transaction of its own, as a long-lived follower connection would need
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def sql_publish(conn: sqlite3.Connection, rows: list[codec.LatencyRow]) -> None:
    """One transaction of N upserts (the leader rewrites the whole table each round)."""
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(SQL_UPSERT, json_doc(rows)["entries"])
    conn.execute("COMMIT")


def leader_main(sock_path: str, n: int) -> None:
    """The socket option's leader, a separate process: answer each request with the rows of
    the two destinations asked about, in the codec's fixed-size record layout."""
    by_dst: dict[bytes, bytes] = {}
    for r in make_rows(n):
        fam = r.destination.version
        src = r.source.packed.ljust(16, b"\0")
        dst = r.destination.packed.ljust(16, b"\0")
        by_dst[dst] = by_dst.get(dst, b"") + codec.LATENCY.pack(
            fam, src, dst, r.ewma, r.last, r.minimum, r.samples, r.lost, r.fill, r.updated)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    print("ready", flush=True)
    while True:
        data, peer = sock.recvfrom(64)
        if data == b"quit":
            return
        a, b = REQ.unpack(data)
        sock.sendto(by_dst.get(a, b"") + by_dst.get(b, b""), peer)


class SocketClient:
    """A follower asking the leader per call: one datagram out, one reply in (blocking)."""

    def __init__(self, directory: Path, leader: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        # a datagram reply needs an address to go to: bind the follower's own socket
        self.sock.bind(str(directory / f"follower-{os.getpid()}.sock"))
        self.sock.settimeout(2.0)
        self.leader = leader

    def ask(self, request: bytes) -> list[tuple[Any, ...]]:
        self.sock.sendto(request, self.leader)
        # decoding the reply is part of the price: a follower without a copy needs the rows
        return list(codec.LATENCY.iter_unpack(self.sock.recv(65536)))


def timed(call: Callable[[], object], budget: float, batches: int) -> list[float]:
    """Per-call microseconds of ``batches`` batches, each sized to take ~budget/batches s."""
    start = time.perf_counter()
    call()  # warm-up, and a first estimate of the cost
    once = max(time.perf_counter() - start, 1e-7)
    per_batch = max(1, int(budget / batches / once))
    # a second estimate from a small batch: the first call often pays one-off costs
    start = time.perf_counter()
    for _ in range(min(per_batch, 50)):
        call()
    once = max((time.perf_counter() - start) / min(per_batch, 50), 1e-7)
    per_batch = max(1, int(budget / batches / once))
    out = []
    for _ in range(batches):
        start = time.perf_counter_ns()
        for _ in range(per_batch):
            call()
        out.append((time.perf_counter_ns() - start) / per_batch / 1000)
    return out


def p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10)[-1] if len(values) > 1 else values[0]


def measure(n: int, directory: Path, budget: float, batches: int) -> list[tuple[str, str,
                                                                              list[float]]]:
    """Every row for a table of ``n`` records: (group, option, per-call samples)."""
    rows = make_rows(n)
    want = (rows[0].destination, rows[-1].destination)  # one IPv4 and one IPv6 destination
    if want[0].version == want[1].version:
        want = (rows[0].destination, rows[2].destination)
    d = directory / str(n)
    d.mkdir(mode=0o700)
    out: list[tuple[str, str, list[float]]] = []

    # -- mmap: the real writer and reader (the table file is fixed-size, whatever n is)
    writer = TableWriter(d / "t.table")
    writer.publish((rows, []), netid=NETID, boot=BOOT)
    reader = TableReader(d / "t.table")
    snap = reader.read()
    assert snap is not None and len(snap.latency) == n
    # -- JSON
    jpath = d / "t.json"
    json_publish(jpath, rows)
    seen = os.stat(jpath)
    key = (seen.st_ino, seen.st_mtime_ns)

    def json_stat() -> bool:
        st = os.stat(jpath)
        return (st.st_ino, st.st_mtime_ns) != key

    def json_parse() -> object:
        with open(jpath, "rb") as fh:
            return json.load(fh)

    # -- sqlite WAL: a writer connection and a separate reader connection, as two processes
    wconn = sql_connect(d / "t.sqlite")
    wconn.execute(SQL_SCHEMA)
    sql_publish(wconn, rows)
    rconn = sql_connect(d / "t.sqlite")
    # -- what a follower does with a refresh: replace its own LatencyTable's contents
    latency, failures = LatencyTable(), FailureTable()

    def restore(entries: list[Any]) -> None:
        # the shared file holds monotonic "updated" times; the table's restore takes ages
        mono = time.monotonic()
        latency.restore({"kind": "apr_async.latency", "version": 1,
                         "entries": [[*e[:8], max(0.0, mono - e[8])] for e in entries]}, mono)

    def mmap_apply() -> None:
        got = reader.read()
        assert got is not None
        mono = time.monotonic()
        apply_snapshot(got, latency, failures, mono, mono, max_age=3600.0)

    def json_apply() -> None:
        restore(json_parse()["entries"])  # type: ignore[index]

    def sql_apply() -> None:
        restore(sql_all())  # type: ignore[arg-type]

    dsts = (str(want[0]), str(want[1]))

    def sql_version() -> object:
        return rconn.execute("PRAGMA data_version").fetchone()

    def sql_select() -> object:
        return rconn.execute("SELECT * FROM latency WHERE dst IN (?, ?)", dsts).fetchall()

    def sql_all() -> object:
        return rconn.execute("SELECT * FROM latency").fetchall()

    assert len(sql_select()) == 4, sql_select()  # type: ignore[arg-type]
    # -- socket: a leader process (this script again) holding the rows
    lpath = str(d / "leader.sock")
    leader = subprocess.Popen([sys.executable, SCRIPT, "--leader", lpath, str(n)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert leader.stdout is not None and leader.stdout.readline().strip() == "ready"
        client = SocketClient(d, lpath)
        request = REQ.pack(want[0].packed.ljust(16, b"\0"), want[1].packed.ljust(16, b"\0"))
        assert len(client.ask(request)) == 4

        hot = "1. hot path, nothing changed"
        out.append((hot, "(a) mmap: TableReader.changed()", timed(reader.changed, budget,
                                                                   batches)))
        assert not reader.changed()
        out.append((hot, "(b) JSON: os.stat inode+mtime", timed(json_stat, budget, batches)))
        out.append((hot, "(c) JSON: parse the file", timed(json_parse, budget, batches)))
        out.append((hot, "(d) sqlite WAL: PRAGMA data_version",
                    timed(sql_version, budget, batches)))
        out.append((hot, "(e) sqlite WAL: SELECT 2 destinations' rows",
                    timed(sql_select, budget, batches)))
        out.append((hot, "(f) Unix datagram round trip to the leader",
                    timed(lambda: client.ask(request), budget, batches)))
        client.sock.sendto(b"quit", lpath)
        client.sock.close()
        leader.wait(5)
    finally:
        if leader.poll() is None:
            leader.kill()
            leader.wait()

    ref = "2. full refresh (table changed)"
    out.append((ref, "mmap: TableReader.read() (copy, seqlock, CRC, decode)",
                timed(reader.read, budget, batches)))
    out.append((ref, "JSON: load the whole file", timed(json_parse, budget, batches)))
    out.append((ref, "sqlite WAL: SELECT all rows", timed(sql_all, budget, batches)))
    app = "2b. refresh + apply to the follower's LatencyTable"
    out.append((app, "mmap: read() + apply_snapshot()", timed(mmap_apply, budget, batches)))
    assert len(latency) == n, len(latency)
    out.append((app, "JSON: load + LatencyTable.restore()", timed(json_apply, budget,
                                                                  batches)))
    out.append((app, "sqlite WAL: SELECT all + LatencyTable.restore()",
                timed(sql_apply, budget, batches)))

    pub = "3. leader publish"
    out.append((pub, "mmap: TableWriter.publish() (encode + write)",
                timed(lambda: writer.publish((rows, []), netid=NETID, boot=BOOT), budget,
                      batches)))
    out.append((pub, "JSON: dump + os.replace", timed(lambda: json_publish(jpath, rows),
                                                      budget, batches)))
    out.append((pub, f"sqlite WAL: one transaction of {n} upserts",
                timed(lambda: sql_publish(wconn, rows), budget, batches)))
    reader.close()
    writer.close()
    rconn.close()
    wconn.close()
    return out


def render(results: dict[int, list[tuple[str, str, list[float]]]]) -> str:
    sizes = sorted(results)
    head = "| group | option |" + "".join(
        f" {n} rows median us | p90 | x mmap |" for n in sizes)
    lines = [head, "|---|---|" + "---|---|---|" * len(sizes)]
    first = results[sizes[0]]
    for i, (group, option, _) in enumerate(first):
        cells = []
        for n in sizes:
            g, _, samples = results[n][i]
            mmap_row = next(s for gg, o, s in results[n] if gg == g and o.startswith(
                ("(a)", "mmap")))
            med = statistics.median(samples)
            cells.append(f" {med:.2f} | {p90(samples):.2f} | "
                         f"{med / statistics.median(mmap_row):.1f}x |")
        lines.append(f"| {group} | {option.replace(f' of {sizes[0]} ', ' of N ')} |"
                     + "".join(cells))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="200,2000", help="latency records per table")
    parser.add_argument("--quick", action="store_true", help="a < 10 s run (not saved)")
    parser.add_argument("--leader", nargs=2, metavar=("SOCKET", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.leader:
        leader_main(args.leader[0], int(args.leader[1]))
        return 0
    sizes = sorted({int(s) for s in args.sizes.split(",")})
    if max(sizes) > codec.MAX_LATENCY:
        parser.error(f"the shared table holds at most {codec.MAX_LATENCY} latency records")
    # 15 rows per size: bounded to ~4 s per size full, ~0.6 s quick (plus set-up)
    budget, batches = (0.05, 10) if args.quick else (0.3, 25)
    load_before = os.getloadavg()
    stamp = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    started = time.perf_counter()
    results: dict[int, list[tuple[str, str, list[float]]]] = {}
    with tempfile.TemporaryDirectory(prefix="apr-shared-options-") as tmp:
        for n in sizes:
            results[n] = measure(n, Path(tmp), budget, batches)
    load_after = os.getloadavg()
    table = render(results)
    note = (f"Run {stamp} on {os.cpu_count()} CPUs, load average (1/5/15 min) "
            f"{load_before[0]:.2f}/{load_before[1]:.2f}/{load_before[2]:.2f} before, "
            f"{load_after[0]:.2f}/{load_after[1]:.2f}/{load_after[2]:.2f} after; "
            f"{'quick' if args.quick else 'full'} run, {batches} batches per row, "
            f"{time.perf_counter() - started:.1f} s; files in {tempfile.gettempdir()}, "
            f"Python {sys.version.split()[0]}.")
    print(table)
    print()
    print(note)
    if not args.quick:
        RESULTS.mkdir(exist_ok=True)
        with contextlib.suppress(OSError):
            (RESULTS / "bench_shared_options.md").write_text(
                "# Shared-state options for a follower (issue 12)\n\n"
                "Microseconds per call; `x mmap` is the median over the mmap row of the "
                "same group and size.\n\n" + table + "\n\n" + note + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
