"""One prober per host (issue 12): the shared table layout, the leader lock, trust checks, and
services sharing measurements on loopback (only 127.0.0.1 is ever probed here)."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from apr_async.config import Config
from apr_async.core.status import ConnectivityStatus
from apr_async.probe import shared
from apr_async.probe import table_codec as codec
from apr_async.probe.service import ProbeService

V4 = ipaddress.IPv4Address
V6 = ipaddress.IPv6Address


def rows() -> tuple[list[codec.LatencyRow], list[codec.FailureRow]]:
    lat = [
        codec.LatencyRow(V4("127.0.0.1"), V4("127.0.0.2"), 0.001, 0.002, 0.0005, 3, 0b10, 4,
                         100.0),
        codec.LatencyRow(V6("::1"), V6("2001:db8::1"), None, None, None, 0, 0b111, 3, 101.0),
    ]
    fail = [codec.FailureRow(V6("::1"), V6("2001:db8::1"), 443, 99.0, 2, "ETIMEDOUT")]
    return lat, fail


def test_codec_round_trip_is_fixed_size_and_checked() -> None:
    lat, fail = rows()
    data = codec.encode(lat, fail, generation=4, published_at=102.0, pid=7,
                        netid=b"n" * 16, boot_id=b"b" * 16)
    assert len(data) == codec.FILE_SIZE
    assert codec.generation_of(data) == 4
    snap = codec.decode(data)
    assert set(snap.latency) == set(lat) and snap.failures == tuple(fail)
    assert (snap.pid, snap.netid, snap.published_at) == (7, b"n" * 16, 102.0)
    with pytest.raises(codec.TableCorruptError, match="truncated"):
        codec.decode(data[:100])
    flipped = bytearray(data)
    flipped[codec.HEADER.size + 3] ^= 0xFF
    with pytest.raises(codec.TableCorruptError, match="checksum"):
        codec.decode(flipped)
    with pytest.raises(codec.TableCorruptError, match="not an apr_async"):
        codec.decode(b"x" * codec.FILE_SIZE)
    with pytest.raises(ValueError, match="even"):
        codec.encode(lat, fail, generation=3, published_at=0, pid=0, netid=b"", boot_id=b"")


def test_codec_carries_the_leaders_status_and_rejects_a_forged_one() -> None:
    lat, fail = rows()
    status = ConnectivityStatus(IPv4_ok=True, NAT44=True, def_gateway4="192.0.2.1",
                                NAT64_prefix="64:ff9b::/96", changed_at=5.0, updated_at=6.5,
                                observations=3)

    def table(blob: bytes) -> bytes:
        return codec.encode(lat, fail, generation=2, published_at=7.0, pid=1, netid=b"",
                            boot_id=b"", status=blob)

    assert codec.decode(table(codec.encode_status(status))).status == status
    assert codec.encode_status(ConnectivityStatus()) == b""  # nothing measured: none
    assert codec.decode(table(b"")).status is None
    good = codec.encode_status(status)
    for forged in (good.replace(b'"IPv4_ok":true', b'"IPv4_ok":1'),
                   good.replace(b'"observations":3', b'"observations":-3'),
                   good.replace(b'"192.0.2.1"', b'"' + b"x" * 65 + b'"'),
                   good[:-1] + b',"extra":1}', b"not json", b"[]"):
        with pytest.raises(codec.TableCorruptError, match="status"):
            codec.decode(table(forged))
    with pytest.raises(ValueError, match="at most"):
        table(b" " * (codec.MAX_STATUS + 1))


def test_codec_bounds_keep_the_newest() -> None:
    many = [codec.LatencyRow(V4("10.0.0.1"), V4(f"10.1.{i // 256}.{i % 256}"), 0.01, 0.01,
                             0.01, 1, 0, 1, float(i)) for i in range(codec.MAX_LATENCY + 10)]
    snap = codec.decode(codec.encode(many, [], generation=2, published_at=0, pid=0,
                                     netid=b"", boot_id=b""))
    assert len(snap.latency) == codec.MAX_LATENCY
    assert min(r.updated for r in snap.latency) == 10.0


def test_outcome_datagram_round_trip_and_rejects() -> None:
    out = codec.Outcome(0, V6("::1"), V6("2001:db8::2"), 8443, False, None, 110)
    assert codec.decode_outcome(codec.encode_outcome(out)) == out
    with pytest.raises(codec.TableCorruptError):
        codec.decode_outcome(codec.encode_outcome(out) + b"x")
    with pytest.raises(ValueError, match="families"):
        codec.encode_outcome(codec.Outcome(0, V4("127.0.0.1"), V6("::1"), 1, True, 0.1, None))


@pytest.fixture
def share_dir(tmp_path: Path) -> Path:
    return shared.prepare_directory(tmp_path / "apr_async")


def test_leader_lock_is_exclusive_and_released(share_dir: Path) -> None:
    a, b = shared.LeaderLock(share_dir / "x.lock"), shared.LeaderLock(share_dir / "x.lock")
    assert a.try_acquire() and a.held
    assert not b.try_acquire()
    a.release()
    assert b.try_acquire()
    b.release()
    assert (os.stat(share_dir / "x.lock").st_mode & 0o777) == 0o600


def test_untrusted_directory_and_files_are_refused(tmp_path: Path, share_dir: Path) -> None:
    open_dir = tmp_path / "open"
    open_dir.mkdir(mode=0o755)
    os.chmod(open_dir, 0o755)
    with pytest.raises(shared.ShareUnavailable, match="group or others"):
        shared.prepare_directory(open_dir)
    lock = share_dir / "foreign.lock"
    lock.touch(mode=0o600)
    os.chown(lock, 65534, 65534)
    if os.geteuid() != 0:
        pytest.skip("chown to another uid needs root")
    with pytest.raises(shared.ShareUnavailable, match="uid 65534"):
        shared.LeaderLock(lock).try_acquire()
    table = share_dir / "writable.table"
    table.touch(mode=0o600)
    os.chmod(table, 0o666)
    with pytest.raises(shared.ShareUnavailable, match="group or others"):
        shared.TableReader(table).changed()
    (share_dir / "link.table").symlink_to(share_dir / "elsewhere")
    with pytest.raises(shared.ShareUnavailable, match="symbolic link"):
        shared.TableWriter(share_dir / "link.table")


def test_writer_reader_generation_and_corruption(share_dir: Path) -> None:
    writer = shared.TableWriter(share_dir / "t.table")
    reader = shared.TableReader(share_dir / "t.table")
    try:
        assert not reader.changed()  # an empty, never published file
        gen = writer.publish(rows(), netid=b"n" * 16, boot=b"b" * 16)
        assert reader.changed()
        snap = reader.read()
        assert snap is not None and snap.generation == gen and len(snap.latency) == 2
        assert not reader.changed()  # the O(1) check: nothing moved
        with open(share_dir / "t.table", "r+b") as fh:  # a disk error, a stray writer
            fh.seek(codec.HEADER.size + 5)
            fh.write(b"\xff\xff\xff")
            fh.seek(codec.GENERATION_OFFSET)
            fh.write((gen + 2).to_bytes(8, "little"))
        assert reader.changed()
        with pytest.raises(codec.TableCorruptError):
            reader.read()
        writer.publish(rows(), netid=b"n" * 16, boot=b"b" * 16)  # rebuilt whole
        snap = reader.read()
        assert snap is not None and len(snap.failures) == 1
    finally:
        writer.close()
        reader.close()


# ------------------------------------------------------------------ services on loopback

INTERVAL = 0.3


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    yield sock
    sock.close()


def share_config(port: int, cache: Path, **changes: object) -> Config:
    values: dict[str, object] = {
        "targets": (f"127.0.0.1:{port}",),
        "probe_gateways": False,
        "nat64_discovery": False,
        "icmp": "off",
        "probe_interval": INTERVAL,
        "probe_timeout": 0.5,
        "probe_jitter": 0.1,
        "netwatch": "off",
        "share": True,
        "cache_path": cache / "apr_async" / "latency.json",
    }
    values.update(changes)
    return Config(**values)  # type: ignore[arg-type]


class Pair:
    def __init__(self, src: str, dst: str, port: int) -> None:
        self.source = (src, 0)
        self.destination = (dst, port)


LO, DEAD = V4("127.0.0.1"), V4("127.0.0.3")


async def until(predicate: Callable[[], object], within: float) -> None:
    """Return once ``predicate()`` is true; TimeoutError after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    for _ in range(100_000):
        if predicate():
            return
        if loop.time() > deadline:
            break
        await asyncio.sleep(0.01)
    raise TimeoutError(f"not within {within} s")


