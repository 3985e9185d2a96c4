"""The lab's pure parts: address plan, scenario algebra, generated rules (no root needed)."""

from __future__ import annotations

import ipaddress

import pytest

from apr_async.lab import HEALTHY, PathMode, Scenario, Topology, combine
from apr_async.lab.scenarios import (
    client_changes,
    delay_rules,
    router_scenario_rules,
    server_scenario_rules,
)
from apr_async.lab.topology import LAB_NAME_RE, new_lab_prefix, nptv6_translate

HOST_NETS = [ipaddress.ip_network("192.0.2.0/24"), ipaddress.ip_network("fd00::/64")]


def all_addresses(topo: Topology) -> list[str]:
    c, r, s = topo.client, topo.router, topo.server
    return [c.v4, c.gua, c.ula, r.client_v4, r.client_gua, r.client_ula, r.server_v4,
            r.server_v6, r.dns_v4, r.dns_v6, *s.v4, *s.v6, *s.dead_v4, *s.dead_v6]


def test_plan_never_uses_the_hosts_networks_and_has_expected_kinds() -> None:
    topo = Topology(new_lab_prefix())
    for text in all_addresses(topo):
        ip = ipaddress.ip_address(text)
        assert not any(ip in net for net in HOST_NETS), text
    for text in topo.root_batch().split() + topo.router_batch().split():
        assert "192.0.2." not in text and not text.startswith("fd00::")
    assert ipaddress.ip_address(topo.client.v4).is_private
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
    assert "masquerade" in router_scenario_rules(topo, Scenario.nat44_masquerade())
    rst = server_scenario_rules(topo, Scenario.v6_rejected(PathMode.REJECT_RST))
    assert "tcp reset" in rst and "fe80::/10" in rst  # never reject neighbour discovery
    assert client_changes(topo, HEALTHY, HEALTHY) == ""
    trap = client_changes(topo, HEALTHY, Scenario.ula_source_trap())
    assert f"src {topo.client.ula}" in trap
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
