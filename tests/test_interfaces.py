"""Host snapshot, address flags, gateways and route lookup, read inside a namespace of our own.

The namespace is entered by a *thread* (as the lab runs library code), so these tests also
prove that nothing reads the main thread's namespace. Two veth pairs live inside it:
``a0`` (no DAD, privacy addresses on) and ``b0`` (DAD with 100 probes, so its addresses stay
tentative for the whole test). Nothing leaves the namespace.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import time
from collections.abc import Iterator

import pytest

from apr_async.lab.netns import call_in_netns, run_ip_sync
from apr_async.lab.topology import new_lab_prefix
from apr_async.resolve import host, interfaces

pytestmark = pytest.mark.lab

ip6 = ipaddress.IPv6Address
ip4 = ipaddress.IPv4Address


def _ip(*args: str) -> None:
    result = run_ip_sync(list(args))
    assert result.returncode == 0, result


@pytest.fixture(scope="module")
def netns() -> Iterator[str]:
    # A lab-style name: the lab's sweeper removes it if this process dies mid-test.
    name = f"{new_lab_prefix()}-client"
    _ip("netns", "add", name)
    try:
        batch = "\n".join([
            "link set lo up",
            "link add a0 index 20 type veth peer name a1 index 21",
            "link add b0 index 22 type veth peer name b1 index 23",
            "link add c0 index 24 type veth peer name c1 index 25",
            "link add d0 index 26 type veth peer name d1 index 27",
        ])
        subprocess.run(["ip", "-n", name, "-batch", "-"], input=batch, text=True, check=True)
        subprocess.run(
            ["ip", "netns", "exec", name, "sysctl", "-qw",
             "net.ipv6.conf.a0.accept_dad=0", "net.ipv6.conf.a0.use_tempaddr=2",
             "net.ipv6.conf.b0.dad_transmits=100", "net.ipv6.conf.c1.accept_dad=0"],
            check=True)
        batch = "\n".join([
            "link set a0 up", "link set a1 up", "link set b0 up", "link set b1 up",
            "link set c0 up", "link set c1 up",
            "addr add 10.1.0.1/24 dev a0",
            "addr add 10.2.0.1/24 dev d0",  # d0 stays down: not a usable source
            "addr add 2001:db8:2::1/64 dev a0 mngtmpaddr",
            "addr add 2001:db8:3::1/64 dev a0 preferred_lft 0 valid_lft 3600",
            "addr add fd12:aaaa::1/64 dev a0 home",
            "addr add 2001:db8:4::1/64 dev b0",
            # c1 owns it already, so c0's DAD must fail
            "addr add 2001:db8:5::1/64 dev c1 nodad",
            "addr add 2001:db8:5::1/64 dev c0",
            "route add default via 10.1.0.2 metric 5",
            "route add default via fe80::99 dev a0 metric 7",
            # Not "the" gateways: another table's default and a non-unicast default.
            "route add default via 10.1.0.3 table 100",
            "route add unreachable default metric 4000",
        ])
        subprocess.run(["ip", "-n", name, "-batch", "-"], input=batch, text=True, check=True)
        # A route's "src" must be a usable address: wait for a0's carrier to make it so.
        deadline = time.monotonic() + 5
        while "tentative" in _flags(name, "2001:db8:2::1") and time.monotonic() < deadline:
            time.sleep(0.02)
        _ip("-n", name, "route", "add", "2001:db8:77::/48", "via", "2001:db8:2::fe", "src",
            "2001:db8:2::1")
        yield name
    finally:
        run_ip_sync(["netns", "del", name])


def _flags(netns: str, address: str) -> list[str]:
    out = subprocess.run(["ip", "-n", netns, "-j", "addr", "show"], capture_output=True,
                         text=True, check=True).stdout
    for link in json.loads(out):
        for info in link.get("addr_info", []):
            if info["local"] == address:
                return [k for k, v in info.items() if v is True]
    return []


def _wait_dadfailed(netns: str, address: str) -> None:
    deadline = time.monotonic() + 5
    while "dadfailed" not in _flags(netns, address):
        assert time.monotonic() < deadline, "DAD never failed"
        time.sleep(0.05)


def test_snapshot_reads_the_threads_namespace(netns: str) -> None:
    snap = call_in_netns(netns, interfaces.read_snapshot)
    assert snap.backend == "netlink"
    by_ip = {s.address: s for s in snap.sources}
    assert ip6("::1") in by_ip
    assert ip4("127.0.0.1") in by_ip
    v4 = by_ip[ip4("10.1.0.1")]
    assert (v4.interface, v4.ifindex, v4.prefixlen) == ("a0", 20, 24)
    # The host's own addresses are not visible from the namespace.
    assert all(s.interface in ("lo", "a0", "a1", "b0", "b1", "c0", "c1") for s in snap.sources)
    assert snap.interfaces[26].name == "d0"
    assert not snap.interfaces[26].up


def test_flags_and_exclusions(netns: str) -> None:
    _wait_dadfailed(netns, "2001:db8:5::1")
    snap = call_in_netns(netns, interfaces.read_snapshot)
    by_ip = {s.address: s for s in snap.sources}
    deprecated = by_ip[ip6("2001:db8:3::1")]
    assert deprecated.deprecated and not deprecated.temporary
    temporaries = [s for s in snap.sources if s.temporary]
    assert len(temporaries) == 1
    assert temporaries[0].address in ipaddress.ip_network("2001:db8:2::/64")
    assert temporaries[0].address != ip6("2001:db8:2::1")
    assert not by_ip[ip6("2001:db8:2::1")].temporary  # the mngtmpaddr template itself
    assert by_ip[ip6("fd12:aaaa::1")].home
    assert "tentative" in _flags(netns, "2001:db8:4::1")
    assert ip6("2001:db8:4::1") not in by_ip  # tentative: not usable yet
    owners = [s.interface for s in snap.sources if s.address == ip6("2001:db8:5::1")]
    assert owners == ["c1"]  # c0's copy failed DAD
    assert ip4("10.2.0.1") not in by_ip  # on an interface that is down
    link_local = [s for s in snap.sources if s.address.is_link_local and s.interface == "a0"]
    assert link_local and link_local[0].ifindex == 20


def test_gateways(netns: str) -> None:
    snap = call_in_netns(netns, interfaces.read_snapshot)
    gw4 = snap.default_gateway(2)
    gw6 = snap.default_gateway(10)
    assert gw4 == host.Gateway(2, ip4("10.1.0.2"), "a0", 20, 5)
    assert gw6 == host.Gateway(10, ip6("fe80::99"), "a0", 20, 7)
    assert set(snap.gateways) == {gw4, gw6}


def test_fingerprint_follows_changes(netns: str) -> None:
    before = call_in_netns(netns, interfaces.read_snapshot)
    again = call_in_netns(netns, interfaces.read_snapshot)
    assert before.fingerprint == again.fingerprint
    _ip("-n", netns, "addr", "add", "10.1.0.7/24", "dev", "a0")
    try:
        after = call_in_netns(netns, interfaces.read_snapshot)
        assert after.fingerprint != before.fingerprint
    finally:
        _ip("-n", netns, "addr", "del", "10.1.0.7/24", "dev", "a0")
    assert call_in_netns(netns, interfaces.read_snapshot).fingerprint == before.fingerprint


def test_route_choice(netns: str) -> None:
    def lookups() -> dict[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int | None],
                          host.RouteChoice | None]:
        snap = interfaces.read_snapshot()
        return interfaces.route_choices(
            [(ip4("198.51.100.7"), None), (ip6("2001:db8:77::9"), None),
             (ip6("2001:db8:99::1"), None), (ip6("fe80::1234"), 20), (ip6("fe80::1"), 999)],
            snapshot=snap)

    got = call_in_netns(netns, lookups)
    v4 = got[(ip4("198.51.100.7"), None)]
    assert v4 is not None
    assert (v4.source, v4.interface, v4.ifindex, v4.gateway) == (
        ip4("10.1.0.1"), "a0", 20, ip4("10.1.0.2"))
    routed = got[(ip6("2001:db8:77::9"), None)]
    assert routed is not None
    assert (routed.source, routed.gateway) == (ip6("2001:db8:2::1"), ip6("2001:db8:2::fe"))
    default6 = got[(ip6("2001:db8:99::1"), None)]
    assert default6 is not None and default6.gateway == ip6("fe80::99")
    assert default6.source is not None and default6.source in ipaddress.ip_network(
        "2001:db8::/32")
    ll = got[(ip6("fe80::1234"), 20)]
    assert ll is not None and ll.ifindex == 20 and ll.source is not None
    assert ll.source.is_link_local
    assert got[(ip6("fe80::1"), 999)] is None  # no such interface


def test_udp_fallback_agrees_with_netlink(netns: str) -> None:
    def both() -> tuple[object, object]:
        dest = ip6("2001:db8:77::9")
        return interfaces._udp_route_choice(dest, None), interfaces.route_choice(dest)

    udp, netlink = call_in_netns(netns, both)
    assert isinstance(udp, host.RouteChoice)
    assert isinstance(netlink, host.RouteChoice)
    assert udp.source == netlink.source


def test_ifaddr_backend_sees_the_same_addresses(netns: str) -> None:
    def both() -> tuple[interfaces.HostSnapshot, interfaces.HostSnapshot]:
        return (interfaces.read_snapshot(backend="ifaddr"),
                interfaces.read_snapshot(backend="netlink"))

    fallback, netlink = call_in_netns(netns, both)
    assert fallback.backend == "ifaddr"
    assert {s.address for s in netlink.sources} <= {s.address for s in fallback.sources}
    with pytest.raises(ValueError, match="backend"):
        interfaces.read_snapshot(backend="bogus")


def test_cache_is_per_namespace_and_invalidated(netns: str) -> None:
    interfaces.invalidate_cache()
    host = interfaces.get_snapshot()
    inside = call_in_netns(netns, interfaces.get_snapshot)
    assert host.fingerprint != inside.fingerprint
    assert call_in_netns(netns, interfaces.get_snapshot) is inside  # cached
    assert interfaces.get_snapshot() is host
    interfaces.invalidate_cache()
    assert call_in_netns(netns, interfaces.get_snapshot) is not inside


def test_max_age_is_the_askers(netns: str) -> None:
    def read(max_age: float) -> interfaces.HostSnapshot:
        return call_in_netns(netns, lambda: interfaces.get_snapshot(max_age=max_age))

    patient = read(60.0)
    _ip("-n", netns, "addr", "add", "10.1.0.8/24", "dev", "a0")
    try:
        assert read(60.0) is patient
        fresh = read(0.0)
        assert ip4("10.1.0.8") in {s.address for s in fresh.sources}
    finally:
        _ip("-n", netns, "addr", "del", "10.1.0.8/24", "dev", "a0")


def test_cached_view_looks_routes_up_once(netns: str) -> None:
    def twice() -> tuple[object, object, bool]:
        view = interfaces.cached_view(max_age=60.0)
        key = (ip4("198.51.100.7"), None)
        first = view.route_choices([key])[key]
        second = view.route_choices([key])[key]
        return first, second, interfaces.cached_view(max_age=60.0) is view

    first, second, same = call_in_netns(netns, twice)
    assert first is second and same
