"""get_addr_pairs in the lab: the ranked pairs themselves, bound and connected one by one.

The client side runs inside the client namespace (``lab.run_in``) with a resolver pointed at
the lab DNS server; every pair under test is used exactly as a caller would (``bind(SA)``,
``connect(DA)``) against an echo server that announces the peer address it saw.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from apr_async.lab import EchoServer, Lab, Scenario
from apr_async.resolve import interfaces
from apr_async.resolve.addrinfo import getaddrinfo, system_order
from apr_async.resolve.pairs import PairContext, get_addr_pairs
from apr_async.resolve.resolver import Resolver

pytestmark = [pytest.mark.lab, pytest.mark.asyncio(loop_scope="module")]

FAIL_AFTER = 1.0  # a pair that cannot work is given this long before it counts as failed


@dataclass(frozen=True)
class Row:
    family: int
    source: tuple[str, ...]
    destination: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class Outcome:
    rows: list[Row]
    #: for each pair index asked for: the peer address the server saw, or None if it failed
    connected: dict[int, str | None]
    #: the kernel's own source for the first destination
    kernel_source: str | None
    #: for each source asked for: the peer address its first pair got through as, or None
    connected_from: dict[str, str | None]


async def _connect(family: int, source: tuple, destination: tuple) -> str | None:  # type: ignore[type-arg]
    loop = asyncio.get_running_loop()
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.bind(source)
        await asyncio.wait_for(loop.sock_connect(sock, destination), FAIL_AFTER)
        line = await asyncio.wait_for(loop.sock_recv(sock, 200), FAIL_AFTER)
        words = line.decode().split()
        assert words[0] == "PEER", line
        return words[1]
    except (OSError, TimeoutError):
        return None
    finally:
        sock.close()


async def client_side(
    host: str,
    port: int,
    dns: list[str],
    *,
    connect: Sequence[int] = (0,),
    latency: Sequence[tuple[str, str, float]] = (),
    bind_kernel_source: bool = False,
    connect_from: Sequence[str] = (),
    translators_seen: frozenset[str] = frozenset(),
) -> Outcome:
    async with Resolver(dns, hosts_path=None, timeout=1.0) as resolver:
        ctx = PairContext(
            resolver=resolver, snapshot_max_age=0.0, translators_seen=translators_seen
        )
        for src, dst, rtt in latency:
            for _ in range(3):
                ctx.latency.record(ipaddress.ip_address(src), ipaddress.ip_address(dst), rtt,
                                   ctx.clock())
        pairs = await get_addr_pairs(host, port, context=ctx)
        rows = [Row(p.family, p.source, p.destination, p.reason) for p in pairs]
        first = ipaddress.ip_address(pairs[0].destination[0])
        choice = interfaces.route_choice(first)
        kernel = str(choice.source) if choice and choice.source else None
        connected = {i: await _connect(*pairs[i]) for i in connect}
        if bind_kernel_source and kernel is not None:
            src = (kernel, 0, 0, 0) if pairs[0].family == socket.AF_INET6 else (kernel, 0)
            connected[-1] = await _connect(pairs[0].family, src, pairs[0].destination)
        connected_from = {}
        for source in connect_from:
            first_from = next(p for p in pairs if p.source[0] == source)
            connected_from[source] = await _connect(*first_from)
        return Outcome(rows, connected, kernel, connected_from)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def echo(lab: Lab) -> AsyncIterator[EchoServer]:
    server = await lab.start_echo_server("server", announce_peer=True)
    yield server
    await lab.stop_echo_server(server)


async def run(lab: Lab, echo: EchoServer, host: str, **kw: object) -> Outcome:
    return await lab.run_in("client", client_side, host, echo.port, lab.dns_servers, **kw)


def _src(row: Row) -> str:
    return row.source[0]


async def test_ula_trap_gua_source_first_kernel_default_fails(
    healthy_lab: Lab, echo: EchoServer
) -> None:
    lab = healthy_lab
    await lab.set_scenario(Scenario.ula_source_trap())
    out = await run(lab, echo, lab.names.v6_only, bind_kernel_source=True)
    assert out.kernel_source == lab.client.ula  # what a plain connect() would use
    assert _src(out.rows[0]) == lab.client.gua
    assert out.rows[0].destination[0] == lab.server.v6[0]
    assert out.connected[0] == lab.client.gua
    assert out.connected[-1] is None  # binding the kernel's default source does not work
    ula_rows = [i for i, row in enumerate(out.rows) if _src(row) == lab.client.ula]
    assert all(i > 0 for i in ula_rows)
    assert "GUA" in out.rows[0].reason or "global" in out.rows[0].reason.lower()


async def test_link_local_pair_carries_the_scope_and_connects(
    healthy_lab: Lab, echo: EchoServer
) -> None:
    lab = healthy_lab
    host = f"{lab.server.direct_link_local}%{lab.client.direct_ifname}"
    out = await run(lab, echo, host)
    first = out.rows[0]
    assert first.family == socket.AF_INET6
    assert first.destination == (lab.server.direct_link_local, echo.port, 0,
                                 lab.client.direct_ifindex)
    assert first.source == (lab.client.direct_link_local, 0, 0, lab.client.direct_ifindex)
    assert out.connected[0] == lab.client.direct_link_local


async def test_ipv4_only_client_gets_ipv4_pairs_first(healthy_lab: Lab, echo: EchoServer) -> None:
    lab = healthy_lab
    await lab.set_scenario(Scenario.ipv4_only_client())
    out = await run(lab, echo, lab.names.multi)
    families = [row.family for row in out.rows]
    assert families[0] == socket.AF_INET
    assert families == sorted(families, key=lambda f: f != socket.AF_INET)
    public = [row for row in out.rows if _src(row) == lab.client.v4]
    assert [row.destination[0] for row in public] == list(lab.server.v4), out.rows
    assert out.connected[0] == lab.client.v4


async def test_ipv6_only_client_gets_ipv6_pairs_first(healthy_lab: Lab, echo: EchoServer) -> None:
    lab = healthy_lab
    await lab.set_scenario(Scenario.ipv6_only_client())
    out = await run(lab, echo, lab.names.multi)
    families = [row.family for row in out.rows]
    assert families[0] == socket.AF_INET6
    assert families == sorted(families, key=lambda f: f != socket.AF_INET6)
    assert _src(out.rows[0]) == lab.client.gua
    assert out.connected[0] == lab.client.gua


async def test_several_answers_rank_per_the_rules(healthy_lab: Lab, echo: EchoServer) -> None:
    lab = healthy_lab
    private = lab.client.private_v4
    out = await run(lab, echo, lab.names.multi, connect=(0, 3), connect_from=(private,))
    # Unmeasured: RFC 6724. IPv6 (GUA source) before IPv4, each family in DNS order; the ULA
    # source (no NPTv6 seen) and the RFC 1918 source next to the public one (no NAT44 seen)
    # only after every other pair.
    usable = [row for row in out.rows if _src(row) not in (lab.client.ula, private)]
    assert out.rows[: len(usable)] == usable
    assert {_src(row) for row in usable} == {lab.client.gua, lab.client.v4}
    assert [row.destination[0] for row in usable] == [*lab.server.v6, *lab.server.v4], out.rows
    doubtful = out.rows[len(usable):]
    assert {_src(row) for row in doubtful} == {lab.client.ula, private}
    for row in doubtful:
        assert ": last: needs " in row.reason, row.reason
    assert [row.destination[0] for row in doubtful if _src(row) == private] == list(lab.server.v4)
    assert out.connected == {0: lab.client.gua, 3: lab.client.v4}
    # Rightly last: the lab's internet drops the untranslated private source.
    assert out.connected_from == {private: None}


async def test_private_ipv4_source_is_an_alternative_once_nat44_was_seen(
    healthy_lab: Lab, echo: EchoServer
) -> None:
    lab = healthy_lab
    private = lab.client.private_v4
    await lab.set_scenario(Scenario.nat44_masquerade())
    out = await run(lab, echo, lab.names.v4_only, connect_from=(private, lab.client.v4),
                    translators_seen=frozenset({"nat44"}))
    rows = out.rows
    assert {_src(row) for row in rows} == {lab.client.v4, private}
    assert all("last:" not in row.reason for row in rows), rows
    # Rule 8 prefers the public source (203.0.113.194 shares more bits with the server's
    # addresses); the private one follows right after, to the same destination.
    assert [_src(row) for row in rows[:2]] == [lab.client.v4, private], rows
    assert rows[0].destination == rows[1].destination
    # It works, translated (the server sees the router's address, not 10.0.1.2).
    seen = out.connected_from[private]
    assert seen is not None and seen != private
    # Without a NAT44 seen (undetected) the private source stays usable, only last.
    out = await run(lab, echo, lab.names.v4_only, connect_from=(private,))
    assert _src(out.rows[-1]) == private
    assert ": last: needs NAT44, none seen;" in out.rows[-1].reason
    assert out.connected_from[private] is not None


async def test_measured_latency_puts_much_faster_ipv4_first(
    healthy_lab: Lab, echo: EchoServer
) -> None:
    lab = healthy_lab
    v4, v6 = lab.server.v4, lab.server.v6
    latency = [(lab.client.v4, v4[0], 0.001), (lab.client.gua, v6[0], 0.030),
               (lab.client.gua, v6[1], 0.030), (lab.client.gua, v6[2], 0.030)]
    out = await run(lab, echo, lab.names.multi, latency=latency)
    assert out.rows[0].destination[0] == v4[0]
    assert out.rows[0].family == socket.AF_INET
    assert out.connected[0] == lab.client.v4


async def test_nxdomain_is_gaierror(healthy_lab: Lab, echo: EchoServer) -> None:
    lab = healthy_lab
    with pytest.raises(socket.gaierror) as info:
        await run(lab, echo, lab.names.nxdomain)
    assert info.value.errno == socket.EAI_NONAME


async def test_getaddrinfo_in_the_lab(healthy_lab: Lab) -> None:
    lab = healthy_lab

    async def client(dns: list[str]) -> list[tuple]:  # type: ignore[type-arg]
        async with Resolver(dns, hosts_path=None) as resolver:
            ctx = PairContext(resolver=resolver)
            return [
                *await getaddrinfo(lab.names.dual, 443, type=socket.SOCK_STREAM, context=ctx),
                *await getaddrinfo(f"{lab.server.direct_link_local}%{lab.client.direct_ifname}",
                                   443, type=socket.SOCK_STREAM, context=ctx),
            ]

    infos = await lab.run_in("client", client, lab.dns_servers)
    assert [i[4] for i in infos] == [
        (lab.server.v6[0], 443, 0, 0),
        (lab.server.v4[0], 443),
        (lab.server.direct_link_local, 443, 0, lab.client.direct_ifindex),
    ]


# What glibc's getaddrinfo returns for a name whose hosts-file entries are the lab's server
# addresses, run in the client namespace with a private /etc/hosts (a mount namespace of its
# own: the host's file is untouched). NSS "files" keeps the file order, then glibc sorts.
_GLIBC_ORDER = """
import socket, sys
infos = socket.getaddrinfo("order.lab.test", 80, 0, socket.SOCK_STREAM)
print(" ".join(info[4][0] for info in infos))
"""


@pytest.mark.parametrize("scenario", ["healthy", "ula_source_trap", "ipv4_only_client"])
async def test_system_order_is_what_glibc_gives(healthy_lab: Lab, scenario: str,
                                                tmp_path: Path) -> None:
    lab = healthy_lab
    if scenario != "healthy":
        await lab.set_scenario(getattr(Scenario, scenario)())
    server = lab.server
    # An order glibc must change: IPv4 first, the farther IPv6 prefix before the nearer one,
    # dead (routed) addresses mixed in.
    given = [*server.v4, server.v6[2], server.dead_v6[1], *server.v6[:2], server.dead_v4[0]]
    hosts = tmp_path / "hosts"
    hosts.write_text("".join(f"{address} order.lab.test\n" for address in given))
    script = f"mount --bind {hosts} /etc/hosts && exec {sys.executable} -c '{_GLIBC_ORDER}'"
    result = await lab.exec("client", "unshare", "--mount", "--propagation", "private",
                            "sh", "-c", script, check=True)
    glibc = result.stdout.split()

    async def ours() -> list[str]:
        return [str(ip) for ip in system_order([ipaddress.ip_address(a) for a in given])]

    assert sorted(glibc) == sorted(given)  # every address, each once
    assert glibc != given
    assert await lab.run_in("client", ours) == glibc
