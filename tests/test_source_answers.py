"""How the default pair source passes DNS answers to the race, and the resolver's prefetch.

The source ranks once per batch of answers: both families' answers landing in one loop turn
give one ranking across families (the schedule sees every pair at once, so a failing IPv6
pair cannot go first just because its answer was handled first); answers apart give each
family's own ranking, then the ranking of all. The scripted resolver below only decides
*when* each family's answer is there (the addresses are loopback ones, ranked for real).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import AsyncIterator, Sequence

import pytest

from apr_async.connect.source import ranked_source
from apr_async.connect.types import ConnectPair
from apr_async.core.failures import FailureTable
from apr_async.errors import HostSpec
from apr_async.lab.dnsserver import DNSServer, ZoneEntry
from apr_async.resolve.answers import FamilyAnswer, Resolution
from apr_async.resolve.pairs import PairContext, get_addr_pairs
from apr_async.resolve.resolver import Resolver

V4, V6 = socket.AF_INET, socket.AF_INET6
ADDRESSES = {V6: (ipaddress.ip_address("::1"), None), V4: (ipaddress.ip_address("127.0.0.1"), None)}


class ScriptedResolver(Resolver):
    """Answers each family with its loopback address once that family's event is set."""

    def __init__(self) -> None:
        super().__init__(["127.0.0.1:9"], hosts_path=None)
        self.ready = {V6: asyncio.Event(), V4: asyncio.Event()}

    def cached(self, host: object, family: int = socket.AF_UNSPEC) -> Resolution | None:
        return None

    async def lookup(self, host: object, family: int = socket.AF_UNSPEC) -> Resolution:
        assert isinstance(host, HostSpec)
        await self.ready[family].wait()
        answer = FamilyAnswer(family, (ADDRESSES[family],), None, 60.0, "dns")
        return Resolution(host, (answer,))


async def collect(context: PairContext, release: list[list[int]]) -> list[tuple[int, list[str]]]:
    """The source's answers for "dual.test" while ``release`` sets the families' events, one
    batch per loop turn group (each batch in the same turn)."""
    resolver = context.get_resolver()
    assert isinstance(resolver, ScriptedResolver)
    source: AsyncIterator[tuple[int, Sequence[ConnectPair]]] = ranked_source(context)(
        "dual.test", 80, socket.AF_UNSPEC)

    async def releaser() -> None:
        for batch in release:
            await asyncio.sleep(0.01)
            for family in batch:
                resolver.ready[family].set()

    task = asyncio.create_task(releaser())
    try:
        return [(family, [p.destination[0] for p in pairs]) async for family, pairs in source]
    finally:
        await task


def failing_ipv6_context() -> PairContext:
    failures = FailureTable()
    failures.record_failure(ipaddress.ip_address("::1"), ipaddress.ip_address("::1"), 80, 0.0,
                            error="ETIMEDOUT")
    return PairContext(resolver=ScriptedResolver(), failures=failures, clock=lambda: 1.0)


async def test_answers_in_one_turn_are_ranked_once_across_families() -> None:
    context = failing_ipv6_context()
    answers = await collect(context, [[V6, V4]])
    # One answer for every family: IPv4 first, since the IPv6 pair failed. Handled one
    # family at a time, the IPv6 pair would have been the first answer, so the first attempt.
    assert answers == [(socket.AF_UNSPEC, ["127.0.0.1", "::1"])]


async def test_answers_apart_give_each_family_then_the_whole_ranking() -> None:
    context = failing_ipv6_context()
    answers = await collect(context, [[V4], [V6]])
    assert answers == [(V4, ["127.0.0.1"]), (V6, ["127.0.0.1", "::1"])]
    answers = await collect(PairContext(resolver=ScriptedResolver()), [[V6], [V4]])
    assert answers == [(V6, ["::1"]), (V4, ["::1", "127.0.0.1"])]


async def test_the_whole_ranking_is_get_addr_pairs_ranking() -> None:
    zone = {"dual.test": ZoneEntry(a=("127.0.0.1",), aaaa=("::1",), ttl=60)}
    async with DNSServer(zone, "127.0.0.1", 0) as dns:
        resolver = Resolver([f"127.0.0.1:{dns.port}"], hosts_path=None, timeout=2.0)
        try:
            context = PairContext(resolver=resolver, failures=failing_ipv6_context().failures,
                                  clock=lambda: 1.0)
            source = ranked_source(context)("dual.test", 80, socket.AF_UNSPEC)
            last: Sequence[ConnectPair] = ()
            async for _family, pairs in source:
                last = pairs
            expected = await get_addr_pairs("dual.test", 80, context=context)
            assert list(last) == expected
        finally:
            await resolver.close()


async def test_prefetch_sends_the_queries_a_lookup_then_joins() -> None:
    zone = {"dual.test": ZoneEntry(a=("127.0.0.1",), aaaa=("::1",), ttl=60)}
    async with DNSServer(zone, "127.0.0.1", 0) as dns:
        resolver = Resolver([f"127.0.0.1:{dns.port}"], hosts_path=None, timeout=2.0)
        try:
            resolver.prefetch("dual.test")
            assert resolver.queries_sent == 2  # sent at once, before any await
            resolution = await resolver.lookup("dual.test")
            assert resolver.queries_sent == 2  # the lookup joined them
            assert sorted(str(ip) for ip, _ in resolution.addresses) == ["127.0.0.1", "::1"]
            assert sorted((q.name, q.qtype) for q in dns.queries) == [
                ("dual.test", 1), ("dual.test", 28)]
            resolver.prefetch("dual.test")  # cached now
            resolver.prefetch("127.0.0.1")  # a literal
            resolver.prefetch("bad name!")  # lookup would reject it: so does nothing here
            resolver.prefetch("dual.test", 12345)  # a bad family: the same
            assert resolver.queries_sent == 2
        finally:
            await resolver.close()
        resolver.prefetch("other.test")  # closed: nothing sent, nothing raised
        assert resolver.queries_sent == 2


async def test_prefetch_leaves_a_failure_to_the_lookup() -> None:
    class Broken(Resolver):
        def _channel(self, loop: object, *args: object, **kwargs: object) -> object:  # type: ignore[override]
            raise RuntimeError("no channel")

    resolver = Broken(["127.0.0.1:9"], hosts_path=None)
    resolver.prefetch("dual.test")  # quietly nothing: only an optimisation
    with pytest.raises(RuntimeError, match="no channel"):
        await resolver.lookup("dual.test")  # the caller's own call reports it
    await resolver.close()
