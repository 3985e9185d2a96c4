"""Input checks, gaierror mapping and the aiodns resolver against a real DNS server on loopback."""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import os
import pickle
import socket
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import NamedTuple

import pytest

from apr_async.connect.errors import AllAttemptsFailedError
from apr_async.errors import (
    EAI_NODATA,
    describe_error,
    gaierror,
    gaierror_from_ares,
    parse_host,
    validate_family,
    validate_port,
)
from apr_async.lab.dnsserver import DNSServer, ZoneEntry
from apr_async.lab.dnswire import Query, Rcode
from apr_async.resolve.resolver import Resolver

# --------------------------------------------------------------------------- input checks


@pytest.mark.parametrize(
    ("host", "exc", "match"),
    [
        ("", ValueError, "empty"),
        ("a\0b.example", ValueError, "NUL"),
        (b"a\0b", ValueError, "NUL"),
        ("a" * 64 + ".example", ValueError, "label of 64"),
        (".".join(["abcdefghi"] * 26), ValueError, "253"),
        ("a..example", ValueError, "empty label"),
        (".", ValueError, "not a valid name"),
        ("exa mple.com", ValueError, "whitespace"),
        ("127.0.0.1\n", ValueError, "control character"),  # getaddrinfo says EAI_NONAME
        ("127.0.0.1%lo", ValueError, "only valid on an IPv6"),
        ("fe80::1%", ValueError, "zone"),
        ("fe80::zz%eth0", ValueError, "not a valid IPv6"),
        (b"\xff.example", ValueError, "ASCII"),
        (None, TypeError, "str or bytes"),
        (12, TypeError, "str or bytes"),
        (["example.com"], TypeError, "str or bytes"),
    ],
)
def test_bad_hosts_are_rejected_clearly(host: object, exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        parse_host(host)


def test_longest_legal_name_is_accepted() -> None:
    name = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])
    assert len(name) == 253
    assert parse_host(name + ".").name == name


@pytest.mark.parametrize(
    ("host", "ip", "zone"),
    [
        ("192.0.2.7", "192.0.2.7", None),
        ("127.1", "127.0.0.1", None),
        ("2001:db8::1", "2001:db8::1", None),
        ("[2001:db8::1]", "2001:db8::1", None),
        ("fe80::1%eth0", "fe80::1", "eth0"),
        ("fe80::1%3", "fe80::1", "3"),
        (b"10.0.0.1", "10.0.0.1", None),
    ],
)
def test_literals_need_no_dns(host: str | bytes, ip: str, zone: str | None) -> None:
    spec = parse_host(host)
    assert spec.is_literal
    assert spec.ip == ipaddress.ip_address(ip)
    # The zone is kept apart: an IPv6Address carrying it would not equal the plain address.
    assert spec.ip is not None and str(spec.ip) == ip
    assert spec.zone == zone
    assert spec.name is None


def test_names_are_lowercased_idna_without_trailing_dot() -> None:
    assert parse_host("WWW.Example.COM.").name == "www.example.com"
    assert parse_host("bücher.example").name == "xn--bcher-kva.example"
    assert parse_host("bücher.example").text == "bücher.example"


@pytest.mark.parametrize(
    ("port", "expected"),
    [(None, 0), (0, 0), (443, 443), (65535, 65535), ("8080", 8080), (b"53", 53),
     ("https", "https")],
)
def test_ports(port: object, expected: int | str) -> None:
    assert validate_port(port) == expected


@pytest.mark.parametrize(
    ("port", "exc"),
    [(-1, ValueError), (65536, ValueError), ("70000", ValueError), ("", ValueError),
     ("ht\0tp", ValueError), (True, TypeError), (1.5, TypeError), ([80], TypeError)],
)
def test_bad_ports(port: object, exc: type[Exception]) -> None:
    with pytest.raises(exc, match="port"):
        validate_port(port)


def test_family_checks() -> None:
    assert validate_family(socket.AF_INET6) == socket.AF_INET6
    with pytest.raises(ValueError, match="AF_UNSPEC"):
        validate_family(socket.AF_UNIX)
    with pytest.raises(TypeError):
        validate_family("inet")


