"""HAProxy PROXY protocol, versions 1 (text) and 2 (binary): a sans-IO parser and builder.

The specification is HAProxy's ``doc/proxy-protocol.txt`` (Debian ships it as
``/usr/share/doc/haproxy/proxy-protocol.txt.gz``). This module does no I/O: the caller feeds
bytes and asks how many more are needed, so that a stream reader never consumes a byte past
the header (the application's data that follows stays in the reader, untouched).

The parser is strict where the specification says "must": v1 lines are exactly
``PROXY <TCP4|TCP6|UNKNOWN> <src> <dst> <sport> <dport>\\r\\n`` with single spaces, no leading
zeroes, at most 107 bytes; v2 has version 2, command LOCAL or PROXY, known family and
transport nibbles, an address block no shorter than the family needs, well-formed TLVs, and a
CRC32C TLV (when present) that matches. Anything else raises :class:`ProxyProtocolError`.
"""

from __future__ import annotations

import enum
import os
import re
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final, Literal, NamedTuple

__all__ = [
    "DEFAULT_MAX_SIZE",
    "TLV",
    "V1_MAX_LENGTH",
    "V2_SIGNATURE",
    "Command",
    "HeaderParser",
    "HeaderTooLargeError",
    "IncompleteHeaderError",
    "ProxyFamily",
    "ProxyHeader",
    "ProxyProtocolError",
    "SSLInfo",
    "TLVType",
    "Transport",
    "build_header",
    "build_v1",
    "build_v2",
    "crc32c",
    "parse_header",
]

V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX: Final = b"PROXY "
#: Longest legal v1 line, CRLF included ("PROXY UNKNOWN" with two full IPv6 addresses).
V1_MAX_LENGTH: Final = 107
#: Shortest legal v1 line: ``PROXY UNKNOWN\r\n``. Reading this many bytes never over-reads.
V1_MIN_LENGTH: Final = 15
V2_FIXED_LENGTH: Final = 16
#: Default cap on a whole v2 header; the protocol allows 16 + 65535 bytes, which a server
#: should not have to buffer for an unauthenticated peer.
DEFAULT_MAX_SIZE: Final = 4096

Version = Literal["v1", "v2", "auto"]
Address = tuple[str, int] | str


class ProxyProtocolError(ValueError):
    """The bytes are not a valid PROXY protocol header (the connection must be dropped)."""


class IncompleteHeaderError(ProxyProtocolError):
    """The bytes are a valid beginning of a header, but the header is not complete."""


class HeaderTooLargeError(ProxyProtocolError):
    """The header announces (or reaches) more bytes than the configured maximum."""


class Command(enum.IntEnum):
    """The v2 command nibble (v1 headers are always ``PROXY``)."""

    LOCAL = 0x0
    PROXY = 0x1


class ProxyFamily(enum.IntEnum):
    """The v2 address family nibble (v1 ``UNKNOWN`` maps to ``UNSPEC``)."""

    UNSPEC = 0x0
    INET = 0x1
    INET6 = 0x2
    UNIX = 0x3


class Transport(enum.IntEnum):
    """The v2 transport nibble (v1 ``TCP4``/``TCP6`` map to ``STREAM``)."""

    UNSPEC = 0x0
    STREAM = 0x1
    DGRAM = 0x2


class TLVType(enum.IntEnum):
    """Registered v2 TLV types (section 2.2); other values are kept as plain ints."""

    ALPN = 0x01
    AUTHORITY = 0x02
    CRC32C = 0x03
    NOOP = 0x04
    UNIQUE_ID = 0x05
    SSL = 0x20
    SSL_VERSION = 0x21
    SSL_CN = 0x22
    SSL_CIPHER = 0x23
    SSL_SIG_ALG = 0x24
    SSL_KEY_ALG = 0x25
    NETNS = 0x30


class TLV(NamedTuple):
    """One type-length-value vector of a v2 header, as found on the wire."""

    type: int
    value: bytes


