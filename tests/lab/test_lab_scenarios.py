"""Each lab pathology is real, shown with plain sockets from the client namespace."""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from labprobe import echo_rtt, peer_of, tcp_connect

from apr_async.lab import EchoServer, Lab, PathMode, Scenario

pytestmark = [pytest.mark.lab, pytest.mark.asyncio(loop_scope="module")]

SHORT = 0.4  # connect timeout that a blackhole must exhaust


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def echo(lab: Lab) -> AsyncIterator[EchoServer]:
    server = await lab.start_echo_server(announce_peer=True)
    yield server
    await lab.stop_echo_server(server)


async def test_healthy_reaches_every_server_address(healthy_lab: Lab, echo: EchoServer) -> None:
    lab = healthy_lab
    for address in (*lab.server.v4, *lab.server.v6):
        out = await lab.run_in("client", tcp_connect, address, echo.port, read_greeting=True)
        assert out.ok, (address, out.error_name)
        expected = lab.client.v4 if ":" not in address else lab.client.gua
        assert peer_of(out.greeting) == expected  # no translation when healthy


async def test_internet_drops_untranslated_private_and_ula_sources(
    healthy_lab: Lab, echo: EchoServer
) -> None:
    lab = healthy_lab
    before = len(echo.accepted)
    for source, address in ((lab.client.private_v4, lab.server.v4[0]),
                            (lab.client.ula, lab.server.v6[0])):
        out = await lab.run_in("client", tcp_connect, address, echo.port, source=source,
                               limit=SHORT)
        assert out.timed_out, (source, out.error_name)
    assert len(echo.accepted) == before  # dropped on the way out: the server never saw them
    # the public-looking IPv4 source and the GUA are what a plain, unbound socket uses
    for address, expected in ((lab.server.v4[0], lab.client.v4),
                              (lab.server.v6[0], lab.client.gua)):
        out = await lab.run_in("client", tcp_connect, address, echo.port, read_greeting=True)
        assert out.ok and out.local == expected, (address, out.error_name)
        assert peer_of(out.greeting) == expected
    public = await lab.run_in("client", tcp_connect, lab.server.v4[2], echo.port,
                              source=lab.client.v4, read_greeting=True)
    assert public.ok and peer_of(public.greeting) == lab.client.v4


async def test_private_sources_still_reach_the_lab_dns_link(healthy_lab: Lab) -> None:
    lab = healthy_lab
    for scenario in (Scenario.healthy(), Scenario.nat44_masquerade(),
                     Scenario.nptv6_translation(), Scenario.ula_source_trap()):
        await lab.set_scenario(scenario)
        route = await lab.exec("client", "ip", "-4", "route", "get", lab.dns_v4, check=True)
        assert f"src {lab.client.private_v4}" in route.stdout, (scenario, route.stdout)
        out = await lab.run_in("client", tcp_connect, lab.dns_v4, 53, limit=SHORT)
        assert out.ok and out.local == lab.client.private_v4, (scenario, out.error_name)


async def test_dead_addresses_are_silently_dropped(healthy_lab: Lab, echo: EchoServer) -> None:
    lab = healthy_lab
    for address in (lab.server.dead_v4[0], lab.server.dead_v6[0]):
        out = await lab.run_in("client", tcp_connect, address, echo.port, limit=SHORT)
        assert out.timed_out, (address, out.error_name)


