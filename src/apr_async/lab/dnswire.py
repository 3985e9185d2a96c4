"""Just enough of the DNS wire format (RFC 1035) for the lab's authoritative server. Pure.

Parses a query's header and single question (and notices an EDNS OPT record for the UDP size
limit), and builds responses with A/AAAA answers, NXDOMAIN or NODATA.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from dataclasses import dataclass

__all__ = [
    "CLASS_IN",
    "DNSFormatError",
    "Query",
    "RRType",
    "Rcode",
    "build_response",
    "encode_name",
    "formerr",
    "parse_query",
]

CLASS_IN = 1
_HEADER = struct.Struct("!HHHHHH")
_QR = 0x8000
_AA = 0x0400
_TC = 0x0200
_RD = 0x0100
_RA = 0x0080
_OPT = 41


class RRType(enum.IntEnum):
    """Record types the lab server knows by name (others are answered with NODATA)."""

    A = 1
    NS = 2
    CNAME = 5
    SOA = 6
    PTR = 12
    MX = 15
    TXT = 16
    AAAA = 28
    SRV = 33
    HTTPS = 65
    ANY = 255


class Rcode(enum.IntEnum):
    """Response codes used by the lab server."""

    NOERROR = 0
    FORMERR = 1
    SERVFAIL = 2
    NXDOMAIN = 3
    NOTIMP = 4
    REFUSED = 5


class DNSFormatError(ValueError):
    """The message is not a query this server can parse."""


@dataclass(frozen=True)
class Query:
    """One parsed query: header id and flags, the question, the requester's UDP size limit."""

    id: int
    flags: int
    name: str
    qtype: int
    qclass: int
    question: bytes  # raw question section, echoed in the response
    udp_size: int = 512

    @property
    def opcode(self) -> int:
        """The header OPCODE (0 is a standard query)."""
        return (self.flags >> 11) & 0xF


def _read_name(msg: bytes, pos: int) -> tuple[str, int]:
    labels: list[str] = []
    while True:
        if pos >= len(msg):
            raise DNSFormatError("name runs past the end of the message")
        length = msg[pos]
        if length & 0xC0:
            # Queries carry no compression pointers in the question; refusing them keeps
            # the parser trivially safe from pointer loops.
            raise DNSFormatError("compressed name in question")
        pos += 1
        if length == 0:
            break
        if pos + length > len(msg):
            raise DNSFormatError("label runs past the end of the message")
        labels.append(msg[pos : pos + length].decode("ascii", errors="replace").lower())
        pos += length
    name = ".".join(labels)
    if len(name) > 253:
        raise DNSFormatError("name too long")
    return name, pos


def _skip_rr_name(msg: bytes, pos: int) -> int:
    while True:
        if pos >= len(msg):
            raise DNSFormatError("truncated record name")
        length = msg[pos]
        if length & 0xC0 == 0xC0:
            return pos + 2
        pos += 1 + length
        if length == 0:
            return pos


def parse_query(msg: bytes) -> Query:
    """Parse a DNS query. Raises :class:`DNSFormatError` (check ``len(msg) >= 12`` first to
    know whether a FORMERR reply is possible)."""
    if len(msg) < _HEADER.size:
        raise DNSFormatError("short header")
    qid, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(msg)
    if flags & _QR:
        raise DNSFormatError("not a query")
    if qdcount != 1:
        raise DNSFormatError("exactly one question expected")
    name, pos = _read_name(msg, _HEADER.size)
    if pos + 4 > len(msg):
        raise DNSFormatError("truncated question")
    qtype, qclass = struct.unpack_from("!HH", msg, pos)
    question = msg[_HEADER.size : pos + 4]
    pos += 4
    udp_size = 512
    # Skip answer/authority records, then look for EDNS OPT among the additional records.
    for index in range(ancount + nscount + arcount):
        pos = _skip_rr_name(msg, pos)
        if pos + 10 > len(msg):
            raise DNSFormatError("truncated record")
        rtype, rclass, _ttl, rdlen = struct.unpack_from("!HHIH", msg, pos)
        if index >= ancount + nscount and rtype == _OPT:
            udp_size = max(512, min(rclass, 4096))
        pos += 10 + rdlen
        if pos > len(msg):
            raise DNSFormatError("truncated rdata")
    return Query(qid, flags, name, qtype, qclass, question, udp_size)


def encode_name(name: str) -> bytes:
    """Uncompressed wire form of a dotted name."""
    out = bytearray()
    for label in name.strip(".").split("."):
        if not label:
            continue
        raw = label.encode("ascii")
        if len(raw) > 63:
            raise ValueError(f"label too long in {name!r}")
        out += bytes([len(raw)]) + raw
    return bytes(out + b"\x00")


def build_response(
    query: Query,
    rcode: Rcode,
    answers: list[tuple[int, int, str]] | None = None,
    *,
    max_size: int | None = None,
) -> bytes:
    """Build an authoritative response to ``query``.

    ``answers`` are ``(rrtype, ttl, address)`` for the queried name (A or AAAA). When the
    message would exceed ``max_size`` (UDP), answers are dropped and TC is set so the client
    retries over TCP.
    """
    answers = answers or []
    flags = _QR | _AA | _RA | (query.flags & _RD) | (query.opcode << 11) | int(rcode)
    records = bytearray()
    for rrtype, ttl, address in answers:
        rdata = ipaddress.ip_address(address).packed
        # 0xC00C points at the question name right after the 12-byte header
        records += struct.pack("!HHHIH", 0xC00C, rrtype, CLASS_IN, ttl, len(rdata)) + rdata
    message = _HEADER.pack(query.id, flags, 1, len(answers), 0, 0) + query.question + records
    if max_size is not None and len(message) > max_size:
        flags |= _TC
        message = _HEADER.pack(query.id, flags, 1, 0, 0, 0) + query.question
    return message


def formerr(msg: bytes) -> bytes | None:
    """A FORMERR reply echoing the id of an unparseable message (None if not even a header)."""
    if len(msg) < _HEADER.size:
        return None
    qid, flags = struct.unpack_from("!HH", msg)
    if flags & _QR:
        return None  # never answer responses: that is how reflection loops start
    return _HEADER.pack(qid, _QR | (flags & _RD) | int(Rcode.FORMERR), 0, 0, 0, 0)