@dataclass(frozen=True, slots=True)
class SSLInfo:
    """The decoded value of a ``PP2_TYPE_SSL`` TLV (section 2.2.6)."""

    client: int
    verify: int
    tlvs: tuple[TLV, ...]

    @property
    def version(self) -> str | None:
        """TLS version string (``PP2_SUBTYPE_SSL_VERSION``), if sent."""
        return _tlv_text(self.tlvs, TLVType.SSL_VERSION)

    @property
    def cn(self) -> str | None:
        """Client certificate common name (``PP2_SUBTYPE_SSL_CN``), if sent."""
        return _tlv_text(self.tlvs, TLVType.SSL_CN)

    @property
    def cipher(self) -> str | None:
        """Cipher name (``PP2_SUBTYPE_SSL_CIPHER``), if sent."""
        return _tlv_text(self.tlvs, TLVType.SSL_CIPHER)


_V2_ADDRESS_SIZE: Final = {ProxyFamily.INET: 12, ProxyFamily.INET6: 36, ProxyFamily.UNIX: 216}
_UNIX_PATH_SIZE: Final = 108


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A parsed PROXY header.

    ``source_*``/``destination_*`` are ``None`` when the header carries no usable address (v1
    ``UNKNOWN``, v2 ``LOCAL`` or ``UNSPEC``): the receiver must then use the real connection
    endpoints. For ``UNIX`` the addresses are socket paths and the ports are ``None``.
    ``length`` is the number of bytes the header occupied on the wire.
    """

    version: Literal[1, 2]
    command: Command
    family: ProxyFamily
    transport: Transport
    source_address: str | None = None
    source_port: int | None = None
    destination_address: str | None = None
    destination_port: int | None = None
    tlvs: tuple[TLV, ...] = field(default=())
    length: int = 0

    @property
    def is_local(self) -> bool:
        """True when the real connection endpoints must be used (no address to trust)."""
        return self.command is Command.LOCAL or self.family is ProxyFamily.UNSPEC

    @property
    def source(self) -> tuple[str, int] | None:
        """``(address, port)`` of the original client for TCP/UDP over IPv4/IPv6, else None."""
        if self.is_local or self.source_address is None or self.source_port is None:
            return None
        return (self.source_address, self.source_port)

    @property
    def destination(self) -> tuple[str, int] | None:
        """``(address, port)`` the original client connected to, for IPv4/IPv6, else None."""
        if self.is_local or self.destination_address is None or self.destination_port is None:
            return None
        return (self.destination_address, self.destination_port)

    def get_tlv(self, tlv_type: int) -> bytes | None:
        """Value of the first TLV of ``tlv_type``, or None."""
        for tlv in self.tlvs:
            if tlv.type == tlv_type:
                return tlv.value
        return None

    @property
    def alpn(self) -> bytes | None:
        """``PP2_TYPE_ALPN`` value, if sent."""
        return self.get_tlv(TLVType.ALPN)

    @property
    def authority(self) -> str | None:
        """``PP2_TYPE_AUTHORITY`` (SNI / host name), if sent."""
        return _tlv_text(self.tlvs, TLVType.AUTHORITY)

    @property
    def unique_id(self) -> bytes | None:
        """``PP2_TYPE_UNIQUE_ID`` value, if sent."""
        return self.get_tlv(TLVType.UNIQUE_ID)

    @property
    def netns(self) -> str | None:
        """``PP2_TYPE_NETNS`` namespace name, if sent."""
        return _tlv_text(self.tlvs, TLVType.NETNS)

    @property
    def ssl(self) -> SSLInfo | None:
        """Decoded ``PP2_TYPE_SSL`` TLV, if sent (validated when the header was parsed)."""
        value = self.get_tlv(TLVType.SSL)
        return None if value is None else _parse_ssl(value)


def _tlv_text(tlvs: Iterable[TLV], tlv_type: int) -> str | None:
    for tlv in tlvs:
        if tlv.type == tlv_type:
            return tlv.value.decode("utf-8", "replace")
    return None


# --- CRC32C (Castagnoli, reflected polynomial 0x82F63B78), RFC 4960 appendix B ---------------


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC32C_TABLE: Final = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC32C of ``data`` (the checksum the ``PP2_TYPE_CRC32C`` TLV carries)."""
    crc = 0xFFFFFFFF
    table = _CRC32C_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


