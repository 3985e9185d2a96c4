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

from .proxy_header import (
    DEFAULT_MAX_SIZE,
    V1_MAX_LENGTH,
    V1_MIN_LENGTH,
    V1_PREFIX,
    V2_FIXED_LENGTH,
    V2_SIGNATURE,
    Address,
    HeaderTooLargeError,
    IncompleteHeaderError,
    ProxyFamily,
    ProxyHeader,
    ProxyProtocolError,
    Version,
)
from .proxy_v1 import build_v1, parse_v1_line
from .proxy_v2 import build_v2, parse_v2

__all__ = ["HeaderParser", "build_header", "parse_header"]

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
        return parse_v1_line(bytes(buf[: end + 2]))

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
        return parse_v2(bytes(buf[:total]))


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
