"""The warm-start cache: measured latencies kept on disk between runs.

One JSON file in the user's cache directory (``$XDG_CACHE_HOME/apr_async/latency.json`` by
default). Writes are atomic (a private temporary file in the same directory, fsync, rename), the
file is created mode 0600 in a 0700 directory, and a writer holds an exclusive ``flock`` on a
side lock file while it reads, merges and replaces the cache, so processes sharing the file do
not lose each other's entries. Readers need no lock: a rename is atomic.

A cache that is corrupt, of another format or version, owned by another user, not a regular
file, or writable by group/others is ignored with one warning: a warm start is an optimisation,
never a reason to fail or to trust someone else's data.

Ages are stored as wall-clock times because monotonic clocks do not survive a reboot or cross
processes; entries older than ``max_age`` are dropped on load.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import stat
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apr_async.core.latency import LatencyTable

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock, writes stay atomic
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "CACHE_FORMAT",
    "CACHE_VERSION",
    "CacheBusyError",
    "CachedLatency",
    "load_cache",
    "restore_latency",
    "save_cache",
    "table_entries",
]

log = logging.getLogger(__name__)

CACHE_FORMAT = "apr_async-latency"
CACHE_VERSION = 1
#: Entries kept in one file, at most (the most recently seen win).
DEFAULT_MAX_ENTRIES = 4096
#: Entries older than this (seconds) are not worth a warm start.
DEFAULT_MAX_AGE = 7 * 86400.0


class CacheBusyError(OSError):
    """Another process holds the cache lock and the caller asked not to wait."""


@dataclass(frozen=True, slots=True)
class CachedLatency:
    """One (source, destination) latency record as stored on disk.

    The fields mirror :meth:`apr_async.core.latency.LatencyTable.snapshot` rows: RTTs in seconds
    (``None`` when no probe was ever answered), ``samples`` answered probes, ``lost`` the
    bitmap of lost probes in the last ``fill`` probes, and ``seen`` the wall-clock time
    (``time.time()``) of the newest probe.
    """

    source: str
    destination: str
    ewma: float | None
    last: float | None
    minimum: float | None
    samples: int
    lost: int
    fill: int
    seen: float

    def to_json(self) -> dict[str, Any]:
        """The JSON object stored for this record."""
        return {
            "src": self.source,
            "dst": self.destination,
            "ewma": self.ewma,
            "last": self.last,
            "min": self.minimum,
            "n": self.samples,
            "lost": self.lost,
            "fill": self.fill,
            "seen": self.seen,
        }

    @classmethod
    def from_json(cls, obj: Any) -> CachedLatency:
        """Parse one stored record; ``ValueError`` if it is malformed."""
        if not isinstance(obj, dict):
            raise ValueError("entry is not an object")
        try:
            return cls(
                source=_addr(obj["src"]),
                destination=_addr(obj["dst"]),
                ewma=_opt_num(obj["ewma"]),
                last=_opt_num(obj["last"]),
                minimum=_opt_num(obj["min"]),
                samples=_count(obj["n"], 1 << 62),
                lost=_count(obj["lost"], 1 << 64),
                fill=_count(obj["fill"], 64),
                seen=_num(obj["seen"]),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"bad entry: {exc}") from None


def _count(value: Any, limit: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
        raise TypeError(f"{value!r} is not a count in 0..{limit}")
    return value


def _opt_num(value: Any) -> float | None:
    return None if value is None else _num(value)


def _num(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{value!r} is not a number")
    out = float(value)
    if not math.isfinite(out) or out < 0:
        raise TypeError(f"{value!r} is not a finite non-negative number")
    return out


def _addr(value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > 64:
        raise TypeError(f"{value!r} is not an address")
    return value


def _lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def _read_trusted(path: Path) -> dict[str, Any] | None:
    """Read and check the file; ``None`` (after one warning) when it is not to be trusted."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            log.warning("apr_async cache %s is a symbolic link: ignored", path)
        else:
            log.warning("apr_async cache %s unreadable (%s): ignored", path, exc.strerror)
        return None
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())
        if not stat.S_ISREG(info.st_mode):
            log.warning("apr_async cache %s is not a regular file: ignored", path)
            return None
        if hasattr(os, "geteuid") and info.st_uid != os.geteuid():
            log.warning(
                "apr_async cache %s belongs to uid %d, not to us: ignored", path, info.st_uid
            )
            return None
        if info.st_mode & 0o022:
            log.warning("apr_async cache %s is writable by others: ignored", path)
            return None
        raw = fh.read(16 * 1024 * 1024)
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        log.warning("apr_async cache %s is corrupt: ignored", path)
        return None
    if not isinstance(doc, dict) or doc.get("format") != CACHE_FORMAT:
        log.warning("apr_async cache %s is not an apr_async cache: ignored", path)
        return None
    if doc.get("version") != CACHE_VERSION:
        log.warning(
            "apr_async cache %s has version %r, expected %d: ignored",
            path,
            doc.get("version"),
            CACHE_VERSION,
        )
        return None
    if not isinstance(doc.get("entries"), list):
        log.warning("apr_async cache %s is corrupt (no entry list): ignored", path)
        return None
    return doc