def corrupt(table: Path) -> None:
    """Garbage over the records, and a generation that moved (a stray writer, a disk error)."""
    with open(table, "r+b") as fh:
        fh.seek(codec.HEADER.size)
        fh.write(os.urandom(512))
        fh.seek(codec.GENERATION_OFFSET)
        gen = int.from_bytes(fh.read(8), "little")
        fh.seek(codec.GENERATION_OFFSET)
        fh.write((gen + 1000).to_bytes(8, "little"))


@pytest.mark.asyncio
async def test_one_leader_probes_followers_share_tables_and_failures(
    listener: socket.socket, tmp_path: Path
) -> None:
    port = listener.getsockname()[1]
    cfg = share_config(port, tmp_path)
    async with ProbeService(cfg, install=False) as leader:
        assert leader.role == "leader"
        assert await leader.wait_ready(5)
        async with ProbeService(cfg, install=False) as a, ProbeService(cfg, install=False) as b:
            assert (a.role, b.role) == ("follower", "follower")
            # warm at once: the leader's measurement is in the follower's table at start
            estimate = a.latency.estimate(LO, LO)
            assert estimate is not None and estimate.rtt is not None
            await asyncio.sleep(INTERVAL * 2)
            assert a.probes_sent == {"icmp": 0, "tcp": 0} == b.probes_sent
            assert leader.probes_sent["tcp"] >= 2
            # a failure one follower saw: at once there, then in the leader and the other
            a.record_attempt(Pair("127.0.0.1", str(DEAD), 9), 9, False, None, 111)
            assert a.failures.failing(LO, DEAD, 9, a._clock())
            await until(lambda: b.failures.failing(LO, DEAD, 9, b._clock()), INTERVAL)
            assert leader.failures.failing(LO, DEAD, 9, leader._clock())
            # the follower's own failure survives the next snapshot it applies
            b.sync_shared()
            assert a.failures.failing(LO, DEAD, 9, a._clock())
        # the leader leaves: a follower takes over within two probe intervals
        async with ProbeService(cfg, install=False) as c:
            assert c.role == "follower"
            await leader.aclose()
            await until(lambda: c.role == "leader", INTERVAL * 2)
            await c.wait_rounds(1, timeout=5)
            assert c.probes_sent["tcp"] >= 1


