"""TOA/UOA: struct layouts byte for byte, and the real no-module path of this kernel."""

from __future__ import annotations

import asyncio
import ctypes
import errno
import socket
import struct
import subprocess
from pathlib import Path

import pytest

from apr_async.server import real_peername, start_server
from apr_async.server.toa import (
    TOA_SO_GET,
    TOA_SO_GET_NAT64,
    UOA_SO_GET_LOOKUP,
    ToaData,
    ToaNat64Peer,
    UoaParamMap,
    decode_toa,
    decode_toa_nat64,
    decode_uoa,
    encode_uoa_query,
    get_toa,
    getsockopt_inout,
    uoa_lookup,
)

from .conftest import needs_v6

# --- layouts ----------------------------------------------------------------------------


def test_toa_struct_layout_matches_the_header() -> None:
    # union addr (16) | __be16 port | __u8 family | __u8 set, packed: 20 bytes.
    assert ctypes.sizeof(ToaData) == 20
    offsets = {name: getattr(ToaData, name).offset for name, *_ in ToaData._fields_}
    assert offsets == {"addr": 0, "port": 16, "family": 18, "set": 19}


def test_toa_bytes_from_the_struct_are_the_kernel_bytes() -> None:
    data = ToaData()
    ctypes.memmove(data.addr, bytes([198, 51, 100, 7]), 4)
    data.port, data.family, data.set = 0x1F90, socket.AF_INET, 1
    expected = bytes([198, 51, 100, 7]) + bytes(12) + b"\x1f\x90" + bytes([socket.AF_INET, 1])
    assert bytes(data) == expected  # port is big-endian on the wire, whatever the host


def test_decode_toa() -> None:
    v4 = bytes([203, 0, 113, 9]) + bytes(12) + struct.pack("!HBB", 51000, socket.AF_INET, 1)
    assert decode_toa(v4) == ("203.0.113.9", 51000)
    ip6 = socket.inet_pton(socket.AF_INET6, "2001:db8::42")
    v6 = ip6 + struct.pack("!HBB", 443, socket.AF_INET6, 1)
    assert decode_toa(v6) == ("2001:db8::42", 443)
    assert decode_toa(v4[:-1] + b"\x00") is None  # set flag off: no TOA on this connection
    assert decode_toa(v4[:-2] + b"\x07\x01") is None  # unknown family
    assert decode_toa(v4[:19]) is None  # short answer


def test_uoa_struct_layout_matches_dpvs_uoa_h() -> None:
    assert ctypes.sizeof(UoaParamMap) == 58
    offsets = {name: getattr(UoaParamMap, name).offset for name, *_ in UoaParamMap._fields_}
    assert offsets == {
        "af": 0,
        "saddr": 2,
        "daddr": 18,
        "sport": 34,
        "dport": 36,
        "real_af": 38,
        "real_saddr": 40,
        "real_sport": 56,
    }


def test_uoa_query_bytes() -> None:
    param = encode_uoa_query(("10.1.2.3", 40000), ("10.9.8.7", 53))
    expected = (
        struct.pack("=H", socket.AF_INET)  # host order, as the module compares it
        + bytes([10, 1, 2, 3]).ljust(16, b"\x00")
        + bytes([10, 9, 8, 7]).ljust(16, b"\x00")
        + struct.pack("!HH", 40000, 53)
        + bytes(20)  # output half, for the kernel to fill
    )
    assert bytes(param) == expected


def test_uoa_query_v6_and_v4_mapped() -> None:
    param = encode_uoa_query(("2001:db8::1", 1, 0, 0), ("::", 2, 0, 0))
    assert bytes(param)[:2] == struct.pack("=H", socket.AF_INET6)
    assert bytes(param)[2:18] == socket.inet_pton(socket.AF_INET6, "2001:db8::1")
    assert bytes(param)[18:34] == bytes(16)
    # A dual-stack socket reports IPv4 clients as ::ffff:a.b.c.d; the module keys on IPv4.
    mapped = encode_uoa_query(("::ffff:192.0.2.5", 7, 0, 0), ("::", 9, 0, 0))
    assert bytes(mapped)[:6] == struct.pack("=H", socket.AF_INET) + bytes([192, 0, 2, 5])
    with pytest.raises(ValueError):
        encode_uoa_query(("10.0.0.1", 1), ("2001:db8::1", 2))
    with pytest.raises(ValueError):
        encode_uoa_query(("10.0.0.1", 70000), ("10.0.0.2", 2))


