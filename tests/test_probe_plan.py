"""The plan of a probe round: which source probes which target how, recent destinations, pacing."""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import socket

import pytest

from apr_async.core.rfc6724 import SourceAddress
from apr_async.probe.plan import (
    Pacer,
    RecentDestinations,
    Target,
    eligible,
    gateway_targets,
    is_offlink,
    plan_probes,
    source_text,
)
from apr_async.resolve.host import Gateway
from apr_async.resolve.interfaces import HostSnapshot

ip = ipaddress.ip_address

V4 = SourceAddress(ip("192.168.1.10"), interface="eth0", ifindex=2, prefixlen=24)
GUA = SourceAddress(ip("2001:db8:1::10"), interface="eth0", ifindex=2, prefixlen=64)
ULA = SourceAddress(ip("fd12:3456::10"), interface="eth0", ifindex=2, prefixlen=64)
OLD = SourceAddress(ip("2001:db8:1::99"), deprecated=True, interface="eth0", ifindex=2,
                    prefixlen=64)
LLA = SourceAddress(ip("fe80::10"), interface="eth0", ifindex=2, prefixlen=64)
LLA3 = SourceAddress(ip("fe80::30"), interface="eth1", ifindex=3, prefixlen=64)
LO = SourceAddress(ip("127.0.0.1"), interface="lo", ifindex=1, prefixlen=8)


def snapshot(*sources: SourceAddress) -> HostSnapshot:
    gateways = (
        Gateway(socket.AF_INET, ip("192.168.1.1"), "eth0", 2, 100),
        Gateway(socket.AF_INET6, ip("fe80::1"), "eth0", 2, 100),
    )
    return HostSnapshot(sources=sources, interfaces={}, gateways=gateways, fingerprint="f",
                        backend="test", taken_at=0.0)


def target(text: str, port: int | None = 443, ifindex: int | None = None) -> Target:
    return Target(ip(text), ifindex, port, "configured", text)


def test_eligible_family_scope_and_zone() -> None:
    assert eligible(V4, target("198.51.100.1"))
    assert not eligible(V4, target("2001:db8:9::1"))  # family
    assert eligible(ULA, target("2001:db8:9::1"))  # ULA to GUA: tried, it may be translated
    assert not eligible(LLA, target("2001:db8:9::1"))  # link-local cannot leave the link
    assert eligible(LLA, target("fe80::1", ifindex=2))
    assert not eligible(LLA3, target("fe80::1", ifindex=2))  # another link
    assert not eligible(GUA, target("fe80::1", ifindex=2))
    assert not eligible(LO, target("198.51.100.1"))
    assert not eligible(V4, target("127.0.0.1"))
    assert eligible(LO, target("127.0.0.1"))


def test_offlink_is_beyond_gateway_and_local_prefixes() -> None:
    snap = snapshot(V4, GUA)
    assert is_offlink(ip("198.51.100.1"), snap)
    assert is_offlink(ip("2001:db8:9::1"), snap)
    assert not is_offlink(ip("192.168.1.1"), snap)  # the gateway
    assert not is_offlink(ip("192.168.1.77"), snap)  # on the local /24
    assert not is_offlink(ip("2001:db8:1::77"), snap)  # on the local /64
    assert not is_offlink(ip("fe80::1"), snap)
    assert not is_offlink(ip("198.51.100.1"), None)  # nothing known: prove nothing


def test_plan_probes_each_source_method_once() -> None:
    snap = snapshot(V4, GUA, ULA, OLD, LLA)
    targets = [target("198.51.100.1"), target("2001:db8:9::1"), target("2001:db8:9::1"),
               target("fe80::1", port=None, ifindex=2), target("ff02::1")]
    plan = plan_probes(snap, targets, icmp=True)
    got = sorted((p.method, str(p.source), str(p.target.ip), p.offlink) for p in plan)
    assert got == sorted([
        ("icmp", "192.168.1.10", "198.51.100.1", True),
        ("tcp", "192.168.1.10", "198.51.100.1", True),
        ("icmp", "2001:db8:1::10", "2001:db8:9::1", True),
        ("tcp", "2001:db8:1::10", "2001:db8:9::1", True),
        ("icmp", "fd12:3456::10", "2001:db8:9::1", True),
        ("tcp", "fd12:3456::10", "2001:db8:9::1", True),
        ("icmp", "fe80::10", "fe80::1", False),  # a port-less target gets ICMP only
    ])
    # without ICMP sockets, only the targets with a port are probed
    tcp_only = plan_probes(snap, targets, icmp=False)
    assert {p.method for p in tcp_only} == {"tcp"} and len(tcp_only) == 3


