"""PROXY protocol data: ProxyHeader, its enums and TLVs, errors, sizes and shared helpers.

What both versions share; :mod:`.proxy_v1` and :mod:`.proxy_v2` parse and build the wire
forms, :mod:`.proxy_protocol` holds the incremental parser that picks the version.
"""

from __future__ import annotations

import enum
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final, Literal, NamedTuple

__all__ = [
    "DEFAULT_MAX_SIZE",
    "TLV",
    "TLV_HEAD",
    "UNIX_PATH_SIZE",
    "V1_MAX_LENGTH",
    "V1_MIN_LENGTH",
    "V1_PREFIX",
    "V2_ADDRESS_SIZE",
    "V2_FIXED_LENGTH",
    "V2_SIGNATURE",
    "Address",
    "Command",
    "HeaderTooLargeError",
    "IncompleteHeaderError",
    "ProxyFamily",
    "ProxyHeader",
    "ProxyProtocolError",
    "SSLInfo",
    "TLVType",
    "Transport",
    "Version",
    "check_port",
    "pack_address",
    "parse_ssl",
    "parse_tlvs",
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


V2_ADDRESS_SIZE: Final = {ProxyFamily.INET: 12, ProxyFamily.INET6: 36, ProxyFamily.UNIX: 216}
UNIX_PATH_SIZE: Final = 108


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
        return None if value is None else parse_ssl(value)


def _tlv_text(tlvs: Iterable[TLV], tlv_type: int) -> str | None:
    for tlv in tlvs:
        if tlv.type == tlv_type:
            return tlv.value.decode("utf-8", "replace")
    return None


def pack_address(address: object) -> tuple[ProxyFamily, bytes]:
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


def check_port(port: object) -> int:
    """*port* if it is an int in 0..65535, else ``ValueError``."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 0xFFFF:
        raise ValueError(f"port must be an int in 0..65535, not {port!r}")
    return port


TLV_HEAD: Final = struct.Struct("!BH")
_SSL_HEAD: Final = struct.Struct("!BI")


def parse_tlvs(data: bytes) -> tuple[TLV, ...]:
    """The TLVs in *data*; ``ProxyProtocolError`` if one is truncated."""
    tlvs = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < TLV_HEAD.size:
            raise ProxyProtocolError("v2: truncated TLV header")
        tlv_type, length = TLV_HEAD.unpack_from(data, offset)
        offset += TLV_HEAD.size
        if length > len(data) - offset:
            raise ProxyProtocolError("v2: TLV longer than the header")
        tlvs.append(TLV(tlv_type, data[offset : offset + length]))
        offset += length
    return tuple(tlvs)


def parse_ssl(value: bytes) -> SSLInfo:
    """The ``PP2_TYPE_SSL`` TLV's value parsed; ``ProxyProtocolError`` if malformed."""
    if len(value) < _SSL_HEAD.size:
        raise ProxyProtocolError("v2: SSL TLV too short")
    client, verify = _SSL_HEAD.unpack_from(value)
    return SSLInfo(client, verify, parse_tlvs(value[_SSL_HEAD.size :]))
