"""DNSServer on loopback alone (no lab, no root) and its wire format."""

from __future__ import annotations

import asyncio
import socket
import struct
import time

import aiodns
import pytest

from apr_async.lab.dnsserver import DNSServer, ZoneEntry
from apr_async.lab.dnswire import (
    DNSFormatError,
    Rcode,
    RRType,
    build_response,
    encode_name,
    parse_query,
)

ZONE = {
    "both.example.test": ZoneEntry(a=["127.0.0.1"], aaaa=["::1", "2001:db8::1"], ttl=42),
    "slow.example.test.": ZoneEntry(a=["127.0.0.2"], aaaa=["::2"], delay_aaaa=0.2),
    "big.example.test": ZoneEntry(aaaa=[f"2001:db8::{i:x}" for i in range(1, 41)]),
}


def make_query(name: str, qtype: int, qid: int = 0x1234, *, edns: int | None = None) -> bytes:
    header = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 1 if edns else 0)
    msg = header + encode_name(name) + struct.pack("!HH", qtype, 1)
    if edns:
        msg += b"\x00" + struct.pack("!HHIH", 41, edns, 0, 0)
    return msg


async def udp_exchange(port: int, msg: bytes, wait: float = 2.0) -> bytes:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, ("127.0.0.1", port))
        await loop.sock_sendall(sock, msg)
        return await asyncio.wait_for(loop.sock_recv(sock, 4096), wait)
    finally:
        sock.close()


async def test_aiodns_answers_nodata_nxdomain_ttl() -> None:
    async with DNSServer(ZONE, "127.0.0.1", 0) as server:
        resolver = aiodns.DNSResolver(nameservers=server.nameservers, timeout=2, tries=1)
        try:
            result = await resolver.query_dns("both.example.test", "AAAA")
            assert sorted(r.data.addr for r in result.answer) == ["2001:db8::1", "::1"]
            assert {r.ttl for r in result.answer} == {42}
            with pytest.raises(aiodns.error.DNSError) as nx:
                await resolver.query_dns("missing.example.test", "A")
            assert nx.value.args[0] == aiodns.error.ARES_ENOTFOUND
            with pytest.raises(aiodns.error.DNSError) as nodata:
                await resolver.query_dns("both.example.test", "MX")
            assert nodata.value.args[0] == aiodns.error.ARES_ENODATA
        finally:
            await resolver.close()
        assert [q.name for q in server.queries][:1] == ["both.example.test"]


async def test_delay_holds_back_only_that_type() -> None:
    async with DNSServer(ZONE) as server:
        resolver = aiodns.DNSResolver(nameservers=server.nameservers, timeout=2, tries=1)
        try:
            start = time.monotonic()
            a, aaaa = await asyncio.gather(
                resolver.query_dns("slow.example.test", "A"),
                resolver.query_dns("slow.example.test", "AAAA"),
            )
            elapsed = time.monotonic() - start
        finally:
            await resolver.close()
        assert [r.data.addr for r in a.answer] == ["127.0.0.2"]
        assert [r.data.addr for r in aaaa.answer] == ["::2"]
        assert 0.2 <= elapsed < 1.0


async def test_large_answer_truncated_over_udp_complete_over_tcp() -> None:
    async with DNSServer(ZONE) as server:
        reply = await udp_exchange(server.port, make_query("big.example.test", RRType.AAAA))
        flags, _, ancount = struct.unpack_from("!HHH", reply, 2)
        assert flags & 0x0200 and ancount == 0  # TC set: retry over TCP
        big_edns = await udp_exchange(
            server.port, make_query("big.example.test", RRType.AAAA, edns=4096))
        assert struct.unpack_from("!H", big_edns, 6)[0] == 40
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            query = make_query("big.example.test", RRType.AAAA, qid=7)
            writer.write(struct.pack("!H", len(query)) + query)
            size = struct.unpack("!H", await reader.readexactly(2))[0]
            answer = await reader.readexactly(size)
        finally:
            writer.close()
            await writer.wait_closed()
        assert struct.unpack_from("!HHHH", answer)[0] == 7
        assert struct.unpack_from("!H", answer, 6)[0] == 40


async def test_garbage_gets_formerr_or_nothing() -> None:
    async with DNSServer(ZONE) as server:
        bad = struct.pack("!HHHHHH", 99, 0x0100, 2, 0, 0, 0) + b"\x00"
        reply = await udp_exchange(server.port, bad)
        assert struct.unpack_from("!H", reply)[0] == 99
        assert struct.unpack_from("!H", reply, 2)[0] & 0xF == Rcode.FORMERR
        # a too-short datagram is ignored; the server keeps serving afterwards
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            await loop.sock_sendto(sock, b"\x01\x02", ("127.0.0.1", server.port))
        finally:
            sock.close()
        ok = await udp_exchange(server.port, make_query("both.example.test", RRType.A))
        assert struct.unpack_from("!H", ok, 6)[0] == 1


async def test_stop_cancels_pending_delayed_answers_and_frees_port() -> None:
    server = DNSServer(ZONE)
    await server.start()
    port = server.port
    pending = asyncio.ensure_future(udp_exchange(port, make_query("slow.example.test", 28), 0.4))
    await asyncio.sleep(0.05)
    await server.stop()
    with pytest.raises(TimeoutError):
        await pending
    again = DNSServer(ZONE, "127.0.0.1", port)  # the port is free again
    async with again:
        assert again.port == port


def test_bad_input_is_rejected_before_io() -> None:
    with pytest.raises(ValueError):
        ZoneEntry(a=["::1"])
    with pytest.raises(ValueError):
        ZoneEntry(aaaa=["not an address"])
    with pytest.raises(TypeError):
        ZoneEntry(a="127.0.0.1")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ZoneEntry(ttl=-1)
    with pytest.raises(ValueError):
        ZoneEntry(delay_aaaa=float("nan"))
    with pytest.raises(ValueError):
        DNSServer(ZONE, "localhost")
    with pytest.raises(ValueError):
        DNSServer(ZONE, port=70000)
    with pytest.raises(TypeError):
        DNSServer({"x.test": ["127.0.0.1"]})  # type: ignore[dict-item]


def test_wire_round_trip() -> None:
    query = parse_query(make_query("Both.Example.TEST", RRType.AAAA, qid=5, edns=1232))
    assert (query.id, query.name, query.qtype, query.udp_size) == (
        5, "both.example.test", RRType.AAAA, 1232)
    reply = build_response(query, Rcode.NOERROR, [(RRType.AAAA, 60, "2001:db8::1")])
    qid, flags, qd, an = struct.unpack_from("!HHHH", reply)
    assert (qid, qd, an) == (5, 1, 1)
    assert flags & 0x8000 and flags & 0x0400 and flags & 0x0100  # QR, AA, RD copied
    assert reply.endswith(socket.inet_pton(socket.AF_INET6, "2001:db8::1"))
    with pytest.raises(DNSFormatError):
        parse_query(b"\x00" * 11)
    with pytest.raises(DNSFormatError):
        parse_query(make_query("x.test", 1)[:-3])
    with pytest.raises(DNSFormatError):  # compression pointer in the question
        parse_query(struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 0) + b"\xc0\x0c\x00\x01\x00\x01")
