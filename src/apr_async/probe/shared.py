"""One prober per host: the files behind a shared probe service (leader lock, table, socket).

Processes of one user that share a cache directory share one probe service. Everything lives
in ``<cache>/apr_async/`` (mode 0700, owned by the user), named by the network namespace
(``ns-<dev>-<inode>``) so processes in different namespaces never meet:

* ``<ns>.lock``: the leader holds an exclusive ``flock`` on it. The kernel drops the lock when
  the leader exits, however it exits (SIGKILL included), so no daemon and no stale pid file.
* ``<ns>.table``: fixed-size (:data:`~apr_async.probe.table_codec.FILE_SIZE`), written by the
  leader through ``mmap`` under a seqlock generation; followers check the generation (one
  8-byte read) and copy and parse the table only when it moved.
* ``<ns>.sock``: a Unix datagram socket bound by the leader (mode 0600); followers send each
  connection outcome to it, one fixed-size datagram, without waiting. The leader asks the
  kernel for each sender's credentials (``SO_PASSCRED``) and drops every datagram whose
  sender is not our uid, so even a process that can reach the socket (root, or one handed a
  descriptor) cannot feed outcomes in under another user's name.

Nothing here is trusted that is not a regular file owned by us and not writable by group or
others, in a directory owned by us with no group/other access. Anything else raises
:class:`ShareUnavailable`; the caller then probes on its own.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import mmap
import os
import socket
import stat
import struct
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from apr_async.core.failures import FailureTable
from apr_async.core.latency import LatencyTable
from apr_async.probe import table_codec as codec

log = logging.getLogger("apr_async.probe")

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no sharing
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "LeaderLock",
    "OutcomeReceiver",
    "OutcomeSender",
    "ShareUnavailable",
    "TableReader",
    "TableWriter",
    "apply_snapshot",
    "boot_id",
    "namespace_id",
    "network_id",
    "prepare_directory",
    "rows_of",
]

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


class ShareUnavailable(OSError):  # noqa: N818 - reads as the condition it reports
    """Sharing cannot be used safely here (the reason is the message)."""


def namespace_id() -> str:
    """The calling thread's network namespace, as a file-name part."""
    try:
        info = os.stat("/proc/thread-self/ns/net")
    except OSError:
        return "ns-default"
    return f"ns-{info.st_dev:x}-{info.st_ino:x}"


def network_id(fingerprint: str) -> bytes:
    """16 bytes naming the network (addresses and gateways) the measurements belong to."""
    return hashlib.sha256(fingerprint.encode()).digest()[:16]


def boot_id() -> bytes:
    """16 bytes naming this boot: monotonic times in the table mean nothing after a reboot."""
    try:
        with open("/proc/sys/kernel/random/boot_id", "rb") as fh:
            return hashlib.sha256(fh.read(64)).digest()[:16]
    except OSError:
        return bytes(16)


def _check_trusted(info: os.stat_result, path: Path, *, directory: bool) -> None:
    kind_ok = stat.S_ISDIR(info.st_mode) if directory else stat.S_ISREG(info.st_mode)
    if not kind_ok:
        raise ShareUnavailable(f"{path} is not a {'directory' if directory else 'regular file'}")
    if info.st_uid != os.geteuid():
        raise ShareUnavailable(f"{path} belongs to uid {info.st_uid}, not to us")
    if info.st_mode & (0o077 if directory else 0o022):
        raise ShareUnavailable(f"{path} is open to group or others (mode {info.st_mode:o})")


def prepare_directory(directory: Path) -> Path:
    """Create (mode 0700) or check the shared directory; :class:`ShareUnavailable` if unsafe."""
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = os.lstat(directory)
    except OSError as exc:
        raise ShareUnavailable(f"cannot use {directory}: {exc.strerror}") from None
    _check_trusted(info, directory, directory=True)
    return directory


