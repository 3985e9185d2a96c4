"""The layout of the shared probe table and of an outcome message (pure: bytes in, bytes out).

The leader of a host's processes (see :mod:`apr_async.probe.shared`) publishes its latency and
failure tables in a fixed-size file; followers map it and copy it only when its generation
moved. This module is the layout alone, so it is tested without files or sockets.

File = header + body. The header (:data:`HEADER`) holds a magic, the layout version, a
seqlock generation (odd while the leader writes), the leader's publish time and pid, the
record counts, a CRC-32 of the used body, the network identity the records belong to and the
boot id (times are ``CLOCK_MONOTONIC`` seconds, which every process of one boot shares and
no other boot does). The body holds at most :data:`MAX_LATENCY` latency records, then at most
:data:`MAX_FAILURES` failure records, fixed-size, then the leader's
:class:`~apr_async.core.status.ConnectivityStatus` as at most :data:`MAX_STATUS` bytes of JSON
(followers do not probe, so this is where their ``status()`` comes from); the file never grows.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import math
import struct
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, TypeAlias

from apr_async.core.addresses import IPAddress
from apr_async.core.status import ConnectivityStatus

if TYPE_CHECKING:
    import mmap

_Buf: TypeAlias = "bytes | bytearray | memoryview | mmap.mmap"

__all__ = [
    "FILE_SIZE",
    "HEADER",
    "MAX_FAILURES",
    "MAX_LATENCY",
    "OUTCOME",
    "FailureRow",
    "LatencyRow",
    "Outcome",
    "Snapshot",
    "TableCorruptError",
    "decode",
    "decode_outcome",
    "decode_status",
    "encode",
    "encode_outcome",
    "encode_status",
    "generation_of",
]

MAGIC: Final = b"APRSHTB1"
VERSION: Final = 2  # 2: the status section
#: magic, version, generation, published_at, pid, n_latency, n_failures, status bytes, crc,
#: netid, boot id
HEADER: Final = struct.Struct("<8sIQdIIIII16s16s")
GENERATION_OFFSET: Final = 12
#: family, source, destination, ewma, last, min, samples, lost bits, fill, updated
LATENCY: Final = struct.Struct("<B16s16sdddIIHd")
#: family, source, destination, port, last, count, error name
FAILURE: Final = struct.Struct("<B16s16sHdI16s")
#: Bounds of the published table: the most recently updated entries win.
MAX_LATENCY: Final = 2048
MAX_FAILURES: Final = 512
#: The status as JSON: 15 fields, two gateways and a prefix fit in well under this.
MAX_STATUS: Final = 1024
FILE_SIZE: Final = (HEADER.size + MAX_LATENCY * LATENCY.size + MAX_FAILURES * FAILURE.size
                    + MAX_STATUS)
#: kind (0 attempt, 1 untried destination), family, source, destination, port, ok, rtt, errno
OUTCOME: Final = struct.Struct("<BB16s16sHBdi")


class TableCorruptError(ValueError):
    """The bytes are not a consistent shared table (truncated, bad magic, checksum...)."""


@dataclass(frozen=True, slots=True)
class LatencyRow:
    """One latency entry; RTTs in seconds (``None``: never answered), ``updated`` monotonic."""

    source: IPAddress
    destination: IPAddress
    ewma: float | None
    last: float | None
    minimum: float | None
    samples: int
    lost: int
    fill: int
    updated: float


@dataclass(frozen=True, slots=True)
class FailureRow:
    """One failure entry: the latest failure's monotonic time, how many, the errno name."""

    source: IPAddress
    destination: IPAddress
    port: int
    last: float
    count: int
    error: str | None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A whole published table."""

    generation: int
    published_at: float
    pid: int
    netid: bytes
    boot_id: bytes
    latency: tuple[LatencyRow, ...]
    failures: tuple[FailureRow, ...]
    #: the leader's status; ``None`` when it published none (or an empty one)
    status: ConnectivityStatus | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """A follower's report: a connection attempt (``kind`` 0) or an untried destination (1)."""

    kind: int
    source: IPAddress
    destination: IPAddress
    port: int
    ok: bool
    rtt: float | None
    errno: int | None