# --------------------------------------------------------------------------- gaierror mapping


@pytest.mark.parametrize(
    ("status", "code"),
    [
        ("ARES_ENOTFOUND", socket.EAI_NONAME),
        ("ARES_ENODATA", EAI_NODATA),
        ("ARES_ESERVFAIL", socket.EAI_AGAIN),
        ("ARES_ETIMEOUT", socket.EAI_AGAIN),
        ("ARES_EREFUSED", socket.EAI_AGAIN),
        ("ARES_ECONNREFUSED", socket.EAI_AGAIN),
        ("ARES_EBADRESP", socket.EAI_FAIL),
    ],
)
def test_ares_status_maps_to_stdlib_code(status: str, code: int) -> None:
    err = gaierror_from_ares(status, host="h.example")
    assert isinstance(err, socket.gaierror)
    assert err.errno == code
    assert err.host == "h.example"
    assert err.detail == status


def test_gaierror_looks_like_the_stdlibs() -> None:
    with pytest.raises(socket.gaierror) as real:
        socket.getaddrinfo("x.invalid", 80, flags=socket.AI_NUMERICHOST)
    ours = gaierror(real.value.errno)
    assert ours.args == real.value.args
    assert str(ours) == str(real.value)
    clone = pickle.loads(pickle.dumps(gaierror(socket.EAI_AGAIN, host="h", detail="d")))
    assert (clone.errno, clone.host, clone.detail) == (socket.EAI_AGAIN, "h", "d")


class _Pair(NamedTuple):
    source: tuple[str, int] | tuple[str, int, int, int] | None
    destination: tuple[str, int] | tuple[str, int, int, int]


def test_describe_error_is_one_clean_line() -> None:
    refused = ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed ('127.0.0.1', 1)")
    v4 = _Pair(("127.0.0.1", 0), ("127.0.0.1", 18081))
    one = AllAttemptsFailedError.from_attempts("localhost", 18081, [(v4, refused)])
    assert type(one).__name__ == "AllAttemptsFailedConnectionRefusedError"
    assert describe_error(one) == "connection refused by 127.0.0.1:18081"
    v6 = _Pair(("::1", 0, 0, 0), ("::1", 18081, 0, 0))
    dead = _Pair(None, ("2001:db8::9", 80, 0, 0))
    several = AllAttemptsFailedError.from_attempts(
        "h", 18081, [(v6, refused), (dead, TimeoutError()), (v4, refused),
                     (_Pair(None, ("192.0.2.1", 80)), OSError(errno.ENETUNREACH, "x"))])
    assert describe_error(several) == (
        "connection refused by [::1]:18081, 127.0.0.1:18081; no answer from [2001:db8::9]:80; "
        "network unreachable: 192.0.2.1:80"
    )
    # One destination from two sources: the sources tell the attempts apart.
    twice = AllAttemptsFailedError.from_attempts("h", 80, [
        (_Pair(("10.0.0.1", 0), ("192.0.2.1", 80)), refused),
        (_Pair(("10.0.0.2", 0), ("192.0.2.1", 80)), refused)])
    assert describe_error(twice) == (
        "connection refused by 192.0.2.1:80 from 10.0.0.1, 192.0.2.1:80 from 10.0.0.2")
    assert describe_error(AllAttemptsFailedError.from_attempts("h", 80, [])) == (
        "no (source, destination) pair to try")
    assert describe_error(TimeoutError()) == "timed out"
    # connect(timeout=...) raises a race error that is also a TimeoutError: it leads the line
    expired = TimeoutError(errno.ETIMEDOUT, "timed out")
    late = AllAttemptsFailedError.from_attempts(
        "h", 80, [(v4, refused), (dead, TimeoutError())], cause=expired)
    assert isinstance(late, TimeoutError)
    assert describe_error(late) == (
        "timed out: connection refused by 127.0.0.1:18081; no answer from [2001:db8::9]:80")
    early = AllAttemptsFailedError.from_attempts("h", 80, [], cause=expired)
    assert describe_error(early) == "timed out before any attempt"
    assert describe_error(refused) == "connection refused"
    assert describe_error(ConnectionError("upstream did not answer")) == "upstream did not answer"
    assert describe_error(gaierror_from_ares("ARES_ENOTFOUND", host="nx.example")) == (
        "name resolution failed for nx.example: no such name (NXDOMAIN)")
    assert describe_error(gaierror_from_ares("ARES_ECONNREFUSED", host="a.example")) == (
        "name resolution failed for a.example: DNS server unreachable")
    assert describe_error(socket.gaierror(socket.EAI_NONAME, "Name or service not known")) == (
        "name resolution failed: Name or service not known")