@pytest.mark.parametrize("family", [4, 6])
async def test_blackholed_family_times_out_other_works(
    healthy_lab: Lab, echo: EchoServer, family: int
) -> None:
    lab = healthy_lab
    scenario = Scenario.v6_blackholed() if family == 6 else Scenario.v4_blackholed()
    await lab.set_scenario(scenario)
    dead, alive = ((lab.server.v6[0], lab.server.v4[0]) if family == 6
                   else (lab.server.v4[0], lab.server.v6[0]))
    out = await lab.run_in("client", tcp_connect, dead, echo.port, limit=SHORT)
    assert out.timed_out, out.error_name
    assert (await lab.run_in("client", tcp_connect, alive, echo.port)).ok


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        (PathMode.REJECT_RST, errno.ECONNREFUSED),
        (PathMode.REJECT_UNREACHABLE, errno.EHOSTUNREACH),
        (PathMode.REJECT_PROHIBITED, errno.EACCES),
        (PathMode.REJECT_NO_ROUTE, errno.ENETUNREACH),
    ],
)
async def test_rejected_ipv6_fails_fast_with_errno(
    healthy_lab: Lab, echo: EchoServer, mode: PathMode, expected: int
) -> None:
    lab = healthy_lab
    await lab.set_scenario(Scenario.v6_rejected(mode))
    for _ in range(3):  # repeatedly: the error must not be lost to the socket-lock race
        out = await lab.run_in("client", tcp_connect, lab.server.v6[0], echo.port, limit=2.0)
        assert out.errno == expected, out.error_name
        assert out.elapsed < 0.5  # "fast": well below any connect timeout
    assert (await lab.run_in("client", tcp_connect, lab.server.v4[0], echo.port)).ok


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        (PathMode.REJECT_RST, errno.ECONNREFUSED),
        (PathMode.REJECT_UNREACHABLE, errno.EHOSTUNREACH),
        # Linux maps ICMP "communication administratively prohibited" to EHOSTUNREACH
        (PathMode.REJECT_PROHIBITED, errno.EHOSTUNREACH),
        (PathMode.REJECT_NO_ROUTE, errno.ENETUNREACH),
    ],
)
async def test_rejected_ipv4_fails_fast_with_errno(
    healthy_lab: Lab, echo: EchoServer, mode: PathMode, expected: int
) -> None:
    lab = healthy_lab
    await lab.set_scenario(Scenario(v4=mode))
    out = await lab.run_in("client", tcp_connect, lab.server.v4[0], echo.port, limit=2.0)
    assert out.errno == expected and out.elapsed < 0.5, out.error_name
    assert (await lab.run_in("client", tcp_connect, lab.server.v6[0], echo.port)).ok


@pytest.mark.parametrize("slow", [4, 6])
async def test_delay_line_adds_configured_rtt(
    healthy_lab: Lab, echo: EchoServer, slow: int
) -> None:
    lab = healthy_lab
    v4, v6 = lab.server.v4[0], lab.server.v6[0]
    base4 = await lab.run_in("client", echo_rtt, v4, echo.port)
    base6 = await lab.run_in("client", echo_rtt, v6, echo.port)
    delay = 0.08
    await lab.set_scenario(Scenario.v6_slower(delay) if slow == 6 else Scenario.v4_slower(delay))
    rtt4 = await lab.run_in("client", echo_rtt, v4, echo.port)
    rtt6 = await lab.run_in("client", echo_rtt, v6, echo.port)
    slowed, other, base = (rtt6, rtt4, base6) if slow == 6 else (rtt4, rtt6, base4)
    # every packet of that family is held at least ``delay`` (a lower bound on ``slowed``
    # alone: ``slowed - base`` would hinge on noise in ``base``), and only once per round trip
    assert slowed >= delay, slowed
    assert slowed - base < 2 * delay, (slowed, base)
    assert other < 0.05  # the other family is not slowed


async def test_delay_combines_with_nat44(healthy_lab: Lab, echo: EchoServer) -> None:
    lab = healthy_lab
    await lab.set_scenario(Scenario.v4_slower(0.05), Scenario.nat44_masquerade())
    out = await lab.run_in("client", tcp_connect, lab.server.v4[0], echo.port,
                           read_greeting=True)
    assert out.ok and out.elapsed >= 0.05
    assert peer_of(out.greeting) == lab.router.server_v4


async def test_ula_source_fails_while_gua_works(healthy_lab: Lab, echo: EchoServer) -> None:
    lab = healthy_lab
    await lab.set_scenario(Scenario.ula_source_trap())
    # the route's preferred source is the ULA: an unbound socket picks it and hangs
    out = await lab.run_in("client", tcp_connect, lab.server.v6[0], echo.port, limit=SHORT)
    assert out.timed_out
    route = await lab.exec("client", "ip", "-6", "route", "get", lab.server.v6[0], check=True)
    assert f"src {lab.client.ula}" in route.stdout
    ula = await lab.run_in("client", tcp_connect, lab.server.v6[0], echo.port,
                           source=lab.client.ula, limit=SHORT)
    assert ula.timed_out
    gua = await lab.run_in("client", tcp_connect, lab.server.v6[0], echo.port,
                           source=lab.client.gua, read_greeting=True)
    assert gua.ok and peer_of(gua.greeting) == lab.client.gua


