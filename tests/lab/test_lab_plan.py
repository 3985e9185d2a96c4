"""The lab's pure parts: address plan, scenario algebra, generated rules (no root needed)."""

from __future__ import annotations

import ipaddress

import pytest

from apr_async.lab import HEALTHY, PathMode, Scenario, Topology, combine
from apr_async.lab.nft_rules import (
    client_changes,
    delay_rules,
    router_base_ruleset,
    router_scenario_rules,
    server_scenario_rules,
)
from apr_async.lab.scenarios import NON_INTERNET_V4, NON_INTERNET_V6
from apr_async.lab.topology import LAB_NAME_RE, new_lab_prefix, nptv6_translate

HOST_NETS = [ipaddress.ip_network("192.0.2.0/24"), ipaddress.ip_network("fd00::/64")]


def all_addresses(topo: Topology) -> list[str]:
    c, r, s = topo.client, topo.router, topo.server
    return [c.v4, c.private_v4, c.gua, c.ula, r.client_v4, r.client_public_v4, r.client_gua,
            r.client_ula, r.server_v4, r.server_v6, r.dns_v4, r.dns_v6, *s.v4, *s.v6,
            *s.dead_v4, *s.dead_v6]


def test_plan_never_uses_the_hosts_networks_and_has_expected_kinds() -> None:
    topo = Topology(new_lab_prefix())
    for text in all_addresses(topo):
        ip = ipaddress.ip_address(text)
        assert not any(ip in net for net in HOST_NETS), text
    for text in topo.root_batch().split() + topo.router_batch().split():
        assert "192.0.2." not in text and not text.startswith("fd00::")
    c, s = topo.client, topo.server
    private4 = [ipaddress.ip_network(net) for net in NON_INTERNET_V4]
    assert ipaddress.ip_address(c.private_v4) in ipaddress.ip_network("10.0.0.0/8")
    # the healthy IPv4 source is one the lab's internet carries, and no server address is in
    # its on-link subnet (the router would deliver to the client instead)
    public = ipaddress.ip_address(c.v4)
    assert not any(public in net for net in private4)
    client_net = ipaddress.ip_network(f"{c.v4}/{c.v4_prefixlen}", strict=False)
    assert not {ipaddress.ip_address(a) for a in (*s.v4, *s.dead_v4)} & set(client_net)
    assert ipaddress.ip_address(topo.router.client_public_v4) in client_net
    assert ipaddress.ip_address(topo.router.dns_v4) in ipaddress.ip_network(c.private_v4_prefix)
    assert ipaddress.ip_address(topo.client.gua) in ipaddress.ip_network("2001:db8::/32")
    assert ipaddress.ip_address(topo.client.ula) in ipaddress.ip_network("fc00::/7")
    assert len(topo.server.v4) >= 2 and len(topo.server.v6) >= 2
    assert not set(topo.server.dead_v6) & set(topo.server.v6)


def test_prefixes_are_unique_and_sweepable() -> None:
    prefixes = {new_lab_prefix() for _ in range(50)}
    assert len(prefixes) == 50
    topo = Topology(prefixes.pop())
    for ns in topo.namespaces:
        match = LAB_NAME_RE.match(ns)
        assert match is not None and match.group(1) == topo.prefix


def test_veth_ends_get_distinct_ifindexes_and_no_host_side() -> None:
    batch = Topology("aprlab-1-1-aa").root_batch()
    indexes = [int(w) for line in batch.splitlines() for i, w in enumerate(line.split())
               if i and line.split()[i - 1] == "index"]
    assert len(indexes) == len(set(indexes)) == 6
    for line in batch.splitlines():
        if line.startswith("link add"):
            assert line.count(" netns ") == 2  # both ends created inside lab namespaces