def _entries(doc: dict[str, Any], now: float, max_age: float) -> list[CachedLatency]:
    out: list[CachedLatency] = []
    bad = 0
    for obj in doc["entries"]:
        try:
            entry = CachedLatency.from_json(obj)
        except ValueError:
            bad += 1
            continue
        if now - entry.seen <= max_age:
            out.append(entry)
    if bad:
        log.warning("apr_async cache: %d malformed entries skipped", bad)
    return out


def load_cache(
    path: Path, *, now: float | None = None, max_age: float = DEFAULT_MAX_AGE
) -> list[CachedLatency]:
    """Return the trusted, recent entries of the cache at ``path`` (``[]`` if none).

    ``now`` is the wall-clock time (default ``time.time()``). Never raises for a missing,
    corrupt or foreign file: it logs one warning and returns ``[]``.
    """
    doc = _read_trusted(Path(path))
    if doc is None:
        return []
    return _entries(doc, time.time() if now is None else now, max_age)


@contextlib.contextmanager
def _locked(path: Path, wait: bool) -> Iterator[None]:
    if fcntl is None:  # pragma: no cover
        yield
        return
    fd = os.open(_lock_path(path), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise CacheBusyError(errno.EWOULDBLOCK, f"cache {path} is locked") from None
        yield
    finally:
        os.close(fd)  # closing drops the lock


def save_cache(
    path: Path,
    entries: Iterable[CachedLatency],
    *,
    wait: bool = True,
    now: float | None = None,
    max_age: float = DEFAULT_MAX_AGE,
    max_entries: int = DEFAULT_MAX_ENTRIES,
) -> int:
    """Merge ``entries`` into the cache at ``path`` atomically; return the entries written.

    Under the lock the current file is re-read so entries another process wrote survive; for a
    (source, destination) present in both, the more recently seen one wins. With
    ``wait=False`` a held lock raises :class:`CacheBusyError` at once instead of blocking.
    Other ``OSError`` (read-only disk...) propagate.
    """
    path = Path(path)
    now = time.time() if now is None else now
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with _locked(path, wait):
        merged: dict[tuple[str, str], CachedLatency] = {}
        doc = _read_trusted(path)
        if doc is not None:
            for old in _entries(doc, now, max_age):
                merged[(old.source, old.destination)] = old
        for new in entries:
            key = (new.source, new.destination)
            if now - new.seen > max_age:
                continue
            if key not in merged or merged[key].seen <= new.seen:
                merged[key] = new
        keep = sorted(merged.values(), key=lambda e: e.seen, reverse=True)[:max_entries]
        payload = json.dumps(
            {
                "format": CACHE_FORMAT,
                "version": CACHE_VERSION,
                "saved": now,
                "entries": [e.to_json() for e in keep],
            },
            separators=(",", ":"),
        ).encode()
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                os.fchmod(fh.fileno(), 0o600)
                fh.write(payload)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    return len(keep)


def table_entries(table: LatencyTable, *, now: float, wall: float) -> list[CachedLatency]:
    """The latency table's entries as cache records.

    ``now`` is the table's (monotonic) clock and ``wall`` the matching ``time.time()``: ages
    are carried from one clock to the other, since only wall time survives the process.
    """
    return [
        CachedLatency(src, dst, ewma, last, minimum, samples, lost, fill, wall - age)
        for src, dst, ewma, last, minimum, samples, lost, fill, age in table.snapshot(now)[
            "entries"
        ]
    ]


def restore_latency(
    table: LatencyTable, entries: Iterable[CachedLatency], *, now: float, wall: float
) -> None:
    """Replace the table's contents with cached records (ages rebased from ``wall`` onto
    ``now``). Raises ``ValueError``, leaving the table unchanged, if a record does not fit."""
    data = table.snapshot(now)
    data["entries"] = [
        [
            e.source,
            e.destination,
            e.ewma,
            e.last,
            e.minimum,
            e.samples,
            e.lost,
            e.fill,
            max(0.0, wall - e.seen),
        ]
        for e in entries
    ]
    table.restore(data, now)
