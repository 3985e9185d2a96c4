"""The warm-start cache file: atomic, private, shared safely, distrustful of bad files."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import stat
from pathlib import Path

import pytest

from apr_async.probe.persist import (
    CACHE_FORMAT,
    CACHE_VERSION,
    CacheBusyError,
    CachedLatency,
    load_cache,
    save_cache,
)

NOW = 1_700_000_000.0


def entry(src: str = "2001:db8::1", dst: str = "2001:db8:1::1", seen: float = NOW,
          ewma: float = 0.01) -> CachedLatency:
    return CachedLatency(src, dst, ewma, ewma / 2, ewma, 5, 0b10, 6, seen)


def test_round_trip_private_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "latency.json"
    entries = [entry(), entry("10.0.0.2", "10.9.9.9", ewma=0.02)]
    assert save_cache(path, entries, now=NOW) == 2
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert sorted(load_cache(path, now=NOW + 1), key=lambda e: e.source) == sorted(
        entries, key=lambda e: e.source
    )
    # nothing but the cache and its lock file remain: the temporary file was renamed
    assert sorted(p.name for p in path.parent.iterdir()) == ["latency.json", "latency.json.lock"]


def test_missing_file_is_empty_without_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert load_cache(tmp_path / "none.json") == []
    assert not caplog.records


def test_merge_keeps_other_writers_entries_and_newest_wins(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    save_cache(path, [entry("10.0.0.1", "10.0.0.9", seen=NOW - 10, ewma=0.5),
                      entry("10.0.0.2", "10.0.0.9", seen=NOW - 10)], now=NOW)
    save_cache(path, [entry("10.0.0.1", "10.0.0.9", seen=NOW - 5, ewma=0.1),
                      entry("10.0.0.2", "10.0.0.9", seen=NOW - 20, ewma=0.9)], now=NOW)
    got = {(e.source, e.destination): e for e in load_cache(path, now=NOW)}
    assert got[("10.0.0.1", "10.0.0.9")].ewma == 0.1  # newer sample replaced the old
    assert got[("10.0.0.2", "10.0.0.9")].seen == NOW - 10  # older write did not win


def test_old_entries_dropped_and_size_bounded(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    many = [entry("10.0.0.1", f"10.1.{i // 256}.{i % 256}", seen=NOW - i) for i in range(50)]
    assert save_cache(path, many, now=NOW, max_entries=10) == 10
    kept = load_cache(path, now=NOW)
    assert {e.destination for e in kept} == {f"10.1.0.{i}" for i in range(10)}
    assert load_cache(path, now=NOW + 5, max_age=6) == [e for e in kept if e.seen >= NOW - 1]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{not json", "corrupt"),
        (b"\xff\xfe", "corrupt"),
        (json.dumps({"format": "other", "version": 1, "entries": []}).encode(), "not an apr"),
        (json.dumps({"format": CACHE_FORMAT, "version": 99, "entries": []}).encode(), "version"),
        (json.dumps({"format": CACHE_FORMAT, "version": CACHE_VERSION}).encode(), "corrupt"),
    ],
)
def test_bad_files_ignored_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes, message: str
) -> None:
    path = tmp_path / "c.json"
    path.write_bytes(content)
    path.chmod(0o600)
    with caplog.at_level(logging.WARNING, logger="apr_async.probe.persist"):
        assert load_cache(path) == []
    assert len(caplog.records) == 1
    assert message in caplog.records[0].getMessage()
    # a save over a bad file replaces it with a good one
    save_cache(path, [entry()], now=NOW)
    assert load_cache(path, now=NOW) == [entry()]


def test_malformed_entries_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "c.json"
    good = entry().to_json()
    doc = {"format": CACHE_FORMAT, "version": CACHE_VERSION,
           "entries": [good, {"src": 1}, dict(good, fill=70), dict(good, ewma=float("nan")), 5,
                       dict(good, lost=-1), dict(good, n=True)]}
    path.write_text(json.dumps(doc))
    path.chmod(0o600)
    assert load_cache(path, now=NOW) == [entry()]
    assert "6 malformed" in caplog.text


def test_foreign_owner_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give the file to another uid")
    path = tmp_path / "c.json"
    save_cache(path, [entry()], now=NOW)
    os.chown(path, 12345, -1)
    assert load_cache(path, now=NOW) == []
    assert "uid 12345" in caplog.text


def test_group_writable_or_symlink_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "c.json"
    save_cache(path, [entry()], now=NOW)
    link = tmp_path / "link.json"
    link.symlink_to(path)
    assert load_cache(link, now=NOW) == []
    assert "symbolic link" in caplog.text
    path.chmod(0o620)
    assert load_cache(path, now=NOW) == []
    assert "writable by others" in caplog.text


def _hold_lock(path: str, ready: multiprocessing.synchronize.Event,
               release: multiprocessing.synchronize.Event) -> None:
    import fcntl

    fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    ready.set()
    release.wait(10)
    os.close(fd)


def test_lock_held_by_other_process(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_hold_lock, args=(str(path), ready, release))
    proc.start()
    try:
        assert ready.wait(10)
        with pytest.raises(CacheBusyError):
            save_cache(path, [entry()], wait=False, now=NOW)
        assert not path.exists()
    finally:
        release.set()
        proc.join(10)
    assert save_cache(path, [entry()], wait=False, now=NOW) == 1


def _writer(path: str, index: int) -> None:
    for round_ in range(20):
        save_cache(Path(path), [entry("10.0.0.1", f"10.2.{index}.{round_}")], now=NOW)


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(path), i)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert len(load_cache(path, now=NOW)) == 80


def test_entry_without_any_answer_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    lost = CachedLatency("10.0.0.1", "10.0.0.9", None, None, None, 0, 0b111, 3, NOW)
    save_cache(path, [lost], now=NOW)
    assert load_cache(path, now=NOW) == [lost]
