"""PROXY protocol version 2: the binary header, its TLVs and their CRC32C, parsed and built.

HAProxy's ``doc/proxy-protocol.txt`` section 2.2: version 2, command LOCAL or PROXY, known
family and transport nibbles, an address block no shorter than the family needs, well-formed
TLVs, and a CRC32C TLV (when present) that matches.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterable
from typing import Final

from .proxy_header import (
    TLV,
    TLV_HEAD,
    UNIX_PATH_SIZE,
    V2_ADDRESS_SIZE,
    V2_FIXED_LENGTH,
    V2_SIGNATURE,
    Address,
    Command,
    ProxyFamily,
    ProxyHeader,
    ProxyProtocolError,
    TLVType,
    Transport,
    check_port,
    pack_address,
    parse_ssl,
    parse_tlvs,
)

__all__ = ["build_v2", "crc32c", "parse_v2"]

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


_V2_FIXED: Final = struct.Struct("!12sBBH")
# Combinations that section 2.2 lists as valid (family, transport).
_VALID_FAM_TRANSPORT: Final = frozenset({(0, 0), (1, 1), (1, 2), (2, 1), (2, 2), (3, 1), (3, 2)})


def _unix_path(raw: bytes) -> str:
    return os.fsdecode(raw.split(b"\x00", 1)[0])


def parse_v2(data: bytes) -> ProxyHeader:
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
            tlvs = parse_tlvs(block)
        except ProxyProtocolError:
            tlvs = ()
        _check_tlvs(tlvs, data, V2_FIXED_LENGTH)
        return ProxyHeader(2, command, family, transport, tlvs=tlvs, length=len(data))
    size = V2_ADDRESS_SIZE[family]
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
        src_addr = _unix_path(block[:UNIX_PATH_SIZE])
        dst_addr = _unix_path(block[UNIX_PATH_SIZE:size])
    tlvs = parse_tlvs(block[size:])
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
            value_at = offset + TLV_HEAD.size
            zeroed = header[:value_at] + b"\x00\x00\x00\x00" + header[value_at + 4 :]
            if crc32c(zeroed) != int.from_bytes(tlv.value, "big"):
                raise ProxyProtocolError("v2: CRC32C mismatch")
        elif tlv.type == TLVType.SSL:
            parse_ssl(tlv.value)
        offset += TLV_HEAD.size + len(tlv.value)


def _tlv_bytes(tlvs: Iterable[TLV | tuple[int, bytes]]) -> bytes:
    out = bytearray()
    for tlv_type, value in tlvs:
        if not 0 <= tlv_type <= 0xFF:
            raise ValueError(f"TLV type must fit in a byte, not {tlv_type}")
        if len(value) > 0xFFFF:
            raise ValueError("TLV value longer than 65535 bytes")
        out += TLV_HEAD.pack(tlv_type, len(value)) + bytes(value)
    return bytes(out)


def _unix_bytes(path: str) -> bytes:
    raw = os.fsencode(path)
    if len(raw) >= UNIX_PATH_SIZE or b"\x00" in raw:
        raise ValueError(f"UNIX path must be under {UNIX_PATH_SIZE} bytes, without NUL")
    return raw.ljust(UNIX_PATH_SIZE, b"\x00")


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
        fam, src = pack_address(source[0])
        dst_fam, dst = pack_address(destination[0])
        if dst_fam is not fam:
            raise ValueError("source and destination must be the same address family")
        block = src + dst + struct.pack("!HH", check_port(source[1]), check_port(destination[1]))
    else:
        raise ValueError("endpoints must both be (ip, port), both UNIX paths, or both None")
    if fam is not ProxyFamily.UNSPEC and transport is Transport.UNSPEC:
        raise ValueError("an address family needs a STREAM or DGRAM transport")
    extra = _tlv_bytes(tlvs)
    crc_tlv = TLV_HEAD.pack(TLVType.CRC32C, 4) + b"\x00" * 4 if crc else b""
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