async def test_nat44_rewrites_source(healthy_lab: Lab, echo: EchoServer) -> None:
    lab = healthy_lab
    await lab.set_scenario(Scenario.nat44_masquerade())
    out = await lab.run_in("client", tcp_connect, lab.server.v4[2], echo.port,
                           read_greeting=True)
    # the default route now leaves from the RFC 1918 source, which the client still sees
    assert out.ok and out.local == lab.client.private_v4
    assert peer_of(out.greeting) == lab.router.server_v4
    assert echo.accepted[-1].peer == lab.router.server_v4
    # toggled independently: the public source is not translated, the ULA is still dropped
    public = await lab.run_in("client", tcp_connect, lab.server.v4[0], echo.port,
                              source=lab.client.v4, read_greeting=True)
    assert public.ok and peer_of(public.greeting) == lab.client.v4
    ula = await lab.run_in("client", tcp_connect, lab.server.v6[0], echo.port,
                           source=lab.client.ula, limit=SHORT)
    assert ula.timed_out
    # and back to healthy: the private source is dropped again, the route uses the public one
    await lab.set_scenario(Scenario.healthy())
    private = await lab.run_in("client", tcp_connect, lab.server.v4[0], echo.port,
                               source=lab.client.private_v4, limit=SHORT)
    assert private.timed_out
    plain = await lab.run_in("client", tcp_connect, lab.server.v4[0], echo.port)
    assert plain.ok and plain.local == lab.client.v4


async def test_nptv6_translates_ula_prefix(healthy_lab: Lab, echo: EchoServer) -> None:
    lab = healthy_lab
    await lab.set_scenario(Scenario.nptv6_translation())
    out = await lab.run_in("client", tcp_connect, lab.server.v6[0], echo.port,
                           source=lab.client.ula, read_greeting=True)
    assert out.ok
    seen = peer_of(out.greeting)
    assert ipaddress.IPv6Address(seen) in ipaddress.IPv6Network(lab.router.nptv6_outside)
    assert seen == lab.client_ula_translated
    # the GUA source is left alone
    gua = await lab.run_in("client", tcp_connect, lab.server.v6[0], echo.port,
                           source=lab.client.gua, read_greeting=True)
    assert peer_of(gua.greeting) == lab.client.gua
    # NPTv6 does not translate IPv4: the RFC 1918 source is still dropped
    private = await lab.run_in("client", tcp_connect, lab.server.v4[0], echo.port,
                               source=lab.client.private_v4, limit=SHORT)
    assert private.timed_out


async def test_ipv4_only_client(healthy_lab: Lab, echo: EchoServer) -> None:
    lab = healthy_lab
    await lab.set_scenario(Scenario.ipv4_only_client())
    out6 = await lab.run_in("client", tcp_connect, lab.server.v6[0], echo.port)
    assert out6.errno == errno.ENETUNREACH
    assert (await lab.run_in("client", tcp_connect, lab.server.v4[0], echo.port)).ok
    addrs = await lab.exec("client", "ip", "-6", "addr", "show", "scope", "global", check=True)
    assert addrs.stdout.strip() == ""


async def test_ipv6_only_client(healthy_lab: Lab, echo: EchoServer) -> None:
    lab = healthy_lab
    await lab.set_scenario(Scenario.ipv6_only_client())
    out4 = await lab.run_in("client", tcp_connect, lab.server.v4[0], echo.port)
    assert out4.errno == errno.ENETUNREACH
    assert (await lab.run_in("client", tcp_connect, lab.server.v6[0], echo.port)).ok