# --- version 1 ----------------------------------------------------------------------------

_PORT_RE: Final = re.compile(rb"0|[1-9][0-9]{0,4}")
_V4_RE: Final = re.compile(rb"(?:(?:0|[1-9][0-9]{0,2})\.){3}(?:0|[1-9][0-9]{0,2})")
_V6_RE: Final = re.compile(rb"[0-9A-Fa-f:.]{2,45}")


def _v1_port(raw: bytes) -> int:
    if not _PORT_RE.fullmatch(raw):
        raise ProxyProtocolError(f"v1: bad port {raw!r}")
    port = int(raw)
    if port > 0xFFFF:
        raise ProxyProtocolError(f"v1: port out of range {raw!r}")
    return port


def _v1_address(raw: bytes, family: ProxyFamily) -> str:
    # The regexes keep out what inet_pton would tolerate but the spec forbids (leading
    # zeroes, zone ids, brackets); inet_pton then checks the value and inet_ntop gives the
    # canonical text, about ten times faster than the ipaddress module.
    pattern = _V4_RE if family is ProxyFamily.INET else _V6_RE
    af = socket.AF_INET if family is ProxyFamily.INET else socket.AF_INET6
    if pattern.fullmatch(raw):
        try:
            return socket.inet_ntop(af, socket.inet_pton(af, raw.decode("ascii")))
        except (OSError, ValueError):
            pass
    raise ProxyProtocolError(f"v1: bad address {raw!r}")


def _parse_v1_line(line: bytes) -> ProxyHeader:
    """Parse one complete v1 line, CRLF included."""
    body = line[len(V1_PREFIX) : -2]
    if b"\r" in body or b"\n" in body:
        raise ProxyProtocolError("v1: stray CR or LF inside the line")
    if any(byte < 0x20 or byte > 0x7E for byte in body):
        raise ProxyProtocolError("v1: non-printable byte in the line")
    if body == b"UNKNOWN" or body.startswith(b"UNKNOWN "):
        # The specification tells receivers to ignore whatever follows UNKNOWN.
        return ProxyHeader(1, Command.PROXY, ProxyFamily.UNSPEC, Transport.UNSPEC, length=len(line))
    parts = body.split(b" ")
    if len(parts) != 5:
        raise ProxyProtocolError("v1: expected protocol, two addresses and two ports")
    proto, src, dst, sport, dport = parts
    if proto == b"TCP4":
        family = ProxyFamily.INET
    elif proto == b"TCP6":
        family = ProxyFamily.INET6
    else:
        raise ProxyProtocolError(f"v1: unknown protocol {proto!r}")
    return ProxyHeader(
        1,
        Command.PROXY,
        family,
        Transport.STREAM,
        _v1_address(src, family),
        _v1_port(sport),
        _v1_address(dst, family),
        _v1_port(dport),
        length=len(line),
    )


# --- version 2 ----------------------------------------------------------------------------

_V2_FIXED: Final = struct.Struct("!12sBBH")
_TLV_HEAD: Final = struct.Struct("!BH")
_SSL_HEAD: Final = struct.Struct("!BI")
# Combinations that section 2.2 lists as valid (family, transport).
_VALID_FAM_TRANSPORT: Final = frozenset({(0, 0), (1, 1), (1, 2), (2, 1), (2, 2), (3, 1), (3, 2)})