def test_decode_uoa_from_kernel_bytes() -> None:
    raw = bytearray(58)
    raw[38:40] = struct.pack("=H", socket.AF_INET)
    raw[40:44] = bytes([100, 64, 0, 1])
    raw[56:58] = struct.pack("!H", 12345)
    assert decode_uoa(UoaParamMap.from_buffer_copy(raw)) == ("100.64.0.1", 12345)
    raw[38:40] = struct.pack("=H", socket.AF_INET6)
    raw[40:56] = socket.inet_pton(socket.AF_INET6, "2001:db8::5")
    assert decode_uoa(UoaParamMap.from_buffer_copy(raw)) == ("2001:db8::5", 12345)
    raw[38:40] = struct.pack("=H", 7)  # a family we do not know
    assert decode_uoa(UoaParamMap.from_buffer_copy(raw)) is None
    assert decode_uoa(UoaParamMap()) is None  # nothing filled in at all


def test_toa_nat64_peer_layout_and_decode() -> None:
    assert ctypes.sizeof(ToaNat64Peer) == 20  # the module rejects a shorter buffer
    assert (ToaNat64Peer.saddr.offset, ToaNat64Peer.port.offset) == (0, 16)
    raw = socket.inet_pton(socket.AF_INET6, "2001:db8::9") + struct.pack("!H", 8443) + b"\0\0"
    assert decode_toa_nat64(raw) == ("2001:db8::9", 8443)
    assert decode_toa_nat64(bytes(20)) is None  # no address: nothing stored for the socket
    assert decode_toa_nat64(raw[:17]) is None


def test_uoa_answer_of_a_module_that_leaves_real_af_unset() -> None:
    # Older DPVS uoa_so_get copies real_saddr/real_sport only; real_af stays as we sent it.
    raw = bytearray(58)
    raw[40:44] = bytes([100, 64, 0, 1])
    raw[56:58] = struct.pack("!H", 12345)
    assert decode_uoa(UoaParamMap.from_buffer_copy(raw)) == ("100.64.0.1", 12345)
    raw[40:56] = socket.inet_pton(socket.AF_INET6, "2001:db8::5")
    assert decode_uoa(UoaParamMap.from_buffer_copy(raw)) == ("2001:db8::5", 12345)


# The structs as the headers declare them: DPVS kmod/uoa/uoa.h (uoa_param_map, inet_addr),
# DPVS kmod/toa/toa.h (toa_nat64_peer), and issue 7 (toa_data at 2049). The C compiler is
# the judge of sizes and offsets, and of the bytes of a filled-in UOA query.
C_LAYOUTS = r"""
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <arpa/inet.h>
#include <linux/types.h>
union inet_addr { struct in_addr in; struct in6_addr in6; };
struct uoa_param_map {
    __be16 af; union inet_addr saddr; union inet_addr daddr; __be16 sport; __be16 dport;
    __be16 real_af; union inet_addr real_saddr; __be16 real_sport;
} __attribute__((__packed__));
struct toa_nat64_peer { struct in6_addr saddr; __u16 port; };
struct toa_data {
    union { __be32 ip; struct in6_addr ip6; } addr; __be16 port; __u8 family; __u8 set;
} __attribute__((packed));
#define F(s, f) printf(#s "." #f " %zu\n", offsetof(struct s, f))
int main(void) {
    F(uoa_param_map, af); F(uoa_param_map, saddr); F(uoa_param_map, daddr);
    F(uoa_param_map, sport); F(uoa_param_map, dport); F(uoa_param_map, real_af);
    F(uoa_param_map, real_saddr); F(uoa_param_map, real_sport);
    F(toa_nat64_peer, saddr); F(toa_nat64_peer, port);
    F(toa_data, addr); F(toa_data, port); F(toa_data, family); F(toa_data, set);
    printf("uoa_param_map %zu\ntoa_nat64_peer %zu\ntoa_data %zu\n",
           sizeof(struct uoa_param_map), sizeof(struct toa_nat64_peer),
           sizeof(struct toa_data));
    struct uoa_param_map map; memset(&map, 0, sizeof(map));
    map.af = AF_INET; /* as DPVS's udp_serv.c does: host order */
    inet_pton(AF_INET, "10.1.2.3", &map.saddr.in); inet_pton(AF_INET, "10.9.8.7", &map.daddr.in);
    map.sport = htons(40000); map.dport = htons(53);
    printf("query ");
    for (size_t i = 0; i < sizeof(map); i++) printf("%02x", ((unsigned char *)&map)[i]);
    printf("\n");
    return 0;
}
"""


