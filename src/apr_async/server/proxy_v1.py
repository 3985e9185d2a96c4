"""PROXY protocol version 1: the text line, parsed strictly and built.

``PROXY <TCP4|TCP6|UNKNOWN> <src> <dst> <sport> <dport>\\r\\n`` with single spaces, no leading
zeroes, at most 107 bytes (HAProxy's ``doc/proxy-protocol.txt`` section 2.1).
"""

from __future__ import annotations

import re
import socket
from typing import Final

from .proxy_header import (
    V1_PREFIX,
    Command,
    ProxyFamily,
    ProxyHeader,
    ProxyProtocolError,
    Transport,
    check_port,
    pack_address,
)

__all__ = ["build_v1", "parse_v1_line"]

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


def parse_v1_line(line: bytes) -> ProxyHeader:
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


def build_v1(source: tuple[str, int] | None, destination: tuple[str, int] | None) -> bytes:
    """Build a v1 line; ``None`` for both endpoints builds ``PROXY UNKNOWN\\r\\n``."""
    if source is None and destination is None:
        return b"PROXY UNKNOWN\r\n"
    if source is None or destination is None:
        raise ValueError("give both endpoints, or neither for UNKNOWN")
    family, src_packed = pack_address(source[0])
    dst_family, dst_packed = pack_address(destination[0])
    if dst_family is not family:
        raise ValueError("source and destination must be the same address family")
    proto, af = (
        ("TCP4", socket.AF_INET) if family is ProxyFamily.INET else ("TCP6", socket.AF_INET6)
    )
    src, dst = socket.inet_ntop(af, src_packed), socket.inet_ntop(af, dst_packed)
    line = f"PROXY {proto} {src} {dst} {check_port(source[1])} {check_port(destination[1])}\r\n"
    return line.encode("ascii")
