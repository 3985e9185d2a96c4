"""The sans-IO PROXY protocol parser and builder: spec cases, properties, fuzzing."""

from __future__ import annotations

import importlib.util
import os
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from apr_async.server.proxy_header import (
    TLV,
    V1_MAX_LENGTH,
    V2_SIGNATURE,
    Command,
    HeaderTooLargeError,
    IncompleteHeaderError,
    ProxyFamily,
    ProxyHeader,
    ProxyProtocolError,
    TLVType,
    Transport,
)
from apr_async.server.proxy_protocol import HeaderParser, build_header, parse_header
from apr_async.server.proxy_v1 import build_v1
from apr_async.server.proxy_v2 import build_v2, crc32c

# --- v1 ---------------------------------------------------------------------------------


def test_v1_tcp4() -> None:
    h = parse_header(b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET / HTTP/1.1\r\n")
    assert (h.version, h.command, h.family, h.transport) == (
        1,
        Command.PROXY,
        ProxyFamily.INET,
        Transport.STREAM,
    )
    assert h.source == ("192.168.0.1", 56324)
    assert h.destination == ("192.168.0.11", 443)
    assert h.length == len(b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n")
    assert not h.is_local


def test_v1_tcp6_is_normalized() -> None:
    h = parse_header(b"PROXY TCP6 2001:DB8:0:0::1 ::1 65535 0\r\n")
    assert h.source == ("2001:db8::1", 65535)
    assert h.destination == ("::1", 0)


def test_v1_unknown_ignores_the_rest_of_the_line() -> None:
    short = parse_header(b"PROXY UNKNOWN\r\n")
    long = parse_header(b"PROXY UNKNOWN whatever the sender wrote 1 2\r\n")
    for h in (short, long):
        assert h.family is ProxyFamily.UNSPEC and h.is_local
        assert h.source is None and h.destination is None
    assert short.length == 15


def test_v1_worst_case_107_bytes_is_accepted_and_108_is_not() -> None:
    full = ":".join(["ffff"] * 8)
    line = f"PROXY UNKNOWN {full} {full} 65535 65535\r\n".encode()
    assert len(line) == V1_MAX_LENGTH
    assert parse_header(line).length == V1_MAX_LENGTH
    with pytest.raises(HeaderTooLargeError):
        parse_header(line[:-2] + b"x\r\n")


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",  # two spaces
        b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",  # leading zero in port
        b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n",  # leading zero in address
        b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",  # port out of range
        b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",  # trailing space
        b"PROXY TCP4 ::1 ::1 1 2\r\n",  # family mismatch
        b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n",  # zone id
        b"PROXY TCP6 [::1] ::1 1 2\r\n",
        b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n",  # case matters
        b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",  # missing field
        b"PROXY TCP4 1.2.3.4\t5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",  # LF alone must not end the line
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.\xc3\xa9 1 2\r\n",
        b"PROXY TCP4 256.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY\tTCP4 1.2.3.4 5.6.7.8 1 2\r\n",
        b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
    ],
)
def test_v1_rejects_what_the_spec_forbids(line: bytes) -> None:
    with pytest.raises(ProxyProtocolError):
        parse_header(line + b"trailing data\r\n")


# --- v2 ---------------------------------------------------------------------------------


def test_v2_tcp4_byte_layout() -> None:
    raw = build_v2(("10.0.0.1", 4000), ("10.0.0.2", 443))
    assert raw == (
        V2_SIGNATURE
        + bytes([0x21, 0x11])
        + struct.pack("!H", 12)
        + bytes([10, 0, 0, 1, 10, 0, 0, 2])
        + struct.pack("!HH", 4000, 443)
    )
    h = parse_header(raw + b"payload")
    assert h.source == ("10.0.0.1", 4000) and h.destination == ("10.0.0.2", 443)
    assert h.length == 28 and h.version == 2 and h.transport is Transport.STREAM