@pytest.mark.tools("cc")
def test_struct_layouts_match_the_c_definitions(tmp_path: Path) -> None:
    source, binary = tmp_path / "layouts.c", tmp_path / "layouts"
    source.write_text(C_LAYOUTS)
    subprocess.run(["cc", "-o", str(binary), str(source)], check=True, capture_output=True)
    out = subprocess.run([str(binary)], check=True, capture_output=True, text=True).stdout
    c = dict(line.split(" ", 1) for line in out.splitlines())
    for name, cls in (
        ("uoa_param_map", UoaParamMap),
        ("toa_nat64_peer", ToaNat64Peer),
        ("toa_data", ToaData),
    ):
        assert int(c[name]) == ctypes.sizeof(cls), name
        for field, *_ in cls._fields_:
            assert int(c[f"{name}.{field}"]) == getattr(cls, field).offset, (name, field)
    query = encode_uoa_query(("10.1.2.3", 40000), ("10.9.8.7", 53))
    assert bytes(query).hex() == c["query"]


# --- the real kernel, which has no TOA/UOA module ------------------------------------------


def _module_absent(sock: socket.socket, optname: int) -> bool:
    try:
        sock.getsockopt(socket.IPPROTO_IP, optname, 64)
    except OSError as exc:
        return exc.errno == errno.ENOPROTOOPT
    return False


def _tcp_pair(family: socket.AddressFamily, host: str) -> tuple[socket.socket, socket.socket]:
    with socket.create_server((host, 0), family=family) as listener:
        client = socket.create_connection(listener.getsockname()[:2])
        server, _ = listener.accept()
    return client, server


@pytest.mark.parametrize(
    ("family", "host"),
    [(socket.AF_INET, "127.0.0.1"), pytest.param(socket.AF_INET6, "::1", marks=needs_v6)],
)
def test_toa_without_the_module_is_none(family: socket.AddressFamily, host: str) -> None:
    client, server = _tcp_pair(family, host)
    with client, server:
        if not (_module_absent(server, TOA_SO_GET) and _module_absent(server, TOA_SO_GET_NAT64)):
            pytest.skip("a TOA module is loaded on this kernel")
        err, _ = getsockopt_inout(server, socket.IPPROTO_IP, TOA_SO_GET, ToaData())
        assert err == errno.ENOPROTOOPT
        err, _ = getsockopt_inout(server, socket.IPPROTO_IP, TOA_SO_GET_NAT64, ToaNat64Peer())
        assert err == errno.ENOPROTOOPT
        assert get_toa(server) is None


def test_uoa_without_the_module_is_none() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        if not _module_absent(sock, UOA_SO_GET_LOOKUP):
            pytest.skip("a UOA module is loaded on this kernel")
        param = encode_uoa_query(("127.0.0.1", 5000), sock.getsockname())
        err, _ = getsockopt_inout(sock, socket.IPPROTO_IP, UOA_SO_GET_LOOKUP, param)
        assert err == errno.ENOPROTOOPT
        assert uoa_lookup(sock, ("127.0.0.1", 5000)) is None


def test_closed_socket_is_a_caller_error() -> None:
    sock = socket.socket()
    sock.close()
    with pytest.raises(ValueError):
        get_toa(sock)


async def test_real_peername_with_toa_falls_back_to_the_peer() -> None:
    seen: list[tuple[str, int]] = []

    async def cb(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(real_peername(writer))
        writer.close()

    server = await start_server(cb, "127.0.0.1", 0, toa=True)
    async with server:
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await reader.read() == b""
        assert seen == [writer.get_extra_info("sockname")[:2]]
        writer.close()
        await writer.wait_closed()