def _parse_tlvs(data: bytes) -> tuple[TLV, ...]:
    tlvs = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < _TLV_HEAD.size:
            raise ProxyProtocolError("v2: truncated TLV header")
        tlv_type, length = _TLV_HEAD.unpack_from(data, offset)
        offset += _TLV_HEAD.size
        if length > len(data) - offset:
            raise ProxyProtocolError("v2: TLV longer than the header")
        tlvs.append(TLV(tlv_type, data[offset : offset + length]))
        offset += length
    return tuple(tlvs)


def _parse_ssl(value: bytes) -> SSLInfo:
    if len(value) < _SSL_HEAD.size:
        raise ProxyProtocolError("v2: SSL TLV too short")
    client, verify = _SSL_HEAD.unpack_from(value)
    return SSLInfo(client, verify, _parse_tlvs(value[_SSL_HEAD.size :]))


def _unix_path(raw: bytes) -> str:
    return os.fsdecode(raw.split(b"\x00", 1)[0])


def _parse_v2(data: bytes) -> ProxyHeader:
    """Parse one complete v2 header (exactly 16 + len bytes)."""
    _sig, ver_cmd, fam, _length = _V2_FIXED.unpack_from(data)
    block = data[V2_FIXED_LENGTH:]
    try:
        family = ProxyFamily(fam >> 4)
        transport = Transport(fam & 0xF)
    except ValueError:
        raise ProxyProtocolError(f"v2: unknown family/transport byte {fam:#04x}") from None
    if (family, transport) not in _VALID_FAM_TRANSPORT:
        raise ProxyProtocolError(f"v2: invalid family/transport combination {fam:#04x}")
    command = Command(ver_cmd & 0xF)
    src_addr: str | None = None
    dst_addr: str | None = None
    src_port: int | None = None
    dst_port: int | None = None
    if family is ProxyFamily.UNSPEC:
        # HAProxy appends its TLVs (CRC32C, unique id) right after the fixed part of a LOCAL
        # header, so try them; but an UNSPEC block may also hold address data of no specified
        # layout, which the receiver must ignore rather than reject.
        try:
            tlvs = _parse_tlvs(block)
        except ProxyProtocolError:
            tlvs = ()
        _check_tlvs(tlvs, data, V2_FIXED_LENGTH)
        return ProxyHeader(2, command, family, transport, tlvs=tlvs, length=len(data))
    size = _V2_ADDRESS_SIZE[family]
    if len(block) < size:
        raise ProxyProtocolError(f"v2: address block of {len(block)} bytes, need {size}")
    if family is ProxyFamily.INET:
        s4, d4, src_port, dst_port = struct.unpack_from("!4s4sHH", block)
        src_addr = socket.inet_ntop(socket.AF_INET, s4)
        dst_addr = socket.inet_ntop(socket.AF_INET, d4)
    elif family is ProxyFamily.INET6:
        s6, d6, src_port, dst_port = struct.unpack_from("!16s16sHH", block)
        src_addr = socket.inet_ntop(socket.AF_INET6, s6)
        dst_addr = socket.inet_ntop(socket.AF_INET6, d6)
    else:
        src_addr = _unix_path(block[:_UNIX_PATH_SIZE])
        dst_addr = _unix_path(block[_UNIX_PATH_SIZE:size])
    tlvs = _parse_tlvs(block[size:])
    _check_tlvs(tlvs, data, V2_FIXED_LENGTH + size)
    return ProxyHeader(
        2, command, family, transport, src_addr, src_port, dst_addr, dst_port, tlvs, len(data)
    )


