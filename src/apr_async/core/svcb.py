"""SVCB/HTTPS records (RFC 9460): SvcParams, validation and the endpoint list. Sans-IO.

A resolver hands over each record as ``(priority, target, [(key, value bytes), ...])`` (the
form pycares 5 gives) or as raw RDATA (:func:`parse_rdata`); :func:`parse_record` checks it
and decodes the values, raising :class:`SvcbError` with a reason for anything hostile (a
length that overruns, a port of 0, ten thousand hints). :func:`plan` turns the records of one
name into what a connector acts on: follow an alias (priority 0), or the ServiceMode
endpoints in SvcPriority order, each with why it is there and which records were skipped.

ECH (``ech``) configurations are decoded and kept, never used: Python's ``ssl`` cannot do
Encrypted Client Hello, so an endpoint with ``ech`` is connected to without it, as any
client without ECH support does (the ECH-in-SVCB specification binds only clients that
implement ECH).
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = [
    "DEFAULT_ALPN",
    "MAX_ALIAS_CHAIN",
    "MAX_HINTS",
    "QUIC_ALPN_PREFIX",
    "SUPPORTED_KEYS",
    "SvcKey",
    "SvcbError",
    "SvcbRecord",
    "parse_rdata",
    "parse_record",
]

#: How many AliasMode records are followed before giving up (RFC 9460 section 3.1 asks
#: for a bound; 8 is what common resolvers allow for CNAME chains).
MAX_ALIAS_CHAIN = 8
#: More address hints than this in one record is not a real deployment: the record is refused.
MAX_HINTS = 32
#: The implicit ALPN of the HTTPS RR (RFC 9460 section 7.1.1): HTTP/1.1 over TLS.
DEFAULT_ALPN = "http/1.1"
#: ALPN ids that need QUIC; this library connects over TCP only.
QUIC_ALPN_PREFIX = "h3"


class SvcKey(enum.IntEnum):
    """SvcParamKeys of RFC 9460 section 14.3.2."""

    MANDATORY = 0
    ALPN = 1
    NO_DEFAULT_ALPN = 2
    PORT = 3
    IPV4HINT = 4
    ECH = 5
    IPV6HINT = 6


#: Keys this implementation understands (a ``mandatory`` list naming others skips the record).
SUPPORTED_KEYS = frozenset(int(k) for k in SvcKey)


class SvcbError(ValueError):
    """A record that cannot be used, with the reason."""


@dataclass(frozen=True, slots=True)
class SvcbRecord:
    """One checked SVCB/HTTPS record. ``target`` is absolute without the trailing dot; the
    owner name when the wire said ``.``. ``alpn`` excludes the default unless listed."""

    priority: int
    target: str
    alpn: tuple[str, ...] = ()
    no_default_alpn: bool = False
    port: int | None = None
    ipv4hint: tuple[ipaddress.IPv4Address, ...] = ()
    ipv6hint: tuple[ipaddress.IPv6Address, ...] = ()
    ech: bytes | None = None
    mandatory: tuple[int, ...] = ()
    unknown: tuple[tuple[int, bytes], ...] = ()

    @property
    def alias(self) -> bool:
        """AliasMode (SvcPriority 0)."""
        return self.priority == 0

    def protocols(self) -> tuple[str, ...]:
        """The ALPN ids the endpoint offers: the list, plus ``http/1.1`` unless
        ``no-default-alpn`` (RFC 9460 section 7.1.2)."""
        out = list(self.alpn)
        if not self.no_default_alpn and DEFAULT_ALPN not in out:
            out.append(DEFAULT_ALPN)
        return tuple(out)

    def describe(self) -> str:
        """Presentation-like text for logs and ``explain``."""
        parts = [str(self.priority), (self.target or ".") + "."]
        if self.mandatory:
            parts.append("mandatory=" + ",".join(_key_name(k) for k in self.mandatory))
        if self.alpn:
            parts.append('alpn="' + ",".join(self.alpn) + '"')
        if self.no_default_alpn:
            parts.append("no-default-alpn")
        if self.port is not None:
            parts.append(f"port={self.port}")
        if self.ipv4hint:
            parts.append("ipv4hint=" + ",".join(map(str, self.ipv4hint)))
        if self.ech is not None:
            parts.append(f"ech=<{len(self.ech)} bytes>")
        if self.ipv6hint:
            parts.append("ipv6hint=" + ",".join(map(str, self.ipv6hint)))
        parts.extend(f"key{k}=<{len(v)} bytes>" for k, v in self.unknown)
        return " ".join(parts)


def _key_name(key: int) -> str:
    try:
        return SvcKey(key).name.lower().replace("_", "-")
    except ValueError:
        return f"key{key}"


# -- wire decoding ------------------------------------------------------------------------


def _read_name(data: bytes, pos: int) -> tuple[str, int]:
    """An uncompressed domain name (RFC 9460 section 2.2 forbids compressing TargetName)."""
    labels: list[str] = []
    total = 0
    while True:
        if pos >= len(data):
            raise SvcbError("TargetName runs past the end of the RDATA")
        length = data[pos]
        pos += 1
        if length == 0:
            return ".".join(labels), pos
        if length > 63:
            raise SvcbError("compressed or oversized label in TargetName")
        if pos + length > len(data):
            raise SvcbError("TargetName label overruns the RDATA")
        total += length + 1
        if total > 254:
            raise SvcbError("TargetName longer than 255 octets")
        labels.append(data[pos:pos + length].decode("ascii", errors="replace").lower())
        pos += length


def parse_rdata(rdata: bytes) -> tuple[int, str, list[tuple[int, bytes]]]:
    """Split raw SVCB RDATA into ``(priority, target, [(key, value), ...])``.

    Checks lengths only; :func:`parse_record` checks the values. Raises :class:`SvcbError`.
    """
    if len(rdata) < 3:
        raise SvcbError("RDATA shorter than SvcPriority and a TargetName")
    priority = int.from_bytes(rdata[:2], "big")
    target, pos = _read_name(rdata, 2)
    params: list[tuple[int, bytes]] = []
    while pos < len(rdata):
        if pos + 4 > len(rdata):
            raise SvcbError("truncated SvcParam header")
        key = int.from_bytes(rdata[pos:pos + 2], "big")
        length = int.from_bytes(rdata[pos + 2:pos + 4], "big")
        pos += 4
        if pos + length > len(rdata):
            raise SvcbError(f"SvcParam {_key_name(key)} length {length} overruns the RDATA")
        params.append((key, bytes(rdata[pos:pos + length])))
        pos += length
    return priority, target, params


def _alpn(value: bytes) -> tuple[str, ...]:
    ids: list[str] = []
    pos = 0
    while pos < len(value):
        length = value[pos]
        pos += 1
        if length == 0 or pos + length > len(value):
            raise SvcbError("alpn id empty or overrunning its value")
        ids.append(value[pos:pos + length].decode("ascii", errors="replace"))
        pos += length
    if not ids:
        raise SvcbError("alpn with no ids")
    return tuple(ids)


def _hints(value: bytes, size: int, key: str) -> list[bytes]:
    if not value or len(value) % size:
        raise SvcbError(f"{key} length {len(value)} is not a positive multiple of {size}")
    if len(value) // size > MAX_HINTS:
        raise SvcbError(f"{key} has {len(value) // size} addresses (more than {MAX_HINTS})")
    return [value[i:i + size] for i in range(0, len(value), size)]


def _mandatory(value: bytes) -> tuple[int, ...]:
    if not value or len(value) % 2:
        raise SvcbError("mandatory length is not a positive multiple of 2")
    keys = [int.from_bytes(value[i:i + 2], "big") for i in range(0, len(value), 2)]
    if keys != sorted(set(keys)):
        raise SvcbError("mandatory keys not strictly increasing")
    if SvcKey.MANDATORY in keys:
        raise SvcbError("mandatory lists itself")
    return tuple(keys)


@dataclass(slots=True)
class _Fields:
    alpn: tuple[str, ...] = ()
    no_default_alpn: bool = False
    port: int | None = None
    v4: tuple[ipaddress.IPv4Address, ...] = ()
    v6: tuple[ipaddress.IPv6Address, ...] = ()
    ech: bytes | None = None
    mandatory: tuple[int, ...] = ()
    unknown: list[tuple[int, bytes]] = field(default_factory=list)


def _decode_param(key: int, value: bytes, out: _Fields) -> None:
    if key == SvcKey.MANDATORY:
        out.mandatory = _mandatory(value)
    elif key == SvcKey.ALPN:
        out.alpn = _alpn(value)
    elif key == SvcKey.NO_DEFAULT_ALPN:
        if value:
            raise SvcbError("no-default-alpn must have an empty value")
        out.no_default_alpn = True
    elif key == SvcKey.PORT:
        if len(value) != 2:
            raise SvcbError("port value is not 2 octets")
        out.port = int.from_bytes(value, "big")
        if out.port == 0:
            raise SvcbError("port 0")
    elif key == SvcKey.IPV4HINT:
        out.v4 = tuple(ipaddress.IPv4Address(b) for b in _hints(value, 4, "ipv4hint"))
    elif key == SvcKey.IPV6HINT:
        out.v6 = tuple(ipaddress.IPv6Address(b) for b in _hints(value, 16, "ipv6hint"))
    elif key == SvcKey.ECH:
        if not value:
            raise SvcbError("empty ech")
        out.ech = value
    else:
        out.unknown.append((key, value))


def parse_record(
    priority: int, target: str, params: Iterable[tuple[int, bytes]], *, owner: str
) -> SvcbRecord:
    """Check and decode one record; ``owner`` is the name it was found at (for ``.``).

    Raises :class:`SvcbError` for a record RFC 9460 says to ignore as malformed (keys out of
    order or repeated, a bad value, ``no-default-alpn`` without ``alpn``, a mandatory key the
    record lacks) and for values no real service uses (port 0, more than :data:`MAX_HINTS`).
    AliasMode records keep no SvcParams (section 2.4.2: they are ignored there).
    """
    if not 0 <= priority <= 0xFFFF:
        raise SvcbError(f"SvcPriority {priority} out of range")
    name = target.strip().rstrip(".").lower()
    if priority == 0:
        # AliasMode "." says the service does not exist (section 2.5.1): the target stays
        # empty so the plan can say so; it is advisory, A/AAAA are still tried.
        return SvcbRecord(0, name)
    name = name or owner.strip().rstrip(".").lower()
    items = list(params)
    out = _Fields()
    last = -1
    for key, value in items:
        if key <= last:
            raise SvcbError("SvcParamKeys not in strictly increasing order")
        last = key
        _decode_param(key, value, out)
    if out.no_default_alpn and not out.alpn:
        raise SvcbError("no-default-alpn without alpn")
    present = {key for key, _ in items}
    missing = [k for k in out.mandatory if k not in present]
    if missing:
        raise SvcbError("mandatory key(s) absent: " + ",".join(map(_key_name, missing)))
    return SvcbRecord(priority, name, out.alpn, out.no_default_alpn, out.port, out.v4, out.v6,
                      out.ech, out.mandatory, tuple(out.unknown))