def _addr(ip: IPAddress) -> tuple[int, bytes]:
    return ip.version, ip.packed.ljust(16, b"\0")


#: Address objects by their packed bytes: a follower decodes the same addresses on every
#: publication, and building an ipaddress object is most of decoding a row. Bounded.
_IPS: dict[tuple[int, bytes], IPAddress] = {}
_IPS_MAX = 8192


def _ip(family: int, raw: bytes) -> IPAddress:
    key = (family, raw)
    ip = _IPS.get(key)
    if ip is None:
        ip = _parse_ip(family, raw)
        if len(_IPS) >= _IPS_MAX:
            _IPS.clear()
        _IPS[key] = ip
    return ip


def _parse_ip(family: int, raw: bytes) -> IPAddress:
    if family == 4:
        if raw[4:] != bytes(12):
            raise TableCorruptError("IPv4 address with trailing bytes")
        return ipaddress.IPv4Address(raw[:4])
    if family == 6:
        return ipaddress.IPv6Address(raw)
    raise TableCorruptError(f"bad address family {family}")


def _opt(value: float | None) -> float:
    return math.nan if value is None else value


def _time(value: float, what: str) -> float:
    if not math.isfinite(value):
        raise TableCorruptError(f"{what} is not finite")
    return value


def _rtt(value: float) -> float | None:
    if math.isnan(value):
        return None
    if not 0 <= value < 3600:
        raise TableCorruptError(f"rtt {value!r} out of range")
    return value


def encode(
    latency: list[LatencyRow] | tuple[LatencyRow, ...],
    failures: list[FailureRow] | tuple[FailureRow, ...],
    *,
    generation: int,
    published_at: float,
    pid: int,
    netid: bytes,
    boot_id: bytes,
    status: bytes = b"",
) -> bytes:
    """The file's bytes (exactly :data:`FILE_SIZE`); the newest rows beyond the bounds win.

    ``status`` is :func:`encode_status`'s output (empty: none).
    """
    if len(status) > MAX_STATUS:
        raise ValueError(f"status of {len(status)} bytes, at most {MAX_STATUS}")
    if generation % 2:
        raise ValueError("a published generation is even (odd means 'being written')")
    lat = sorted(latency, key=lambda r: r.updated, reverse=True)[:MAX_LATENCY]
    fail = sorted(failures, key=lambda r: r.last, reverse=True)[:MAX_FAILURES]
    body = bytearray()
    for r in lat:
        fam, src = _addr(r.source)
        _, dst = _addr(r.destination)
        body += LATENCY.pack(fam, src, dst, _opt(r.ewma), _opt(r.last), _opt(r.minimum),
                             min(r.samples, 0xFFFFFFFF), r.lost & 0xFFFFFFFF,
                             min(r.fill, 0xFFFF), r.updated)
    for f in fail:
        fam, src = _addr(f.source)
        _, dst = _addr(f.destination)
        error = (f.error or "").encode("ascii", "replace")[:16]
        body += FAILURE.pack(fam, src, dst, f.port, f.last, min(f.count, 0xFFFFFFFF), error)
    body += status
    header = HEADER.pack(MAGIC, VERSION, generation, published_at, pid, len(lat), len(fail),
                         len(status), zlib.crc32(body), netid[:16].ljust(16, b"\0"),
                         boot_id[:16].ljust(16, b"\0"))
    return (header + bytes(body)).ljust(FILE_SIZE, b"\0")


def generation_of(buf: _Buf) -> int:
    """The generation field alone: the O(1) "did it move?" check of the hot path."""
    (gen,) = struct.unpack_from("<Q", buf, GENERATION_OFFSET)
    return int(gen)


