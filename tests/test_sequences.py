"""Lists, tuples and generators are accepted wherever a user passes a sequence.

``Config(targets=["198.51.100.2"])`` is the first thing a user types; it and every public call
that takes a sequence normalise what they get, and still refuse a bare ``str`` (which would be
taken letter by letter) or elements of the wrong type, with a message saying what to write.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
from collections.abc import Callable, Iterable, Iterator

import pytest

import apr_async
from apr_async import Config, PairContext, SourceAddress, select_source, sort_destinations
from apr_async.core.ranking import rank_pairs
from apr_async.server import build_v1, real_peername, start_server


def gen(items: Iterable[str]) -> Iterator[str]:
    yield from items


KINDS: list[Callable[[list[str]], Iterable[str]]] = [list, tuple, gen]


@pytest.mark.parametrize("kind", KINDS, ids=["list", "tuple", "generator"])
def test_config_takes_any_sequence_and_keeps_a_tuple(
    kind: Callable[[list[str]], Iterable[str]],
) -> None:
    c = Config(
        targets=kind(["198.51.100.2", "[2001:db8::2]:8443"]),  # type: ignore[arg-type]
        nameservers=kind(["127.0.0.1:53"]),  # type: ignore[arg-type]
    )
    assert c.targets == ("198.51.100.2", "[2001:db8::2]:8443")
    assert c.nameservers == ("127.0.0.1:53",)
    assert [(t.host, t.port) for t in c.probe_targets] == [
        ("198.51.100.2", None),
        ("2001:db8::2", 8443),
    ]
    same = Config(targets=("198.51.100.2", "[2001:db8::2]:8443"), nameservers=("127.0.0.1:53",))
    assert c == same and hash(c) == hash(same)


def test_config_from_env_and_replace_normalise_lists_too() -> None:
    c = Config.from_env({}, targets=["192.0.2.7"])
    assert c.targets == ("192.0.2.7",)
    assert dataclasses.replace(c, nameservers=["::1"]).nameservers == ("::1",)


@pytest.mark.parametrize("field", ["targets", "nameservers"])
def test_config_refuses_a_bare_str_saying_what_to_write(field: str) -> None:
    with pytest.raises(TypeError, match=rf"Config\.{field} must be a sequence of str.*"
                                        r"not a single str: write \['127\.0\.0\.1'\]"):
        Config(**{field: "127.0.0.1"})  # type: ignore[arg-type]


@pytest.mark.parametrize("field", ["targets", "nameservers"])
def test_config_refuses_wrong_elements_and_non_sequences(field: str) -> None:
    with pytest.raises(TypeError, match=rf"Config\.{field} must contain str, not int"):
        Config(**{field: ["127.0.0.1", 53]})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=rf"Config\.{field} must be a sequence of str.*not int"):
        Config(**{field: 53})  # type: ignore[arg-type]
    with pytest.raises(ValueError):  # values are still validated after normalising
        Config(**{field: ["[2001:db8::1"]})  # type: ignore[arg-type]


V4 = SourceAddress("192.168.1.10", ifindex=2, interface="eth0", prefixlen=24)
GUA = SourceAddress("2001:db8:1::10", ifindex=2, interface="eth0", prefixlen=64)
ULA = SourceAddress("fd00:1::10", ifindex=2, interface="eth0", prefixlen=64)


def test_translators_seen_may_be_a_generator() -> None:
    # Consumed twice inside rank_pairs (ULA and NAT44 checks): a generator must be frozen once.
    dests = [(ipaddress.ip_address("2001:db8:2::1"), None)]
    pairs = rank_pairs(dests, [ULA], 443, translators_seen=gen(["nptv6"]))
    assert "last:" not in pairs[0].reason
    ctx = PairContext(translators_seen=gen(["nptv6", "nat44"]))
    assert ctx.translators_seen == frozenset({"nptv6", "nat44"})
    with pytest.raises(TypeError, match=r"PairContext\.translators_seen must be a sequence"):
        PairContext(translators_seen="nat44")


def test_rfc6724_calls_take_generators_of_addresses() -> None:
    chosen = select_source("2001:db8:2::1", (s for s in [V4, GUA]))
    assert chosen == GUA
    order = sort_destinations(gen(["198.51.100.1", "2001:db8:2::1"]), gen(["192.168.1.10",
                                                                          "2001:db8:1::10"]))
    assert [str(d) for d, _ in order] == ["2001:db8:2::1", "198.51.100.1"]
    pairs = rank_pairs(((ipaddress.ip_address(a), None) for a in ["198.51.100.1"]),
                       (s for s in [V4]), 443)
    assert [(p.source[0], p.destination[0]) for p in pairs] == [("192.168.1.10", "198.51.100.1")]
    with pytest.raises(TypeError, match="not one str"):
        sort_destinations("198.51.100.1", [V4])


@pytest.mark.parametrize("kind", KINDS, ids=["list", "tuple", "generator"])
async def test_start_server_trusted_proxies_any_sequence(
    kind: Callable[[list[str]], Iterable[str]],
) -> None:
    seen: list[tuple[str, int]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(real_peername(writer))
        writer.close()

    server = await start_server(handle, "127.0.0.1", 0, proxy_protocol="v1",
                                trusted_proxies=kind(["127.0.0.0/8"]), dualstack=False)
    async with server:
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(build_v1(("192.0.2.9", 9), ("127.0.0.1", port)))
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        await writer.wait_closed()
    assert seen == [("192.0.2.9", 9)]  # trusted: the header's source, not 127.0.0.1


@pytest.mark.parametrize("kind", KINDS, ids=["list", "tuple", "generator"])
async def test_aiohttp_nameservers_any_sequence(kind: Callable[[list[str]], Iterable[str]]) -> None:
    from apr_async.aiohttp import AprConnector, AprResolver

    resolver = AprResolver(nameservers=kind(["127.0.0.1:9"]))  # type: ignore[arg-type]
    assert resolver._context is not None and resolver._context.resolver is not None
    assert resolver._context.resolver.nameservers == ["127.0.0.1:9"]
    await resolver.close()
    connector = AprConnector(nameservers=kind(["127.0.0.1:9"]))  # type: ignore[arg-type]
    await connector.close()
    with pytest.raises(TypeError, match="not a str"):
        AprResolver(nameservers="127.0.0.1:9")


def test_public_names_still_exported() -> None:
    assert {"Config", "select_source", "sort_destinations"} <= set(apr_async.__all__)