LEADER_SCRIPT = textwrap.dedent("""
    import asyncio, sys
    from pathlib import Path
    from apr_async.config import Config
    from apr_async.probe.service import ProbeService

    async def main():
        cfg = Config(targets=(f"127.0.0.1:{sys.argv[1]}",), probe_gateways=False,
                     nat64_discovery=False, icmp="off", probe_interval=float(sys.argv[3]),
                     probe_timeout=0.5, netwatch="off", share=True,
                     cache_path=Path(sys.argv[2]) / "apr_async" / "latency.json")
        async with ProbeService(cfg, install=False) as svc:
            await svc.wait_ready(5)
            print(svc.role, flush=True)
            await asyncio.sleep(60)

    asyncio.run(main())
""")


@pytest.mark.asyncio
async def test_sigkilled_leader_process_is_replaced(listener: socket.socket,
                                                    tmp_path: Path) -> None:
    port = listener.getsockname()[1]
    cfg = share_config(port, tmp_path)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", LEADER_SCRIPT, str(port), str(tmp_path), str(INTERVAL),
        stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line.strip() == b"leader"
        async with ProbeService(cfg, install=False) as follower, \
                ProbeService(cfg, install=False) as other:
            assert follower.role == other.role == "follower"
            assert follower.latency.estimate(LO, LO) is not None  # warm from the other process
            # a failure one follower saw reaches the other through the leader's process
            follower.record_attempt(Pair("127.0.0.1", str(DEAD), 9), 9, False, None, 111)
            await until(lambda: other.failures.failing(LO, DEAD, 9, other._clock()), INTERVAL)
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
            await until(lambda: follower.role == "leader", INTERVAL * 2)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.asyncio