# --------------------------------------------------------------------------- against a server

AAAA, A = 28, 1


class _FailingServer(DNSServer):
    """The lab server, plus names that SERVFAIL or REFUSE (real wire answers)."""

    def resolve(self, query: Query) -> tuple[Rcode, list[tuple[int, int, str]], float]:
        if query.name.startswith("servfail."):
            return Rcode.SERVFAIL, [], 0.0
        if query.name.startswith("refused."):
            return Rcode.REFUSED, [], 0.0
        return super().resolve(query)


ZONE = {
    "dual.example.test": ZoneEntry(a=["192.0.2.10", "192.0.2.11"], aaaa=["2001:db8::10"]),
    "v4.example.test": ZoneEntry(a=["192.0.2.20"]),
    "slow6.example.test": ZoneEntry(a=["192.0.2.30"], aaaa=["2001:db8::30"], delay_aaaa=0.15),
    "short.example.test": ZoneEntry(a=["192.0.2.40"], ttl=0),
    "long.example.test": ZoneEntry(a=["192.0.2.50"], ttl=86400),
    "mute.example.test": ZoneEntry(a=["192.0.2.60"], delay_a=5.0, delay_aaaa=5.0),
    "xn--bcher-kva.example.test": ZoneEntry(aaaa=["2001:db8::70"]),
}