def decode(buf: bytes | bytearray | memoryview) -> Snapshot:
    """Parse a copy of the file; :class:`TableCorruptError` for anything inconsistent."""
    if len(buf) < FILE_SIZE:
        raise TableCorruptError(f"truncated: {len(buf)} of {FILE_SIZE} bytes")
    (magic, version, gen, published, pid, n_lat, n_fail, n_status, crc, netid,
     boot) = HEADER.unpack_from(buf, 0)
    if magic != MAGIC:
        raise TableCorruptError("not an apr_async shared table")
    if version != VERSION:
        raise TableCorruptError(f"layout version {version}, expected {VERSION}")
    if gen % 2:
        raise TableCorruptError("being written")
    if n_lat > MAX_LATENCY or n_fail > MAX_FAILURES or n_status > MAX_STATUS:
        raise TableCorruptError("record counts beyond the bounds")
    start = HEADER.size
    status_at = start + n_lat * LATENCY.size + n_fail * FAILURE.size
    end = status_at + n_status
    if zlib.crc32(bytes(buf[start:end])) != crc:
        raise TableCorruptError("checksum mismatch")
    lat = []
    for i in range(n_lat):
        fam, src, dst, ewma, last, mn, samples, lost, fill, updated = LATENCY.unpack_from(
            buf, start + i * LATENCY.size)
        lat.append(LatencyRow(_ip(fam, src), _ip(fam, dst), _rtt(ewma), _rtt(last), _rtt(mn),
                              samples, lost, min(fill, 64), _time(updated, "updated")))
    base = start + n_lat * LATENCY.size
    fail = []
    for i in range(n_fail):
        fam, src, dst, port, last, count, error = FAILURE.unpack_from(
            buf, base + i * FAILURE.size)
        if count < 1:
            raise TableCorruptError("failure count below 1")
        name = error.rstrip(b"\0").decode("ascii", "replace") or None
        fail.append(FailureRow(_ip(fam, src), _ip(fam, dst), port, _time(last, "last"),
                               count, name))
    status = decode_status(bytes(buf[status_at:end])) if n_status else None
    return Snapshot(gen, _time(published, "published_at"), pid, netid, boot,
                    tuple(lat), tuple(fail), status)


_STATUS_FIELDS = {f.name: f.type for f in dataclasses.fields(ConnectivityStatus)}


def encode_status(status: ConnectivityStatus) -> bytes:
    """``status`` as the status section's JSON (empty when nothing was measured yet)."""
    if not status.observations:
        return b""
    return json.dumps(status.as_dict(full=True), separators=(",", ":")).encode()


def decode_status(data: bytes) -> ConnectivityStatus:
    """The status section back; :class:`TableCorruptError` for anything but the exact
    fields with values of their types (a gateway or prefix text at most 64 characters)."""
    try:
        raw = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise TableCorruptError(f"status is not JSON: {exc}") from None
    if not isinstance(raw, dict) or set(raw) != set(_STATUS_FIELDS):
        raise TableCorruptError("status fields differ from ConnectivityStatus's")
    for name, value in raw.items():
        kind = _STATUS_FIELDS[name]
        if kind == "bool":
            ok = isinstance(value, bool)
        elif kind == "int":
            ok = type(value) is int and value >= 0
        elif kind == "str | None":
            ok = value is None or (isinstance(value, str) and len(value) <= 64)
        else:  # float | None: a time on the shared monotonic clock
            ok = value is None or (type(value) in (int, float) and math.isfinite(value))
        if not ok:
            raise TableCorruptError(f"status field {name} = {value!r}")
    return ConnectivityStatus(**raw)


def encode_outcome(outcome: Outcome) -> bytes:
    """One datagram from a follower to the leader."""
    fam, src = _addr(outcome.source)
    fam_dst, dst = _addr(outcome.destination)
    if fam != fam_dst:
        raise ValueError("source and destination are of different families")
    errno = -1 if outcome.errno is None else outcome.errno
    return OUTCOME.pack(outcome.kind, fam, src, dst, outcome.port, int(outcome.ok),
                        _opt(outcome.rtt), errno)


def decode_outcome(data: bytes) -> Outcome:
    """Parse one datagram; :class:`TableCorruptError` when it is not exactly one outcome."""
    if len(data) != OUTCOME.size:
        raise TableCorruptError(f"outcome of {len(data)} bytes, expected {OUTCOME.size}")
    kind, fam, src, dst, port, ok, rtt, errno = OUTCOME.unpack(data)
    if kind not in (0, 1) or ok not in (0, 1):
        raise TableCorruptError("bad outcome kind or flag")
    return Outcome(kind, _ip(fam, src), _ip(fam, dst), port, bool(ok), _rtt(rtt),
                   None if errno < 0 else errno)