async def test_unusable_directory_falls_back_with_one_warning(
    listener: socket.socket, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = shared.prepare_directory(tmp_path / "apr_async")
    lock = directory / f"{shared.namespace_id()}.lock"
    lock.touch(mode=0o600)
    if os.geteuid() != 0:
        pytest.skip("chown to another uid needs root")
    os.chown(lock, 65534, 65534)  # another user's file: never trusted
    cfg = share_config(listener.getsockname()[1], tmp_path)
    with caplog.at_level(logging.WARNING, logger="apr_async.probe"):
        async with ProbeService(cfg, install=False) as svc:
            assert svc.role == "solo"
            assert await svc.wait_ready(5)
            assert svc.probes_sent["tcp"] >= 1
    warnings = [r for r in caplog.records if "not sharing" in r.getMessage()]
    assert len(warnings) == 1 and "uid 65534" in warnings[0].getMessage()


@pytest.mark.asyncio
async def test_corrupt_shared_table_is_ignored_once_and_rebuilt(
    listener: socket.socket, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = share_config(listener.getsockname()[1], tmp_path)
    directory = shared.prepare_directory(tmp_path / "apr_async")
    table = directory / f"{shared.namespace_id()}.table"
    async with ProbeService(cfg, install=False) as leader:
        assert await leader.wait_ready(5)
        with caplog.at_level(logging.WARNING, logger="apr_async.probe"):
            async with ProbeService(cfg, install=False) as follower:
                corrupt(table)
                assert not follower.sync_shared()
                assert not follower.sync_shared()
                await leader.wait_rounds(1, timeout=5)  # the leader publishes it whole again
                await until(follower.sync_shared, INTERVAL * 2)
    warnings = [r for r in caplog.records if "shared table" in r.getMessage()]
    assert len(warnings) == 1


READ_ONLY_SCRIPT = textwrap.dedent("""
    import asyncio, logging, sys
    from pathlib import Path
    from apr_async.config import Config
    from apr_async.probe.service import ProbeService

    warnings = []
    class Catch(logging.Handler):
        def emit(self, record):
            warnings.append(record.getMessage())
    logging.getLogger("apr_async.probe").addHandler(Catch(logging.WARNING))

    async def main():
        cfg = Config(targets=(f"127.0.0.1:{sys.argv[1]}",), probe_gateways=False,
                     nat64_discovery=False, icmp="off", probe_interval=0.3, probe_timeout=0.5,
                     netwatch="off", share=True,
                     cache_path=Path(sys.argv[2]) / "apr_async" / "latency.json")
        async with ProbeService(cfg, install=False) as svc:
            ready = await svc.wait_ready(5)
            print(svc.role, ready, len([w for w in warnings if "not sharing" in w]))

    asyncio.run(main())
""")


@pytest.mark.asyncio
async def test_read_only_cache_directory_falls_back_to_solo(listener: socket.socket) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to run the worker as another user (uid 65534)")
    import shutil
    import tempfile

    # as root no permission bit stops us, so the worker runs as nobody, in a directory that
    # nobody owns but cannot write (mode 0500)
    root = Path(tempfile.mkdtemp(prefix="apr_async-ro-"))
    try:
        (root / "apr_async").mkdir(mode=0o500)
        for path in (root, root / "apr_async"):
            os.chown(path, 65534, 65534)
        os.chmod(root / "apr_async", 0o500)
        proc = await asyncio.create_subprocess_exec(
            "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
            sys.executable, "-c", READ_ONLY_SCRIPT, str(listener.getsockname()[1]), str(root),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        assert out.decode().split() == ["solo", "True", "1"]
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.asyncio
async def test_history_of_another_network_is_never_used(tmp_path: Path) -> None:
    from apr_async.core.failures import FailureTable
    from apr_async.core.latency import LatencyTable
    from apr_async.probe.sharing import Sharing

    loop = asyncio.get_running_loop()
    directory = tmp_path / "apr_async"
    lead_lat, follow_lat = LatencyTable(), LatencyTable()
    leader = Sharing(directory, lead_lat, FailureTable(), time.monotonic)
    follower = Sharing(directory, follow_lat, FailureTable(), time.monotonic)
    try:
        leader.set_network("network A")
        follower.set_network("network B")  # another network (or namespace state) than A's
        assert leader.try_lead(loop) and not follower.try_lead(loop)
        lead_lat.record(LO, LO, 0.001, time.monotonic())
        leader.publish()
        assert not follower.refresh() and len(follow_lat) == 0
        follower.set_network("network A")
        leader.publish()
        assert follower.refresh() and len(follow_lat) == 1
    finally:
        leader.close(loop)
        follower.close(loop)


RECEIVER_SCRIPT = textwrap.dedent("""
    import json, select, sys, time
    from pathlib import Path
    from apr_async.probe import shared

    rx = shared.OutcomeReceiver(Path(sys.argv[1]))
    print("ready", flush=True)
    got, deadline = [], time.monotonic() + 20
    while time.monotonic() < deadline and sys.argv[2] not in got:
        select.select([rx.sock], [], [], 0.2)
        got += [str(outcome.destination) for outcome in rx.drain()]
    print(json.dumps({"accepted": got, "rejected": rx.rejected}), flush=True)
    rx.close()
""")

SENDER_SCRIPT = textwrap.dedent("""
    import ipaddress, sys
    from pathlib import Path
    from apr_async.probe import shared, table_codec as codec

    V4 = ipaddress.IPv4Address
    shared.OutcomeSender(Path(sys.argv[1])).send(
        codec.Outcome(0, V4("127.0.0.1"), V4(sys.argv[2]), 443, False, None, 111))
""")


@pytest.mark.asyncio
@pytest.mark.tools("setpriv")
async def test_leader_drops_outcomes_sent_by_another_uid() -> None:
    # The socket is mode 0600, but root (or a process handed a descriptor) can still reach
    # it: the kernel's SCM_CREDENTIALS, not the file mode, is what keeps such datagrams out.
    # The receiver runs as nobody; root's datagram must be dropped, nobody's own taken.
    if os.geteuid() != 0:
        pytest.skip("needs root to run the leader as another user (uid 65534)")
    import shutil
    import tempfile

    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable]
    root = Path(tempfile.mkdtemp(prefix="apr_async-creds-"))
    try:
        os.chown(root, 65534, 65534)
        os.chmod(root, 0o700)
        path = root / "ns.sock"
        receiver = await asyncio.create_subprocess_exec(
            *as_nobody, "-c", RECEIVER_SCRIPT, str(path), "192.0.2.77",
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert receiver.stdout is not None
        assert await asyncio.wait_for(receiver.stdout.readline(), 30) == b"ready\n"
        forged = shared.OutcomeSender(path)  # this process: uid 0, not the leader's
        forged.send(codec.Outcome(0, V4("127.0.0.1"), V4("192.0.2.66"), 443, False, None, 111))
        assert forged.dropped == 0  # it did reach the socket
        forged.close()
        sender = await asyncio.create_subprocess_exec(
            *as_nobody, "-c", SENDER_SCRIPT, str(path), "192.0.2.77", stderr=subprocess.PIPE)
        _, err = await asyncio.wait_for(sender.communicate(), 30)
        assert sender.returncode == 0, err.decode()
        out, err = await asyncio.wait_for(receiver.communicate(), 30)
        assert receiver.returncode == 0, err.decode()
        assert json.loads(out) == {"accepted": ["192.0.2.77"], "rejected": 1}
        assert b"dropped an outcome datagram" in err and b"uid 0" in err
    finally:
        shutil.rmtree(root, ignore_errors=True)