class Clock:
    """A hand-driven clock for the cache (DNS itself runs in real time)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def server() -> AsyncIterator[DNSServer]:
    async with _FailingServer(ZONE, "127.0.0.1", 0) as srv:
        yield srv


@pytest.fixture
async def clock() -> Clock:
    return Clock()


@pytest.fixture
async def resolver(server: DNSServer, clock: Clock, tmp_path: Path) -> AsyncIterator[Resolver]:
    hosts = tmp_path / "hosts"
    hosts.write_text(
        "10.1.2.3 MyHost.example  alias.example # comment\n2001:db8::99 myhost.example\n"
    )
    async with Resolver(server.nameservers, timeout=0.5, tries=1, clock=clock,
                        hosts_path=str(hosts)) as res:
        yield res


def _count(server: DNSServer, name: str, qtype: int | None = None) -> int:
    return sum(1 for q in server.queries if q.name == name and qtype in (None, q.qtype))


def _ips(addresses: list[tuple[object, str | None]]) -> list[str]:
    return [str(ip) for ip, _zone in addresses]


async def test_both_families_ipv6_first_in_server_order(resolver: Resolver,
                                                        server: DNSServer) -> None:
    got = await resolver.resolve("dual.example.test")
    assert _ips(got) == ["2001:db8::10", "192.0.2.10", "192.0.2.11"]
    assert _count(server, "dual.example.test", AAAA) == 1
    assert _count(server, "dual.example.test", A) == 1


async def test_each_family_as_soon_as_it_arrives(resolver: Resolver, server: DNSServer) -> None:
    stream = resolver.answers("slow6.example.test")
    first = await anext(stream)
    # The A answer is out while the AAAA answer is still held back, yet the AAAA query was
    # already sent: the two queries run concurrently, not one after the other.
    assert first.family == socket.AF_INET
    assert _ips(list(first.addresses)) == ["192.0.2.30"]
    assert _count(server, "slow6.example.test", AAAA) == 1
    second = await anext(stream)
    assert second.family == socket.AF_INET6
    assert second.origin == "dns"
    with pytest.raises(StopAsyncIteration):
        await anext(stream)


async def test_answers_are_cached_for_their_ttl(resolver: Resolver, server: DNSServer,
                                                clock: Clock) -> None:
    await resolver.resolve("dual.example.test")
    cached = resolver.cached("DUAL.example.test.")
    assert cached is not None
    assert {a.origin for a in cached.answers} == {"cache"}
    await resolver.resolve("dual.example.test")
    assert resolver.queries_sent == 2
    clock.now += 299
    assert resolver.cached("dual.example.test") is not None
    clock.now += 2
    assert resolver.cached("dual.example.test") is None
    await resolver.resolve("dual.example.test")
    assert resolver.queries_sent == 4


async def test_is_cached_agrees_with_cached(resolver: Resolver, server: DNSServer,
                                            clock: Clock) -> None:
    # The fast path's cheap question must give cached()'s answer in every case.
    class Own(Resolver):
        pass

    def agree(res: Resolver, host: str, family: int = socket.AF_UNSPEC) -> bool:
        spec = parse_host(host)
        answer = res.is_cached(spec, family)
        assert answer is (res.cached(spec, family) is not None)
        return answer

    assert agree(resolver, "192.0.2.1") and agree(resolver, "::1")
    assert not agree(resolver, "dual.example.test")
    await resolver.resolve("dual.example.test", socket.AF_INET)
    assert agree(resolver, "dual.example.test", socket.AF_INET)
    assert not agree(resolver, "dual.example.test")  # no AAAA answer yet
    assert not agree(resolver, "dual.example.test", socket.AF_INET6)
    await resolver.resolve("dual.example.test")
    assert agree(resolver, "dual.example.test")
    clock.now += 301
    assert not agree(resolver, "dual.example.test")
    async with Own(server.nameservers, clock=clock, hosts_path=None) as own:
        await own.resolve("dual.example.test")
        assert agree(own, "dual.example.test")


async def test_ttl_is_clamped_to_floor_and_cap(server: DNSServer, clock: Clock) -> None:
    async with Resolver(server.nameservers, min_ttl=5, max_ttl=60, clock=clock,
                        hosts_path=None) as res:
        await res.resolve("short.example.test", socket.AF_INET)
        await res.resolve("long.example.test", socket.AF_INET)
        clock.now += 4.9
        assert res.cached("short.example.test", socket.AF_INET) is not None
        clock.now += 0.2
        assert res.cached("short.example.test", socket.AF_INET) is None
        clock.now += 54.8
        assert res.cached("long.example.test", socket.AF_INET) is not None
        clock.now += 0.2
        assert res.cached("long.example.test", socket.AF_INET) is None


async def test_nxdomain_is_eai_noname_and_cached_briefly(resolver: Resolver, server: DNSServer,
                                                         clock: Clock) -> None:
    for _ in range(2):
        with pytest.raises(socket.gaierror) as info:
            await resolver.resolve("nope.example.test")
        assert info.value.errno == socket.EAI_NONAME
        assert info.value.args[1] == "Name or service not known"
    assert _count(server, "nope.example.test") == 2  # one AAAA + one A, then the cache
    clock.now += resolver.negative_ttl + 0.1
    with pytest.raises(socket.gaierror):
        await resolver.resolve("nope.example.test")
    assert _count(server, "nope.example.test") == 4


async def test_nodata(resolver: Resolver) -> None:
    with pytest.raises(socket.gaierror) as info:
        await resolver.resolve("v4.example.test", socket.AF_INET6)
    assert info.value.errno == EAI_NODATA
    # Unspecified family: the name has an A record, so it resolves.
    assert _ips(await resolver.resolve("v4.example.test")) == ["192.0.2.20"]


@pytest.mark.parametrize("name", ["servfail.example.test", "refused.example.test",
                                  "mute.example.test"])
async def test_temporary_failures_are_eai_again(resolver: Resolver, name: str) -> None:
    with pytest.raises(socket.gaierror) as info:
        await resolver.resolve(name)
    assert info.value.errno == socket.EAI_AGAIN
    assert info.value.args[1] == "Temporary failure in name resolution"


async def test_concurrent_lookups_share_one_query(resolver: Resolver, server: DNSServer) -> None:
    results = await asyncio.gather(*(resolver.resolve("slow6.example.test") for _ in range(5)))
    assert all(_ips(r) == ["2001:db8::30", "192.0.2.30"] for r in results)
    assert _count(server, "slow6.example.test") == 2


async def test_cancelled_caller_leaves_query_for_others(resolver: Resolver,
                                                        server: DNSServer) -> None:
    first = asyncio.ensure_future(resolver.resolve("slow6.example.test"))
    second = asyncio.ensure_future(resolver.resolve("slow6.example.test"))
    await asyncio.sleep(0.05)
    first.cancel()
    assert _ips(await second) == ["2001:db8::30", "192.0.2.30"]
    assert first.cancelled()
    assert resolver.cached("slow6.example.test") is not None
    assert _count(server, "slow6.example.test") == 2


async def test_local_answers_need_no_dns(resolver: Resolver, server: DNSServer) -> None:
    assert _ips(await resolver.resolve("myhost.EXAMPLE")) == ["2001:db8::99", "10.1.2.3"]
    assert _ips(await resolver.resolve("alias.example", socket.AF_INET)) == ["10.1.2.3"]
    assert _ips(await resolver.resolve("localhost")) == ["::1", "127.0.0.1"]
    assert _ips(await resolver.resolve("db.localhost")) == ["::1", "127.0.0.1"]
    assert await resolver.resolve("fe80::1%lo") == [(ipaddress.IPv6Address("fe80::1"), "lo")]
    assert _ips(await resolver.resolve("192.0.2.1")) == ["192.0.2.1"]
    with pytest.raises(socket.gaierror) as info:
        await resolver.resolve("192.0.2.1", socket.AF_INET6)
    assert info.value.errno == getattr(socket, "EAI_ADDRFAMILY", socket.EAI_NONAME)
    with pytest.raises(socket.gaierror) as info:
        await resolver.resolve("alias.example", socket.AF_INET6)
    assert info.value.errno == socket.EAI_NONAME  # what glibc says for a hosts-file name
    assert server.queries == []


@pytest.mark.parametrize("host", ["invalid", "nx.invalid", "NX.Invalid.", "trap.invalid"])
async def test_invalid_names_are_nxdomain_without_a_query(
    server: DNSServer, tmp_path: Path, host: str
) -> None:
    # RFC 6761 6.4: an immediate negative answer, even when the hosts file lists the name.
    hosts = tmp_path / "hosts"
    hosts.write_text("10.9.9.9 trap.invalid\n")
    async with Resolver(server.nameservers, timeout=0.5, tries=1,
                        hosts_path=str(hosts)) as res:
        with pytest.raises(socket.gaierror) as info:
            await res.resolve(host)
        assert info.value.errno == socket.EAI_NONAME
        answers = [a async for a in res.answers(host)]
        assert [(a.family, a.origin, a.addresses) for a in answers] == [
            (socket.AF_INET6, "invalid", ()), (socket.AF_INET, "invalid", ())]
        assert all(a.error is not None and a.error.errno == socket.EAI_NONAME for a in answers)
        assert res.cached(host) is not None
        assert res.queries_sent == 0
    assert server.queries == []


async def test_localhost_names_are_loopback_without_a_query(server: DNSServer) -> None:
    async with Resolver(server.nameservers, timeout=0.5, tries=1, hosts_path=None) as res:
        for host in ("localhost", "LOCALHOST.", "a.b.localhost"):
            assert _ips(await res.resolve(host)) == ["::1", "127.0.0.1"]
            assert _ips(await res.resolve(host, socket.AF_INET)) == ["127.0.0.1"]
        assert res.queries_sent == 0
    assert server.queries == []


async def test_idna_names(resolver: Resolver) -> None:
    assert _ips(await resolver.resolve("bücher.example.test")) == ["2001:db8::70"]


async def test_bad_input_fails_before_any_query(resolver: Resolver, server: DNSServer) -> None:
    for bad in ("", "x" * 64 + ".test", "a\0b"):
        with pytest.raises(ValueError):
            await resolver.resolve(bad)
    with pytest.raises(ValueError, match="family"):
        await resolver.resolve("dual.example.test", socket.AF_UNIX)
    assert server.queries == []


async def test_nameserver_forms(server: DNSServer) -> None:
    async with Resolver([("127.0.0.1", server.port)], hosts_path=None) as res:
        assert _ips(await res.resolve("v4.example.test")) == ["192.0.2.20"]
    async with (
        _FailingServer(ZONE, "::1", 0) as v6server,
        Resolver([f"[::1]:{v6server.port}"], hosts_path=None) as res,
    ):
        assert _ips(await res.resolve("v4.example.test")) == ["192.0.2.20"]
    for bad in ("dns.example:53", "127.0.0.1:0", "[::1]:99999", ""):
        with pytest.raises((ValueError, TypeError)):
            Resolver([bad])


async def test_closed_resolver_refuses_dns_but_not_literals(server: DNSServer) -> None:
    res = Resolver(server.nameservers, hosts_path=None)
    await res.resolve("v4.example.test")
    await res.close()
    with pytest.raises(RuntimeError, match="closed"):
        await res.resolve("dual.example.test")
    assert _ips(await res.resolve("::1")) == ["::1"]


class _CnameProtocol(asyncio.DatagramProtocol):
    """Answers every query with ``<qname> CNAME target.example.test`` plus the target's
    records of the asked type (A 192.0.2.80, AAAA 2001:db8::80), TTLs 30 and 600."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        end = 12
        while data[end]:
            end += 1 + data[end]
        question = data[12:end + 5]
        qtype = int.from_bytes(data[end + 1:end + 3], "big")
        target = b"".join(bytes([len(p)]) + p for p in b"target.example.test".split(b".")) + b"\0"
        records = [struct.pack("!HHHIH", 0xC00C, 5, 1, 30, len(target)) + target]
        # 0xC000 | offset of the CNAME target inside the message
        pointer = 0xC000 | (12 + len(question) + 12)
        if qtype == 1:
            records.append(struct.pack("!HHHIH", pointer, 1, 1, 600, 4) + bytes([192, 0, 2, 80]))
        elif qtype == 28:
            rdata = ipaddress.IPv6Address("2001:db8::80").packed
            records.append(struct.pack("!HHHIH", pointer, 28, 1, 600, 16) + rdata)
        header = data[:2] + struct.pack("!HHHHH", 0x8580, 1, len(records), 0, 0)
        self.transport.sendto(header + question + b"".join(records), addr)  # type: ignore[attr-defined]