def test_combine_merges_and_rejects_conflicts() -> None:
    both = combine(Scenario.v6_slower(0.1), Scenario.nat44_masquerade())
    assert both == Scenario(v6_delay=0.1, nat44=True)
    assert Scenario.v6_blackholed() | Scenario.v4_slower(0.2) == Scenario(
        v6=PathMode.BLACKHOLE, v4_delay=0.2)
    assert combine() == HEALTHY
    with pytest.raises(ValueError, match="conflicting"):
        combine(Scenario.v6_blackholed(), Scenario.v6_rejected())
    with pytest.raises(ValueError):
        combine(Scenario.ula_source_trap(), Scenario.nptv6_translation())
    with pytest.raises(TypeError):
        combine("healthy")  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [
    {"v6_delay": -0.1}, {"v4_delay": float("inf")}, {"v6_delay": 11.0},
    {"client_v4": False, "client_v6": False}, {"ula_trap": True, "client_v6": False},
    {"nat44": True, "client_v4": False}, {"nptv6": True, "client_v6": False},
    {"v6": "nonsense"},
])
def test_invalid_scenarios_raise(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Scenario(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Scenario.v6_rejected(PathMode.BLACKHOLE)


def test_rejects_get_a_hair_of_delay_for_prompt_errors() -> None:
    assert Scenario.v6_rejected().effective_delay(6) > 0
    assert Scenario.v6_rejected().effective_delay(4) == 0
    assert Scenario.v6_slower(0.3).effective_delay(6) == 0.3
    old, new = HEALTHY, Scenario.v6_rejected(PathMode.REJECT_RST)
    v4, v6 = delay_rules(Topology("p"), old, new)
    assert v4 == "" and v6.startswith("rule add iif sv0")
    assert delay_rules(Topology("p"), new, old)[1].startswith("rule del")


def test_rules_follow_the_scenario() -> None:
    topo = Topology("p")
    assert "drop" not in router_scenario_rules(topo, HEALTHY)
    black = router_scenario_rules(topo, Scenario.v6_blackholed())
    assert "meta nfproto ipv6 drop" in black and "ipv4" not in black
    nat = router_scenario_rules(topo, Scenario.nat44_masquerade())
    assert f"ip saddr {topo.client.private_v4_prefix} masquerade" in nat
    base = router_base_ruleset(topo)
    assert "hook postrouting priority srcnat + 10" in base  # after NAT44 and NPTv6
    assert all(net in base for net in NON_INTERNET_V4) and NON_INTERNET_V6 in base
    rst = server_scenario_rules(topo, Scenario.v6_rejected(PathMode.REJECT_RST))
    assert "tcp reset" in rst and "fe80::/10" in rst  # never reject neighbour discovery
    assert client_changes(topo, HEALTHY, HEALTHY) == ""
    trap = client_changes(topo, HEALTHY, Scenario.ula_source_trap())
    assert f"src {topo.client.ula}" in trap
    c, r = topo.client, topo.router
    assert f"src {c.v4}" in topo.client_batch()
    nat44 = client_changes(topo, HEALTHY, Scenario.nat44_masquerade())
    assert nat44 == f"route replace default via {r.client_v4} dev up0 src {c.private_v4}\n"
    back = client_changes(topo, Scenario.nat44_masquerade(), HEALTHY)
    assert back == f"route replace default via {r.client_v4} dev up0 src {c.v4}\n"
    v6only = client_changes(topo, HEALTHY, Scenario.ipv6_only_client())
    assert f"addr del {c.v4}/" in v6only and f"addr del {c.private_v4}/" in v6only
    v4back = client_changes(topo, Scenario.ipv6_only_client(), Scenario.nat44_masquerade())
    assert f"addr add {c.private_v4}/" in v4back and v4back.endswith(f"src {c.private_v4}\n")
    v4only = client_changes(topo, HEALTHY, Scenario.ipv4_only_client())
    assert f"addr del {topo.client.gua}/64" in v4only


def test_nptv6_translation_is_checksum_neutral() -> None:
    inside, outside = "fd12:3456:789a::/48", "2001:db8:cafe::/48"
    out = nptv6_translate("fd12:3456:789a:c::2", inside, outside)
    assert ipaddress.IPv6Address(out) in ipaddress.IPv6Network(outside)
    assert out.endswith("::2")  # the interface identifier is preserved for a /48

    def csum(addr: str) -> int:
        value = int(ipaddress.IPv6Address(addr))
        total = sum((value >> s) & 0xFFFF for s in range(0, 128, 16))
        while total >> 16:
            total = (total & 0xFFFF) + (total >> 16)
        return total

    assert csum(out) == csum("fd12:3456:789a:c::2")
    with pytest.raises(ValueError):
        nptv6_translate("2001:db8::1", inside, outside)
