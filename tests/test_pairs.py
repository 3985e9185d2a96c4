"""get_addr_pairs / getaddrinfo / explain on loopback, names from a lab DNS server on 127.0.0.1.

Nothing here sends a packet beyond loopback: ranking asks the kernel for its route choice over
netlink (no traffic) and every connection goes to a listener on 127.0.0.1 or ::1.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import AsyncIterator

import pytest

from apr_async.lab.dnsserver import DNSServer, ZoneEntry
from apr_async.resolve import interfaces
from apr_async.resolve.addrinfo import getaddrinfo
from apr_async.resolve.explain import explain_text, format_pairs
from apr_async.resolve.pairs import (
    PairContext,
    default_context,
    get_addr_pairs,
    set_default_context,
)
from apr_async.resolve.resolver import Resolver

ZONE = {
    "loop.example.test": ZoneEntry(a=["127.0.0.2", "127.0.0.3"], aaaa=["::1"]),
    "v4loop.example.test": ZoneEntry(a=["127.0.0.1"]),
    "empty.example.test": ZoneEntry(),
}


@pytest.fixture
async def server() -> AsyncIterator[DNSServer]:
    async with DNSServer(ZONE, "127.0.0.1", 0) as srv:
        yield srv


@pytest.fixture
async def context(server: DNSServer) -> AsyncIterator[PairContext]:
    # The system hosts file, so localhost answers as the stdlib's getaddrinfo gives them.
    async with Resolver(server.nameservers, timeout=0.5, tries=1) as res:
        yield PairContext(resolver=res)


def _dst(pairs: list) -> list[str]:  # type: ignore[type-arg]
    return [pair.destination[0] for pair in pairs]


async def test_pairs_unpack_and_rank_v6_loopback_first(context: PairContext) -> None:
    pairs = await get_addr_pairs("loop.example.test", 8080, context=context)
    assert _dst(pairs) == ["::1", "127.0.0.2", "127.0.0.3"]
    af, sa, da = pairs[0]
    assert (af, sa, da) == (socket.AF_INET6, ("::1", 0, 0, 0), ("::1", 8080, 0, 0))
    assert pairs[1] == (socket.AF_INET, ("127.0.0.1", 0), ("127.0.0.2", 8080))
    assert all(pair.reason for pair in pairs)


async def test_the_first_pair_connects(context: PairContext) -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        af, sa, da = (await get_addr_pairs("v4loop.example.test", port, context=context))[0]
        _reader, writer = await asyncio.open_connection(*da[:2], family=af, local_addr=sa)
        writer.close()
        await writer.wait_closed()
    finally:
        server.close()
        await server.wait_closed()


async def test_recent_failure_goes_last_and_network_change_forgets_it(
    context: PairContext,
) -> None:
    now = context.clock()
    context.failures.record_failure(ipaddress.ip_address("::1"), ipaddress.ip_address("::1"),
                                    443, now)
    pairs = await get_addr_pairs("loop.example.test", 443, context=context)
    assert _dst(pairs) == ["127.0.0.2", "127.0.0.3", "::1"]
    assert pairs[-1].failing
    # Another port is another triple: unaffected.
    assert _dst(await get_addr_pairs("loop.example.test", 80, context=context))[0] == "::1"
    context.observe_network("a different network")
    assert _dst(await get_addr_pairs("loop.example.test", 443, context=context))[0] == "::1"


async def test_service_names_and_literals(context: PairContext, server: DNSServer) -> None:
    pairs = await get_addr_pairs("127.0.0.1", "http", context=context)
    assert pairs[0].destination == ("127.0.0.1", 80)
    pairs = await get_addr_pairs("::1", "domain", type=socket.SOCK_DGRAM, context=context)
    assert pairs[0].destination == ("::1", 53, 0, 0)
    assert server.queries == []
    with pytest.raises(socket.gaierror) as info:
        await get_addr_pairs("127.0.0.1", "no-such-service", context=context)
    assert info.value.errno == socket.EAI_SERVICE


async def test_link_local_literal_carries_the_scope_id(context: PairContext) -> None:
    lo = socket.if_nametoindex("lo")
    infos = await getaddrinfo("fe80::1%lo", 80, type=socket.SOCK_STREAM, context=context)
    assert infos == [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("fe80::1", 80, 0, lo))]
    infos = await getaddrinfo(f"fe80::1%{lo}", 80, type=socket.SOCK_STREAM, context=context)
    assert infos[0][4] == ("fe80::1", 80, 0, lo)
    with pytest.raises(socket.gaierror) as info:
        await getaddrinfo("fe80::1%nosuchif0", 80, context=context)
    assert info.value.errno == socket.EAI_NONAME


async def test_dns_failures_are_gaierrors(context: PairContext) -> None:
    with pytest.raises(socket.gaierror) as info:
        await get_addr_pairs("nxdomain.example.test", 80, context=context)
    assert info.value.errno == socket.EAI_NONAME
    with pytest.raises(socket.gaierror) as info:
        await get_addr_pairs("v4loop.example.test", 80, family=socket.AF_INET6, context=context)
    assert info.value.errno == getattr(socket, "EAI_NODATA", socket.EAI_NONAME)


@pytest.mark.parametrize(
    ("args", "kwargs", "exc"),
    [
        (("", 80), {}, ValueError),
        (("a" * 64 + ".test", 80), {}, ValueError),
        (("x.test", 65536), {}, ValueError),
        (("x.test", -1), {}, ValueError),
        (("x.test", 1.0), {}, TypeError),
        ((None, 80), {}, TypeError),
        (("x.test", 80), {"type": socket.SOCK_RAW}, ValueError),
        (("x.test", 80), {"family": socket.AF_UNIX}, ValueError),
        (("x.test", 80), {"family": "inet"}, TypeError),
    ],
)
async def test_bad_input_before_any_io(
    context: PairContext, server: DNSServer, args: tuple[object, object],
    kwargs: dict[str, object], exc: type[Exception],
) -> None:
    with pytest.raises(exc):
        await get_addr_pairs(*args, context=context, **kwargs)  # type: ignore[arg-type]
    assert server.queries == []


# --------------------------------------------------------------------------- getaddrinfo

GaiArgs = tuple[str | None, int | str | None, int, int, int, int]


@pytest.mark.parametrize(
    "args",
    [
        ("127.0.0.1", 80, 0, 0, 0, 0),
        ("127.0.0.1", "http", 0, 0, 0, 0),
        ("127.0.0.1", "domain", 0, 0, 0, 0),
        ("::1", 443, 0, socket.SOCK_STREAM, 0, 0),
        ("::1", 443, 0, 0, socket.IPPROTO_UDP, 0),
        ("127.0.0.1", None, 0, socket.SOCK_RAW, 0, 0),
        ("127.0.0.1", 80, 0, socket.SOCK_STREAM, 0, socket.AI_CANONNAME),
        ("127.0.0.1", None, 0, socket.SOCK_DGRAM, 0, socket.AI_NUMERICHOST),
        (None, 80, 0, socket.SOCK_STREAM, 0, 0),
        (None, 80, 0, socket.SOCK_STREAM, 0, socket.AI_PASSIVE),
        (None, 80, socket.AF_INET6, 0, 0, socket.AI_PASSIVE),
        ("localhost", 80, socket.AF_INET6, socket.SOCK_STREAM, 0, socket.AI_V4MAPPED),
        ("localhost", 80, socket.AF_INET, socket.SOCK_STREAM, 0, socket.AI_CANONNAME),
    ],
)
async def test_getaddrinfo_matches_the_stdlib(context: PairContext, args: GaiArgs) -> None:
    expected = socket.getaddrinfo(*args)
    got = await getaddrinfo(*args, context=context)
    assert got == expected
    assert [type_ for _f, type_, *_ in got] == [type_ for _f, type_, *_ in expected]
    assert all(isinstance(f, socket.AddressFamily) and isinstance(t, socket.SocketKind)
               for f, t, *_ in got)


@pytest.mark.parametrize(
    "args",
    [
        ("127.0.0.1", 80, socket.AF_UNIX, 0, 0, 0),
        ("127.0.0.1", 80, 0, 99, 0, 0),
        ("127.0.0.1", 80, 0, socket.SOCK_STREAM, socket.IPPROTO_UDP, 0),
        ("127.0.0.1", 80, 0, 0, 99, 0),
        ("127.0.0.1", 80, 0, 0, 0, 0x10000),
        (None, None, 0, 0, 0, 0),
        (None, 80, 0, 0, 0, socket.AI_CANONNAME),
        ("localhost", "http", 0, 0, 0, socket.AI_NUMERICSERV),
        ("localhost", "no-such-service", 0, 0, 0, 0),
        ("localhost", "http", 0, socket.SOCK_RAW, 0, 0),
        ("localhost", 80, 0, 0, 0, socket.AI_NUMERICHOST),
        ("127.0.0.1", 80, socket.AF_INET6, 0, 0, 0),
        ("127.0.0.1", 80, 0, socket.SOCK_RAW, 0, 0),
    ],
)
async def test_getaddrinfo_errors_match_the_stdlib(context: PairContext, args: GaiArgs) -> None:
    with pytest.raises(socket.gaierror) as real:
        socket.getaddrinfo(*args)
    with pytest.raises(socket.gaierror) as ours:
        await getaddrinfo(*args, context=context)
    assert ours.value.args == real.value.args


async def test_getaddrinfo_ranks_and_dedupes_destinations(context: PairContext) -> None:
    infos = await getaddrinfo("loop.example.test", 80, type=socket.SOCK_STREAM,
                              flags=socket.AI_CANONNAME, context=context)
    assert [i[4][0] for i in infos] == ["::1", "127.0.0.2", "127.0.0.3"]
    assert [i[3] for i in infos] == ["loop.example.test", "", ""]
    infos = await getaddrinfo("loop.example.test", 80, context=context)
    assert len(infos) == 9  # STREAM, DGRAM and RAW per address, like the stdlib
    infos = await getaddrinfo("loop.example.test", 80, socket.AF_INET, context=context)
    assert {i[0] for i in infos} == {socket.AF_INET}


async def test_getaddrinfo_addrconfig(context: PairContext) -> None:
    snapshot = interfaces.get_snapshot()
    has_v6 = any(s.address.version == 6 and not s.address.is_loopback for s in snapshot.sources)
    infos = await getaddrinfo("loop.example.test", 80, type=socket.SOCK_STREAM,
                              flags=socket.AI_ADDRCONFIG, context=context)
    assert ("::1" in [i[4][0] for i in infos]) == has_v6


async def test_explain_text(context: PairContext) -> None:
    text = await explain_text("loop.example.test", 443, context=context)
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["#", "source", "destination", "rtt"]
    assert lines[1].split()[:3] == ["1", "[::1]:0", "[::1]:443"]
    assert len(lines) == 4
    assert format_pairs([]) .splitlines()[0].startswith("#")


async def test_default_context_is_replaceable(context: PairContext) -> None:
    previous = default_context()
    try:
        set_default_context(context)
        assert default_context() is context
        assert _dst(await get_addr_pairs("v4loop.example.test", 80)) == ["127.0.0.1"]
        with pytest.raises(TypeError):
            set_default_context("nope")  # type: ignore[arg-type]
    finally:
        set_default_context(previous)


def test_rank_memo_dies_with_any_change_of_the_failure_table() -> None:
    from apr_async.connect.rank_memo import RankMemo
    from apr_async.core.failures import FailureTable
    from apr_async.core.ranking import AddrPair

    memo, ctx = RankMemo(), PairContext()
    ranked = [AddrPair(socket.AF_INET, ("127.0.0.1", 0), ("127.0.0.2", 80))]
    src, dst = ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("127.0.0.2")
    memo.put(ctx, ("h", 80, 0), ranked, now=0)  # type: ignore[arg-type]
    assert memo.get(ctx, "h", 80, 0, now=0.5) is ranked
    ctx.failures.record_success(src, dst, 80)  # nothing to clear: nothing changed
    assert memo.get(ctx, "h", 80, 0, now=0.5) is ranked
    # A failure recorded by someone else (the probe service), not through the recorders.
    ctx.failures.record_failure(src, dst, 80, now=0)
    assert memo.get(ctx, "h", 80, 0, now=0.5) is None
    memo.put(ctx, ("h", 80, 0), ranked, now=0)  # type: ignore[arg-type]
    ctx.failures.record_success(src, dst, 80)  # the failing pair may move up again
    assert memo.get(ctx, "h", 80, 0, now=0.5) is None
    memo.put(ctx, ("h", 80, 0), ranked, now=0)  # type: ignore[arg-type]
    ctx.failures = FailureTable()  # a new table, whatever its version
    assert memo.get(ctx, "h", 80, 0, now=0.5) is None
    memo.put(ctx, ("h", 80, 0), ranked, now=0)  # type: ignore[arg-type]
    assert memo.get(ctx, "h", 80, 0, now=memo.TTL) is None