def test_gateway_targets_and_source_text() -> None:
    gws = gateway_targets(snapshot(V4), None)
    assert [(str(t.ip), t.ifindex, t.port, t.kind) for t in gws] == [
        ("192.168.1.1", None, None, "gateway"), ("fe80::1", 2, None, "gateway")]
    assert gws[1].text() == "fe80::1%2"
    assert source_text(LLA) == "fe80::10%2" and source_text(GUA) == "2001:db8:1::10"


def test_recent_destinations_due_on_their_port_rate_limited_and_bounded() -> None:
    recent = RecentDestinations(2, ttl=100.0, interval=10.0)
    recent.note(ip("198.51.100.1"), None, 8443, now=0.0)
    assert recent.due(5.0, tcp=True) == []  # the use itself was a measurement
    (due,) = recent.due(10.0, tcp=True)
    assert (str(due.ip), due.port, due.kind) == ("198.51.100.1", 8443, "recent")
    assert recent.due(15.0, tcp=True) == []  # probed at 10: not again before 20
    assert recent.due(20.0, tcp=False)[0].port is None
    recent.note(ip("198.51.100.2"), None, 443, now=21.0)
    recent.note(ip("198.51.100.3"), None, 443, now=22.0)
    assert len(recent) == 2  # the least recently used went
    assert recent.due(200.0, tcp=True) == [] and len(recent) == 0  # all expired
    recent.note(ip("198.51.100.4"), None, 0, now=0.0)  # not a port: ignored
    RecentDestinations(0, ttl=1.0, interval=1.0).note(ip("198.51.100.4"), None, 443, 0.0)
    assert len(recent) == 0


def test_untried_destinations_are_due_at_once_then_rate_limited() -> None:
    recent = RecentDestinations(2, ttl=100.0, interval=10.0)
    # a destination the race never tried: nothing measured it, so the next round probes it
    recent.note(ip("198.51.100.1"), None, 8443, now=0.0, measured=False)
    (due,) = recent.due(0.0, tcp=True)
    assert (str(due.ip), due.port, due.kind) == ("198.51.100.1", 8443, "recent")
    # untried again by the next races: still at most one probe per interval
    recent.note(ip("198.51.100.1"), None, 8443, now=1.0, measured=False)
    assert recent.due(5.0, tcp=True) == []
    assert len(recent.due(10.0, tcp=True)) == 1
    # one just used (measured) keeps its re-probe time when a race then leaves it untried
    recent.note(ip("198.51.100.2"), None, 443, now=11.0)
    recent.note(ip("198.51.100.2"), None, 443, now=12.0, measured=False)
    assert recent.due(12.0, tcp=True) == []
    # untried ones count as uses: the limit and the expiry hold as for the others
    recent.note(ip("198.51.100.3"), None, 443, now=13.0, measured=False)
    assert len(recent) == 2
    assert [str(t.ip) for t in recent.due(13.0, tcp=True)] == ["198.51.100.3"]
    assert recent.due(200.0, tcp=True) == [] and len(recent) == 0


@pytest.mark.looptime
async def test_pacer_enforces_global_rate() -> None:
    loop = asyncio.get_running_loop()
    pacer = Pacer(rate=5.0, burst=1.0)
    start = loop.time()
    stamps = []
    for _ in range(10):
        await pacer.wait(loop)
        stamps.append(loop.time() - start)
    assert stamps[0] == pytest.approx(0.0)
    assert stamps[-1] == pytest.approx(1.8)
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert min(gaps) == pytest.approx(0.2)


@pytest.mark.looptime
async def test_pacer_allows_a_burst_then_the_rate() -> None:
    loop = asyncio.get_running_loop()
    pacer = Pacer(rate=10.0, burst=3.0)
    start = loop.time()
    stamps = []
    for _ in range(5):
        await pacer.wait(loop)
        stamps.append(round(loop.time() - start, 6))
    assert stamps == [0.0, 0.0, 0.0, 0.1, 0.2]
    with pytest.raises(ValueError):
        Pacer(rate=0.0, burst=1.0)