async def test_link_local_path_needs_scope_id(healthy_lab: Lab, echo: EchoServer) -> None:
    lab = healthy_lab
    ll = lab.server.direct_link_local
    without = await lab.run_in("client", tcp_connect, ll, echo.port)
    assert without.errno == errno.EINVAL  # a link-local destination is ambiguous
    out = await lab.run_in("client", tcp_connect, ll, echo.port,
                           scope_id=lab.client.direct_ifindex, read_greeting=True)
    assert out.ok and peer_of(out.greeting) == lab.client.direct_link_local


async def test_switching_scenarios_mid_run(healthy_lab: Lab, echo: EchoServer) -> None:
    lab = healthy_lab
    v6 = lab.server.v6[0]
    assert (await lab.run_in("client", tcp_connect, v6, echo.port)).ok
    await lab.set_scenario(Scenario.v6_blackholed())
    assert (await lab.run_in("client", tcp_connect, v6, echo.port, limit=SHORT)).timed_out
    await lab.set_scenario(Scenario.v6_rejected(PathMode.REJECT_RST))
    assert (await lab.run_in("client", tcp_connect, v6, echo.port)).errno == errno.ECONNREFUSED
    await lab.set_scenario()
    assert (await lab.run_in("client", tcp_connect, v6, echo.port)).ok
    assert lab.scenario == Scenario()


async def test_established_connection_breaks_and_recovers_mid_run(
    healthy_lab: Lab, echo: EchoServer
) -> None:
    # The same connection across the switches: a blackhole mid-transfer stalls it, and it
    # carries on (TCP retransmits) once the path is healthy again.
    lab = healthy_lab
    loop = asyncio.get_running_loop()
    with lab.socket("client", socket.AF_INET6) as sock:
        sock.setblocking(False)
        await asyncio.wait_for(loop.sock_connect(sock, (lab.server.v6[0], echo.port)), 2)
        assert (await asyncio.wait_for(loop.sock_recv(sock, 200), 2)).startswith(b"PEER ")
        await loop.sock_sendall(sock, b"a")
        assert await asyncio.wait_for(loop.sock_recv(sock, 1), 2) == b"a"
        await lab.set_scenario(Scenario.v6_blackholed())
        await loop.sock_sendall(sock, b"b")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(loop.sock_recv(sock, 1), SHORT)
        await lab.set_scenario()
        assert await asyncio.wait_for(loop.sock_recv(sock, 1), 5) == b"b"


async def ping_answered(lab: Lab, address: str) -> bool:
    """One ``ping`` from the client namespace (the system tool, not the library)."""
    res = await lab.exec("client", "ping", "-n", "-c", "1", "-W", "0.5", address)
    return res.returncode == 0


@pytest.mark.tools("ping")
async def test_echo_blocked_drops_ping_while_tcp_passes(
    healthy_lab: Lab, echo: EchoServer
) -> None:
    lab = healthy_lab
    targets = (lab.server.v4[0], lab.server.v6[0])
    gateways = (lab.router.client_v4, lab.router.client_gua)
    for address in (*targets, *gateways):
        assert await ping_answered(lab, address), address  # healthy: everything answers
    await lab.set_scenario(Scenario.echo_blocked())
    for address in targets:
        assert not await ping_answered(lab, address), address
        out = await lab.run_in("client", tcp_connect, address, echo.port, read_greeting=True)
        assert out.ok, (address, out.error_name)
    for address in gateways:  # the router itself still answers unless asked not to
        assert await ping_answered(lab, address), address
    # composed with another scenario, and extended to the router's own addresses
    await lab.set_scenario(Scenario.echo_blocked(router=True), Scenario.nat44_masquerade())
    for address in (*targets, *gateways):
        assert not await ping_answered(lab, address), address
    out = await lab.run_in("client", tcp_connect, lab.server.v4[0], echo.port,
                           read_greeting=True)
    assert out.ok and peer_of(out.greeting) == lab.router.server_v4
    # ICMP errors are not echo: a rejected path still fails fast
    await lab.set_scenario(Scenario.echo_blocked(), Scenario.v6_rejected())
    out = await lab.run_in("client", tcp_connect, lab.server.v6[0], echo.port, limit=2.0)
    assert out.errno == errno.EHOSTUNREACH and out.elapsed < 0.5, out.error_name
    await lab.set_scenario()
    for address in (*targets, *gateways):
        assert await ping_answered(lab, address), address