def _check_tlvs(tlvs: tuple[TLV, ...], header: bytes, tlv_start: int) -> None:
    offset = tlv_start
    for tlv in tlvs:
        if tlv.type == TLVType.CRC32C:
            if len(tlv.value) != 4:
                raise ProxyProtocolError("v2: CRC32C TLV must be 4 bytes")
            value_at = offset + _TLV_HEAD.size
            zeroed = header[:value_at] + b"\x00\x00\x00\x00" + header[value_at + 4 :]
            if crc32c(zeroed) != int.from_bytes(tlv.value, "big"):
                raise ProxyProtocolError("v2: CRC32C mismatch")
        elif tlv.type == TLVType.SSL:
            _parse_ssl(tlv.value)
        offset += _TLV_HEAD.size + len(tlv.value)


# --- incremental parser -------------------------------------------------------------------


class HeaderParser:
    """Incremental PROXY header parser that tells the caller how much more to read.

    Feed it bytes; :meth:`bytes_needed` is the minimum number of further bytes the header
    needs, so a reader that reads exactly that much never consumes application data. It is
    0 once :attr:`header` is set. If more bytes than the header are fed, the excess is kept
    in :attr:`trailing`. Malformed input raises :class:`ProxyProtocolError` as early as the
    bytes received allow (a wrong first byte is rejected at once).
    """

    def __init__(self, version: Version = "auto", *, max_size: int = DEFAULT_MAX_SIZE) -> None:
        if version not in ("v1", "v2", "auto"):
            raise ValueError(f"version must be 'v1', 'v2' or 'auto', not {version!r}")
        if isinstance(max_size, bool) or not isinstance(max_size, int):
            raise TypeError("max_size must be an int")
        if max_size < V1_MAX_LENGTH:
            raise ValueError(f"max_size must be at least {V1_MAX_LENGTH}")
        self.version: Version = version
        self.max_size = max_size
        self._buffer = bytearray()
        self.header: ProxyHeader | None = None
        self.trailing = b""

    @property
    def buffered(self) -> int:
        """Bytes of an unfinished header received so far (0 once it is complete)."""
        return len(self._buffer)

    def bytes_needed(self) -> int:
        """Fewest bytes that could complete the header (0 when it is complete)."""
        if self.header is not None:
            return 0
        buf = self._buffer
        if not buf:
            return V1_MIN_LENGTH if self.version != "v2" else V2_FIXED_LENGTH
        if buf[0] == V2_SIGNATURE[0]:
            if len(buf) < V2_FIXED_LENGTH:
                return V2_FIXED_LENGTH - len(buf)
            total = V2_FIXED_LENGTH + int.from_bytes(buf[14:16], "big")
            return total - len(buf)
        if len(buf) < V1_MIN_LENGTH:
            return V1_MIN_LENGTH - len(buf)
        # A v1 line ends with CRLF: if the last byte is not CR, at least two more are due.
        return 1 if buf[-1] == 0x0D else 2

    def feed(self, data: bytes) -> ProxyHeader | None:
        """Add received bytes; return the header once complete, else None."""
        if self.header is not None:
            self.trailing += bytes(data)
            return self.header
        self._buffer += data
        result = self._try_parse()
        if result is not None:
            self.header, used = result, result.length
            self.trailing = bytes(self._buffer[used:])
            self._buffer.clear()
        return self.header

    def _try_parse(self) -> ProxyHeader | None:
        buf = self._buffer
        if buf[:1] == V2_SIGNATURE[:1] and self.version != "v1":
            return self._try_v2()
        if buf[:1] == V1_PREFIX[:1] and self.version != "v2":
            return self._try_v1()
        raise ProxyProtocolError(f"not a PROXY {self._expected()} header")

    def _expected(self) -> str:
        return {"v1": "v1", "v2": "v2", "auto": "v1 or v2"}[self.version]

    def _try_v1(self) -> ProxyHeader | None:
        buf = self._buffer
        prefix = bytes(buf[: len(V1_PREFIX)])
        if not V1_PREFIX.startswith(prefix):
            raise ProxyProtocolError("not a PROXY v1 header")
        end = buf.find(b"\r\n", 0, V1_MAX_LENGTH)
        if end < 0:
            if len(buf) >= V1_MAX_LENGTH:
                raise HeaderTooLargeError(f"v1: no CRLF in the first {V1_MAX_LENGTH} bytes")
            if b"\n" in buf or b"\r" in buf[:-1]:
                raise ProxyProtocolError("v1: stray CR or LF")
            return None
        return _parse_v1_line(bytes(buf[: end + 2]))

    def _try_v2(self) -> ProxyHeader | None:
        buf = self._buffer
        head = bytes(buf[: len(V2_SIGNATURE)])
        if not V2_SIGNATURE.startswith(head):
            raise ProxyProtocolError("not a PROXY v2 signature")
        if len(buf) > len(V2_SIGNATURE) and buf[12] >> 4 != 2:
            raise ProxyProtocolError(f"v2: unsupported version {buf[12] >> 4}")
        if len(buf) > len(V2_SIGNATURE) and buf[12] & 0xF not in (0, 1):
            raise ProxyProtocolError(f"v2: unknown command {buf[12] & 0xF}")
        if len(buf) < V2_FIXED_LENGTH:
            return None
        total = V2_FIXED_LENGTH + int.from_bytes(buf[14:16], "big")
        if total > self.max_size:
            raise HeaderTooLargeError(f"v2: header of {total} bytes exceeds {self.max_size}")
        if len(buf) < total:
            return None
        return _parse_v2(bytes(buf[:total]))


