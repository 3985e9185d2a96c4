"""Coverage-guided fuzzing of the PROXY header parser with atheris (libFuzzer).

Run it directly: ``python tests/server/fuzz_proxy_protocol.py -atheris_runs=1000000``.
Any exception other than ``ProxyProtocolError`` is a crash; a header that parses must also
survive ``build_header`` and parse back to the same header (v1 lines and v2 headers alike).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from apr_async.server.proxy_header import ProxyProtocolError
    from apr_async.server.proxy_protocol import HeaderParser, build_header, parse_header


def test_one_input(data: bytes) -> None:
    try:
        header = parse_header(data)
    except ProxyProtocolError:
        return
    assert 15 <= header.length <= len(data)
    again = parse_header(build_header(header))
    assert (again.source, again.destination, again.command) == (
        header.source,
        header.destination,
        header.command,
    )
    # Byte-at-a-time feeding reaches the same header without reading past it.
    parser, pos = HeaderParser(), 0
    while (needed := parser.bytes_needed()) > 0:
        parser.feed(data[pos : pos + needed])
        pos += needed
    assert parser.header == header and pos == header.length


SEEDS = (
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
    b"PROXY TCP6 2001:db8::1 ::ffff:1.2.3.4 65535 0\r\n",
    b"PROXY UNKNOWN\r\n",
    b"\r\n\r\n\x00\r\nQUIT\n!\x11\x00\x0c" + bytes(12),
    b"\r\n\r\n\x00\r\nQUIT\n!\x21\x00\x2b" + bytes(36) + b"\x05\x00\x04abcd",
    b"\r\n\r\n\x00\r\nQUIT\n \x00\x00\x07\x03\x00\x04\xa9\xb8~\x8f",
    b"\r\n\r\n\x00\r\nQUIT\n!\x11\x00\x14" + bytes(12) + b"\x20\x00\x05\x01" + bytes(4),
)


def main() -> None:
    argv = list(sys.argv)
    with tempfile.TemporaryDirectory() as corpus:
        if not any(not arg.startswith("-") for arg in argv[1:]):
            # Without a corpus libFuzzer rarely guesses the 12-byte v2 signature; seed it.
            for i, seed in enumerate(SEEDS):
                Path(corpus, f"seed{i}").write_bytes(seed)
            argv.append(corpus)
        atheris.Setup(argv, test_one_input)
        atheris.Fuzz()


if __name__ == "__main__":
    main()