def _open_trusted(path: Path, flags: int) -> int:
    try:
        fd = os.open(path, flags | _NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ShareUnavailable(f"{path} is a symbolic link") from None
        raise ShareUnavailable(f"cannot open {path}: {exc.strerror}") from None
    try:
        _check_trusted(os.fstat(fd), path, directory=False)
    except BaseException:
        os.close(fd)
        raise
    return fd


class LeaderLock:
    """The leader election: an exclusive, non-blocking ``flock`` on ``<ns>.lock``.

    :meth:`try_acquire` returns True when this process leads (it keeps the descriptor open:
    the lock lives exactly as long as the process or :meth:`release`), False while another
    holds it, and raises :class:`ShareUnavailable` when locks cannot be used (foreign file,
    read-only directory, a filesystem without ``flock``).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """True while this object holds the lock."""
        return self._fd is not None

    def try_acquire(self) -> bool:
        """One non-blocking attempt (see the class)."""
        if self._fd is not None:
            return True
        if fcntl is None:  # pragma: no cover
            raise ShareUnavailable("no flock on this platform")
        fd = _open_trusted(self.path, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except OSError as exc:  # ENOLCK on NFS without a lock manager, ...
            os.close(fd)
            raise ShareUnavailable(f"cannot lock {self.path}: {exc.strerror}") from None
        self._fd = fd
        return True

    def release(self) -> None:
        """Give up leadership (closing the descriptor drops the lock)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


class TableWriter:
    """The leader's side of ``<ns>.table``: publish snapshots under a seqlock generation."""

    def __init__(self, path: Path) -> None:
        fd = _open_trusted(path, os.O_RDWR | os.O_CREAT)
        try:
            # a shorter file (truncated, or another layout) is simply resized: the leader
            # owns the content, and readers check the header before trusting any of it
            if os.fstat(fd).st_size != codec.FILE_SIZE:
                os.ftruncate(fd, codec.FILE_SIZE)
            self._map = mmap.mmap(fd, codec.FILE_SIZE)
        except OSError as exc:
            raise ShareUnavailable(f"cannot map {path}: {exc.strerror}") from None
        finally:
            os.close(fd)
        try:
            self.generation = codec.generation_of(self._map) & ~1
        except Exception:  # pragma: no cover - the map is FILE_SIZE long
            self.generation = 0

    def publish(self, rows: tuple[list[codec.LatencyRow], list[codec.FailureRow]], *,
                netid: bytes, boot: bytes, status: bytes = b"") -> int:
        """Write a new generation (``status``: :func:`~.table_codec.encode_status`); return it."""
        latency, failures = rows
        gen = self.generation + 2
        data = codec.encode(latency, failures, generation=gen, published_at=time.monotonic(),
                            pid=os.getpid(), netid=netid, boot_id=boot, status=status)
        m = self._map
        off = codec.GENERATION_OFFSET
        # seqlock: odd while writing, so a reader that saw the same even number before and
        # after its copy knows it copied one consistent version
        m[off:off + 8] = (gen - 1).to_bytes(8, "little")
        m[:off] = data[:off]
        m[off + 8:] = data[off + 8:]
        m[off:off + 8] = gen.to_bytes(8, "little")
        self.generation = gen
        return gen

    def close(self) -> None:
        """Unmap (the file stays for the next leader and for fresh followers)."""
        self._map.close()


class TableReader:
    """A follower's side of ``<ns>.table``: :meth:`changed` is the O(1) hot-path check."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._map: mmap.mmap | None = None
        self.seen = -1

    def _open(self) -> mmap.mmap | None:
        if self._map is None:
            try:
                fd = _open_trusted(self.path, os.O_RDONLY)
            except ShareUnavailable as exc:
                if "No such file" in str(exc):
                    return None
                raise
            try:
                if os.fstat(fd).st_size < codec.FILE_SIZE:
                    raise codec.TableCorruptError("truncated shared table")
                self._map = mmap.mmap(fd, codec.FILE_SIZE, prot=mmap.PROT_READ)
            finally:
                os.close(fd)
        return self._map

    def changed(self) -> bool:
        """True when a complete generation newer than the last one read is there."""
        m = self._map if self._map is not None else self._open()
        if m is None:
            return False
        gen = codec.generation_of(m)
        return gen != self.seen and gen > 0 and not gen % 2  # 0: never published

    def read(self) -> codec.Snapshot | None:
        """A consistent copy of the newest generation, ``None`` if none is complete yet.

        Raises :class:`~apr_async.probe.table_codec.TableCorruptError` for a bad table (the
        generation is remembered, so one bad version is reported once).
        """
        m = self._open()
        if m is None:
            return None
        for _ in range(3):
            before = codec.generation_of(m)
            if before % 2:
                continue
            data = m[:]
            if codec.generation_of(m) != before:
                continue  # the leader wrote during the copy: take the next version
            self.seen = before
            return codec.decode(data)
        return None

    def close(self) -> None:
        """Unmap."""
        if self._map is not None:
            self._map.close()
            self._map = None


class OutcomeSender:
    """A follower's datagram socket to the leader; sending never blocks and never fails."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        self.dropped = 0

    def send(self, outcome: codec.Outcome) -> None:
        """Send one outcome; a missing leader or a full queue drops it (counted)."""
        try:
            self._sock.sendto(codec.encode_outcome(outcome), self.path)
        except (OSError, ValueError):
            self.dropped += 1

    def close(self) -> None:
        """Close the socket."""
        self._sock.close()


#: struct ucred: pid, uid, gid (SCM_CREDENTIALS' payload)
_UCRED = struct.Struct("=iII")
_SO_PASSCRED: int | None = getattr(socket, "SO_PASSCRED", None)
_SCM_CREDENTIALS: int | None = getattr(socket, "SCM_CREDENTIALS", None)


class OutcomeReceiver:
    """The leader's bound datagram socket (``<ns>.sock``, mode 0600); only datagrams whose
    sender the kernel says is our uid are taken (``rejected`` counts the others)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rejected = 0
        self._uid = os.getuid()
        self._creds = _SO_PASSCRED is not None and _SCM_CREDENTIALS is not None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # a dead leader's socket: we hold the lock, so it is ours now
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            old = os.umask(0o177)
            try:
                sock.bind(str(path))
            finally:
                os.umask(old)
            if self._creds:
                sock.setsockopt(socket.SOL_SOCKET, _SO_PASSCRED, 1)  # type: ignore[arg-type]
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise ShareUnavailable(f"cannot bind {path}: {exc.strerror}") from None
        self.sock = sock

    def drain(self, limit: int = 256) -> Iterable[codec.Outcome]:
        """The outcomes queued now; malformed datagrams and other users' are dropped."""
        space = socket.CMSG_SPACE(_UCRED.size) if self._creds else 0
        for _ in range(limit):
            try:
                data, ancillary, _flags, _addr = self.sock.recvmsg(codec.OUTCOME.size + 1, space)
            except (BlockingIOError, InterruptedError):
                return
            if self._creds and self._sender_uid(ancillary) != self._uid:
                self._reject(ancillary)
                continue
            with contextlib.suppress(codec.TableCorruptError, ValueError):
                yield codec.decode_outcome(data)

    @staticmethod
    def _sender_uid(ancillary: list[tuple[int, int, bytes]]) -> int | None:
        for level, kind, payload in ancillary:
            if (level == socket.SOL_SOCKET and kind == _SCM_CREDENTIALS
                    and len(payload) >= _UCRED.size):
                return int(_UCRED.unpack_from(payload)[1])
        return None  # with SO_PASSCRED the kernel always attaches them: missing = refuse

    def _reject(self, ancillary: list[tuple[int, int, bytes]]) -> None:
        self.rejected += 1
        if self.rejected == 1:
            log.warning("apr_async: dropped an outcome datagram on %s from uid %s (not ours); "
                        "later ones are dropped silently", self.path,
                        self._sender_uid(ancillary))

    def close(self) -> None:
        """Close and unlink (called while the lock is still held)."""
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        self.sock.close()


def rows_of(latency: LatencyTable, failures: FailureTable, now: float,
            mono: float) -> tuple[list[codec.LatencyRow], list[codec.FailureRow]]:
    """The tables as shared rows; ``now`` is the tables' clock and ``mono`` the matching
    ``time.monotonic()`` (the shared time base)."""
    from apr_async.core.addresses import parse_address  # noqa: PLC0415

    lat = []
    for src, dst, ewma, last, mn, samples, lost, fill, age in latency.snapshot(now)["entries"]:
        lat.append(codec.LatencyRow(parse_address(src)[0], parse_address(dst)[0], ewma, last,
                                    mn, samples, lost, fill, mono - age))
    fail = []
    for src, dst, port, age, count, error in failures.snapshot(now)["entries"]:
        fail.append(codec.FailureRow(parse_address(src)[0], parse_address(dst)[0], port,
                                     mono - age, count, error))
    return lat, fail


def apply_snapshot(snap: codec.Snapshot, latency: LatencyTable, failures: FailureTable,
                   now: float, mono: float, *, max_age: float) -> None:
    """Replace the tables' contents with the snapshot's rows younger than ``max_age``."""
    # The codec checked every row (families, ranges): loaded as they are, no text round trip
    lat: list[tuple[Any, ...]] = [
        (r.source, r.destination, r.ewma, r.last, r.minimum, r.samples, r.lost, r.fill,
         max(0.0, mono - r.updated))
        for r in snap.latency if mono - r.updated <= max_age]
    fail = [[str(r.source), str(r.destination), r.port, max(0.0, mono - r.last), r.count,
             r.error]
            for r in snap.failures if mono - r.last < failures.ttl]
    latency.load(lat, now)
    failures.restore({"kind": "apr_async.failures", "version": 1, "entries": fail}, now)