def parse_header(
    data: bytes, *, version: Version = "auto", max_size: int = DEFAULT_MAX_SIZE
) -> ProxyHeader:
    """Parse the PROXY header at the start of ``data``.

    Bytes after the header are ignored (``header.length`` says where they start). Raises
    :class:`IncompleteHeaderError` if ``data`` is a valid but unfinished beginning, and
    :class:`ProxyProtocolError` for anything malformed.
    """
    parser = HeaderParser(version, max_size=max_size)
    header = parser.feed(data)
    if header is None:
        raise IncompleteHeaderError(
            f"incomplete PROXY header: {len(data)} bytes, at least "
            f"{parser.bytes_needed()} more needed"
        )
    return header


# --- builders -----------------------------------------------------------------------------


def _pack(address: object) -> tuple[ProxyFamily, bytes]:
    """Family and packed form of an IP address text (no zone ids)."""
    if isinstance(address, str):
        for family, af in (
            (ProxyFamily.INET, socket.AF_INET),
            (ProxyFamily.INET6, socket.AF_INET6),
        ):
            try:
                return family, socket.inet_pton(af, address)
            except (OSError, ValueError):
                continue
    raise ValueError(f"not an IP address: {address!r}")


def _check_port(port: object) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 0xFFFF:
        raise ValueError(f"port must be an int in 0..65535, not {port!r}")
    return port


def build_v1(source: tuple[str, int] | None, destination: tuple[str, int] | None) -> bytes:
    """Build a v1 line; ``None`` for both endpoints builds ``PROXY UNKNOWN\\r\\n``."""
    if source is None and destination is None:
        return b"PROXY UNKNOWN\r\n"
    if source is None or destination is None:
        raise ValueError("give both endpoints, or neither for UNKNOWN")
    family, src_packed = _pack(source[0])
    dst_family, dst_packed = _pack(destination[0])
    if dst_family is not family:
        raise ValueError("source and destination must be the same address family")
    proto, af = (
        ("TCP4", socket.AF_INET) if family is ProxyFamily.INET else ("TCP6", socket.AF_INET6)
    )
    src, dst = socket.inet_ntop(af, src_packed), socket.inet_ntop(af, dst_packed)
    line = f"PROXY {proto} {src} {dst} {_check_port(source[1])} {_check_port(destination[1])}\r\n"
    return line.encode("ascii")