def test_v2_tcp6_udp6_and_unix() -> None:
    h6 = parse_header(build_v2(("2001:db8::1", 1), ("2001:db8::2", 2), transport=Transport.DGRAM))
    assert (h6.family, h6.transport) == (ProxyFamily.INET6, Transport.DGRAM)
    assert h6.source == ("2001:db8::1", 1) and h6.length == 16 + 36
    hu = parse_header(build_v2("/run/a.sock", "/run/b.sock"))
    assert hu.family is ProxyFamily.UNIX and hu.length == 16 + 216
    assert (hu.source_address, hu.destination_address) == ("/run/a.sock", "/run/b.sock")
    assert hu.source is None  # no (ip, port) for a UNIX peer


def test_v2_local_means_use_the_real_endpoints() -> None:
    # A LOCAL header may still carry addresses; the receiver must ignore them.
    h = parse_header(build_v2(("1.2.3.4", 1), ("5.6.7.8", 2), command=Command.LOCAL))
    assert h.command is Command.LOCAL and h.is_local and h.source is None
    assert parse_header(build_v2(None, None, command=Command.LOCAL)).length == 16


def test_v2_local_with_haproxy_style_crc_tlv() -> None:
    # Captured from HAProxy 2.6 health checks (check-send-proxy, proxy-v2-options crc32c).
    raw = V2_SIGNATURE + b" \x00\x00\x07\x03\x00\x04\xa9\xb8~\x8f"
    h = parse_header(raw)
    assert h.is_local and h.tlvs == (TLV(TLVType.CRC32C, b"\xa9\xb8~\x8f"),)


def test_v2_tlvs_are_kept_and_exposed() -> None:
    ssl_value = struct.pack("!BI", 0x01, 0) + struct.pack("!BH", 0x21, 7) + b"TLSv1.3"
    tlvs = [
        (TLVType.ALPN, b"h2"),
        (TLVType.AUTHORITY, b"example.com"),
        (TLVType.UNIQUE_ID, b"\x01" * 128),
        (TLVType.SSL, ssl_value),
        (TLVType.NETNS, b"blue"),
        (0xE0, b"custom"),
        (TLVType.NOOP, b""),
    ]
    h = parse_header(build_v2(("1.1.1.1", 1), ("2.2.2.2", 2), tlvs=tlvs, crc=True))
    assert [t.type for t in h.tlvs] == [*[t for t, _ in tlvs], TLVType.CRC32C]
    assert h.alpn == b"h2" and h.authority == "example.com" and h.netns == "blue"
    assert h.unique_id == b"\x01" * 128 and h.get_tlv(0xE0) == b"custom"
    assert h.ssl is not None and h.ssl.client == 1 and h.ssl.version == "TLSv1.3"
    assert h.get_tlv(0xE1) is None


def test_v2_crc32c_is_verified() -> None:
    raw = bytearray(build_v2(("1.1.1.1", 1), ("2.2.2.2", 2), crc=True))
    parse_header(bytes(raw))
    raw[16] ^= 1  # a source address bit
    with pytest.raises(ProxyProtocolError, match="CRC32C"):
        parse_header(bytes(raw))


def test_crc32c_check_value() -> None:
    assert crc32c(b"123456789") == 0xE3069283  # RFC 3720 B.4 / the usual check value


def _v2(ver_cmd: int = 0x21, fam: int = 0x11, body: bytes = bytes(12)) -> bytes:
    return V2_SIGNATURE + bytes([ver_cmd, fam]) + struct.pack("!H", len(body)) + body


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (_v2(ver_cmd=0x11), "version"),
        (_v2(ver_cmd=0x22), "command"),
        (_v2(fam=0x41), "family"),
        (_v2(fam=0x13), "family"),
        (_v2(fam=0x10), "combination"),
        (_v2(fam=0x01), "combination"),
        (_v2(body=bytes(11)), "address block"),
        (_v2(fam=0x21, body=bytes(35)), "address block"),
        (_v2(body=bytes(12) + b"\x05\x00"), "truncated TLV"),
        (_v2(body=bytes(12) + b"\x05\x00\x09abc"), "TLV longer"),
        (_v2(body=bytes(12) + b"\x03\x00\x02ab"), "CRC32C"),
        (_v2(body=bytes(12) + b"\x20\x00\x02ab"), "SSL"),
        (V2_SIGNATURE[:-1] + b"X" + bytes(4), "signature"),
    ],
)
def test_v2_rejects_malformed(raw: bytes, why: str) -> None:
    with pytest.raises(ProxyProtocolError, match=why):
        parse_header(raw)