async def test_cname_chain_gives_canonname_and_min_ttl(clock: Clock) -> None:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(_CnameProtocol,
                                                       local_addr=("127.0.0.1", 0))
    try:
        port = transport.get_extra_info("sockname")[1]
        async with Resolver([("127.0.0.1", port)], hosts_path=None, clock=clock) as res:
            resolution = await res.lookup("alias.example.test")
            assert resolution.canonname == "target.example.test"
            assert _ips(resolution.addresses) == ["2001:db8::80", "192.0.2.80"]
            assert {a.ttl for a in resolution.answers} == {30.0}  # the CNAME's TTL bounds it
    finally:
        transport.close()


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
async def test_one_resolver_across_many_event_loops_does_not_pile_up_channels(
    server: DNSServer,
) -> None:
    # The default context's resolver outlives asyncio.run(): each run used to leave its
    # c-ares channel (sockets, thread) behind for good.
    res = Resolver(server.nameservers, hosts_path=None, timeout=0.5, tries=1)

    def runs(count: int) -> list[list[str]]:
        out = []
        for _ in range(count):
            res.clear_cache()
            out.append(_ips(asyncio.run(res.resolve("v4.example.test"))))
        return out

    try:
        assert await asyncio.to_thread(runs, 2) == [["192.0.2.20"]] * 2
        before = _open_fds()
        assert await asyncio.to_thread(runs, 10) == [["192.0.2.20"]] * 10
        # pycares destroys a dropped channel in its own shutdown thread, a moment later.
        for _ in range(100):
            if _open_fds() <= before:
                break
            await asyncio.sleep(0.05)
        assert _open_fds() <= before
    finally:
        await res.close()