def _tlv_bytes(tlvs: Iterable[TLV | tuple[int, bytes]]) -> bytes:
    out = bytearray()
    for tlv_type, value in tlvs:
        if not 0 <= tlv_type <= 0xFF:
            raise ValueError(f"TLV type must fit in a byte, not {tlv_type}")
        if len(value) > 0xFFFF:
            raise ValueError("TLV value longer than 65535 bytes")
        out += _TLV_HEAD.pack(tlv_type, len(value)) + bytes(value)
    return bytes(out)


def _unix_bytes(path: str) -> bytes:
    raw = os.fsencode(path)
    if len(raw) >= _UNIX_PATH_SIZE or b"\x00" in raw:
        raise ValueError(f"UNIX path must be under {_UNIX_PATH_SIZE} bytes, without NUL")
    return raw.ljust(_UNIX_PATH_SIZE, b"\x00")


def build_v2(
    source: Address | None,
    destination: Address | None,
    *,
    command: Command = Command.PROXY,
    transport: Transport = Transport.STREAM,
    tlvs: Iterable[TLV | tuple[int, bytes]] = (),
    crc: bool = False,
) -> bytes:
    """Build a v2 header.

    Endpoints are ``(ip, port)`` tuples (IPv4 or IPv6, same family), ``str`` UNIX paths, or
    both ``None`` for an ``UNSPEC`` block (what ``LOCAL`` health checks send). With
    ``crc=True`` a ``PP2_TYPE_CRC32C`` TLV is appended and filled in.
    """
    command = Command(command)
    transport = Transport(transport)
    if source is None and destination is None:
        fam, block = ProxyFamily.UNSPEC, b""
        transport = Transport.UNSPEC
    elif isinstance(source, str) and isinstance(destination, str):
        fam, block = ProxyFamily.UNIX, _unix_bytes(source) + _unix_bytes(destination)
    elif isinstance(source, tuple) and isinstance(destination, tuple):
        fam, src = _pack(source[0])
        dst_fam, dst = _pack(destination[0])
        if dst_fam is not fam:
            raise ValueError("source and destination must be the same address family")
        block = src + dst + struct.pack("!HH", _check_port(source[1]), _check_port(destination[1]))
    else:
        raise ValueError("endpoints must both be (ip, port), both UNIX paths, or both None")
    if fam is not ProxyFamily.UNSPEC and transport is Transport.UNSPEC:
        raise ValueError("an address family needs a STREAM or DGRAM transport")
    extra = _tlv_bytes(tlvs)
    crc_tlv = _TLV_HEAD.pack(TLVType.CRC32C, 4) + b"\x00" * 4 if crc else b""
    length = len(block) + len(extra) + len(crc_tlv)
    if length > 0xFFFF:
        raise ValueError("v2 header longer than 16 + 65535 bytes")
    header = (
        _V2_FIXED.pack(V2_SIGNATURE, 0x20 | command, (fam << 4) | transport, length)
        + block
        + extra
        + crc_tlv
    )
    if crc:
        header = header[:-4] + crc32c(header).to_bytes(4, "big")
    return header


def build_header(header: ProxyHeader) -> bytes:
    """Serialize a :class:`ProxyHeader` (the inverse of :func:`parse_header`).

    v2 TLVs are written as given, so a header whose TLVs include a CRC32C must carry the
    right checksum already; use :func:`build_v2` with ``crc=True`` to have it computed.
    """
    if header.version == 1:
        return build_v1(header.source, header.destination)
    source: Address | None
    destination: Address | None
    if header.family is ProxyFamily.UNSPEC:
        source = destination = None
    elif header.family is ProxyFamily.UNIX:
        source, destination = header.source_address or "", header.destination_address or ""
    else:
        if header.source_address is None or header.destination_address is None:
            raise ValueError("an INET/INET6 header needs both addresses")
        source = (header.source_address, header.source_port or 0)
        destination = (header.destination_address, header.destination_port or 0)
    transport = header.transport
    return build_v2(
        source, destination, command=header.command, transport=transport, tlvs=header.tlvs
    )