def test_v2_oversized_is_rejected_from_the_fixed_part_alone() -> None:
    parser = HeaderParser(max_size=4096)
    with pytest.raises(HeaderTooLargeError):
        parser.feed(V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", 4096 - 15))
    assert parse_header(_v2(body=bytes(4096 - 16)), max_size=4096).length == 4096


def test_garbage_is_rejected_at_the_first_byte() -> None:
    for first in (b"G", b"\x16", b"\x00", b"P\x00"):
        with pytest.raises(ProxyProtocolError):
            HeaderParser().feed(first)


def test_version_restriction() -> None:
    v1 = build_v1(("1.2.3.4", 1), ("1.2.3.4", 2))
    v2 = build_v2(("1.2.3.4", 1), ("1.2.3.4", 2))
    assert parse_header(v1, version="v1").version == 1
    assert parse_header(v2, version="v2").version == 2
    with pytest.raises(ProxyProtocolError):
        parse_header(v2, version="v1")
    with pytest.raises(ProxyProtocolError):
        parse_header(v1, version="v2")


def test_incomplete_header() -> None:
    raw = build_v2(("1.2.3.4", 1), ("1.2.3.4", 2))
    with pytest.raises(IncompleteHeaderError):
        parse_header(raw[:-1])
    with pytest.raises(IncompleteHeaderError):
        parse_header(b"PROXY TCP4 1.2.3.4")


def test_bad_arguments_raise_before_anything() -> None:
    with pytest.raises(ValueError):
        HeaderParser("v3")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        HeaderParser(max_size=50)
    with pytest.raises(ValueError):
        build_v1(("1.2.3.4", 1), ("::1", 2))
    with pytest.raises(ValueError):
        build_v1(("1.2.3.4", 70000), ("1.2.3.4", 2))
    with pytest.raises(ValueError):
        build_v2(("1.2.3.4", True), ("1.2.3.4", 2))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        build_v2(("1.2.3.4", 1), None)
    with pytest.raises(ValueError):
        build_v2("x" * 108, "y")
    with pytest.raises(ValueError):
        build_v2(None, None, tlvs=[(256, b"")])


# --- properties -------------------------------------------------------------------------

# Canonical text, as the parser returns it (inet_ntop's form, e.g. ::ffff:192.0.2.1).
ipv4 = st.binary(min_size=4, max_size=4).map(lambda b: socket.inet_ntop(socket.AF_INET, b))
ipv6 = st.one_of(
    st.binary(min_size=16, max_size=16),
    st.binary(min_size=4, max_size=4).map(lambda b: bytes(10) + b"\xff\xff" + b),
).map(lambda b: socket.inet_ntop(socket.AF_INET6, b))
ports = st.integers(0, 0xFFFF)
endpoint_pairs = st.one_of(
    st.tuples(st.tuples(ipv4, ports), st.tuples(ipv4, ports)),
    st.tuples(st.tuples(ipv6, ports), st.tuples(ipv6, ports)),
)
# CRC32C and SSL have inner structure; they get their own tests.
plain_tlvs = st.lists(
    st.tuples(
        st.integers(0, 255).filter(lambda t: t not in (TLVType.CRC32C, TLVType.SSL)),
        st.binary(max_size=40),
    ),
    max_size=6,
)


@st.composite
def v2_headers(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["inet", "unix", "unspec"]))
    tlvs = draw(plain_tlvs)
    command = draw(st.sampled_from(Command))
    crc = draw(st.booleans())
    if kind == "unspec":
        return build_v2(None, None, command=command, tlvs=tlvs, crc=crc)
    transport = draw(st.sampled_from([Transport.STREAM, Transport.DGRAM]))
    if kind == "unix":
        path = st.text(st.characters(min_codepoint=1, max_codepoint=0x7F), min_size=1, max_size=100)
        src, dst = draw(path), draw(path)
        return build_v2(src, dst, command=command, transport=transport, tlvs=tlvs, crc=crc)
    src_ep, dst_ep = draw(endpoint_pairs)
    return build_v2(src_ep, dst_ep, command=command, transport=transport, tlvs=tlvs, crc=crc)


v1_headers = st.one_of(
    st.just(b"PROXY UNKNOWN\r\n"), endpoint_pairs.map(lambda pair: build_v1(*pair))
)
any_header = st.one_of(v1_headers, v2_headers())


@given(endpoint_pairs, st.sampled_from([Command.PROXY, Command.LOCAL]), plain_tlvs)
def test_roundtrip_v2_fields(
    pair: tuple[tuple[str, int], tuple[str, int]], command: Command, tlvs: list[tuple[int, bytes]]
) -> None:
    src, dst = pair
    h = parse_header(build_v2(src, dst, command=command, tlvs=tlvs))
    assert (h.source_address, h.source_port) == src
    assert (h.destination_address, h.destination_port) == dst
    assert h.command is command and h.is_local == (command is Command.LOCAL)
    assert [tuple(t) for t in h.tlvs] == [tuple(t) for t in tlvs]


@given(endpoint_pairs)
def test_roundtrip_v1_fields(pair: tuple[tuple[str, int], tuple[str, int]]) -> None:
    h = parse_header(build_v1(*pair))
    assert (h.source, h.destination) == pair


@given(any_header)
def test_build_parse_build_is_byte_exact(raw: bytes) -> None:
    header = parse_header(raw)
    assert header.length == len(raw)
    assert build_header(header) == raw


@given(any_header, st.binary(max_size=64), st.data())
def test_split_feeding_and_exact_reads(raw: bytes, after: bytes, data: st.DataObject) -> None:
    """However the bytes arrive, the header is the same, and bytes_needed never over-reads."""
    whole = parse_header(raw + after)
    # Arbitrary segmentation: the parser only ever returns the header once it is complete.
    cuts = sorted(data.draw(st.sets(st.integers(1, len(raw) + len(after) - 1 or 1))))
    parser, start, result = HeaderParser(), 0, None
    for cut in [*cuts, len(raw) + len(after)]:
        result = parser.feed((raw + after)[start:cut])
        start = cut
    assert result == whole and parser.trailing == after
    # A reader that reads exactly bytes_needed() stops at the header's last byte.
    parser, pos = HeaderParser(), 0
    while (n := parser.bytes_needed()) > 0:
        parser.feed((raw + after)[pos : pos + n])
        pos += n
    assert pos == len(raw) and parser.header == whole and parser.trailing == b""


@given(st.binary(max_size=300))
@example(V2_SIGNATURE + b"\x21\x31\x00\x00")
@example(b"PROXY UNKNOWN\r\n")
def test_arbitrary_bytes_never_crash_the_parser(data: bytes) -> None:
    _only_own_errors(data)


@given(st.sampled_from([V2_SIGNATURE + b"\x20", V2_SIGNATURE + b"\x21", b"PROXY "]), st.binary())
def test_arbitrary_bytes_after_a_valid_prefix(prefix: bytes, data: bytes) -> None:
    _only_own_errors(prefix + data)


@given(any_header, st.data())
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_mutated_headers_never_crash_the_parser(raw: bytes, data: st.DataObject) -> None:
    mutated = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(mutated) - 1))
        mutated[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(mutated)))
    _only_own_errors(bytes(mutated[:cut]))


def _only_own_errors(data: bytes) -> None:
    try:
        header = parse_header(data)
    except ProxyProtocolError:
        return
    assert isinstance(header, ProxyHeader)
    assert 15 <= header.length <= len(data)


# --- atheris (coverage-guided fuzzing), when it is installed ------------------------------

HARNESS = Path(__file__).with_name("fuzz_proxy_protocol.py")


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None, reason="atheris not installed")
def test_atheris_fuzz_run(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        [sys.executable, str(HARNESS), "-atheris_runs=30000", f"-artifact_prefix={tmp_path}/"],
        capture_output=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
