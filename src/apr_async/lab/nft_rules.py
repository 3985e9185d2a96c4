"""The nftables rules that make a Scenario happen on the lab's router and server.

:mod:`.scenarios` says what is broken; this module turns it into rulesets, delay rules, NPTv6
rules and the client's address changes for one :class:`~apr_async.lab.topology.Topology`.
"""

from __future__ import annotations

from apr_async.lab.scenarios import (
    NON_INTERNET_V4,
    NON_INTERNET_V6,
    PathMode,
    Scenario,
)
from apr_async.lab.topology import Topology

__all__ = [
    "client_changes",
    "delay_rules",
    "nptv6_rules",
    "router_base_ruleset",
    "router_scenario_rules",
    "server_base_ruleset",
    "server_scenario_rules",
]


_ICMP_REJECT = {
    PathMode.REJECT_UNREACHABLE: ("icmp type host-unreachable", "icmpv6 type addr-unreachable"),
    PathMode.REJECT_PROHIBITED: ("icmp type admin-prohibited", "icmpv6 type admin-prohibited"),
    PathMode.REJECT_NO_ROUTE: ("icmp type net-unreachable", "icmpv6 type no-route"),
}

#: Echo only: ICMP errors (unreachable, packet too big) must keep flowing, or the reject
#: scenarios and path MTU discovery would break along with ping.
_ECHO_DROP = [
    "icmp type { echo-request, echo-reply } drop",
    "icmpv6 type { echo-request, echo-reply } drop",
]


def router_base_ruleset(topo: Topology) -> str:
    """The router's permanent nftables tables (dead addresses, empty scenario chains)."""
    r, s = topo.router, topo.server
    private4 = ", ".join(NON_INTERNET_V4)
    dead4 = ", ".join(s.dead_v4)
    dead6 = ", ".join(s.dead_v6)
    return f"""
table inet aprlab {{
    chain raw_pre {{
        type filter hook prerouting priority raw; policy accept;
        # packets coming back out of the delay line were already tracked on the way in
        iifname "{r.delay_ifname}" notrack
    }}
    chain forward {{
        type filter hook forward priority filter; policy accept;
        ip daddr {{ {dead4} }} drop
        ip6 daddr {{ {dead6} }} drop
        jump scenario
    }}
    chain scenario {{
    }}
    chain input {{
        type filter hook input priority filter; policy accept;
        jump scenario_input
    }}
    chain scenario_input {{
    }}
    chain internet {{
        # The server side is "the internet": it does not carry private or ULA sources. This
        # hook runs after NAT44 (srcnat) and NPTv6 (ip6tables mangle, priority -150), so it
        # sees sources as the server would, and translated ones pass in their scenarios.
        type filter hook postrouting priority srcnat + 10; policy accept;
        oifname "{r.server_ifname}" ip saddr {{ {private4} }} drop
        oifname "{r.server_ifname}" ip6 saddr {NON_INTERNET_V6} drop
    }}
}}
table ip aprlab_nat {{
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        jump scenario
    }}
    chain scenario {{
    }}
}}
"""


def router_scenario_rules(topo: Topology, scenario: Scenario) -> str:
    """An atomic ``nft -f`` transaction replacing the router's scenario rules."""
    r, c = topo.router, topo.client
    fwd: list[str] = []
    for mode, proto in ((scenario.v4, "ipv4"), (scenario.v6, "ipv6")):
        if mode is PathMode.BLACKHOLE:
            fwd.append(f'iifname "{r.client_ifname}" oifname "{r.server_ifname}"'
                       f" meta nfproto {proto} drop")
    if scenario.block_echo:
        fwd += _ECHO_DROP
    local: list[str] = []
    if scenario.block_router_echo:
        local += _ECHO_DROP
    nat: list[str] = []
    if scenario.nat44:
        nat.append(f'oifname "{r.server_ifname}" ip saddr {c.private_v4_prefix} masquerade')
    lines = ["flush chain inet aprlab scenario", "flush chain inet aprlab scenario_input",
             "flush chain ip aprlab_nat scenario"]
    lines += [f"add rule inet aprlab scenario {rule}" for rule in fwd]
    lines += [f"add rule inet aprlab scenario_input {rule}" for rule in local]
    lines += [f"add rule ip aprlab_nat scenario {rule}" for rule in nat]
    return "\n".join(lines) + "\n"


def server_base_ruleset() -> str:
    """The server's permanent nftables table (an empty scenario chain on input)."""
    return """
table inet aprlab {
    chain input {
        type filter hook input priority filter; policy accept;
        jump scenario
    }
    chain scenario {
    }
}
"""


def server_scenario_rules(topo: Topology, scenario: Scenario) -> str:
    """Rejections are sent by the server host so they travel back through the delay line."""
    s = topo.server
    rules: list[str] = []
    for mode, ipver in ((scenario.v4, 4), (scenario.v6, 6)):
        if not mode.rejects:
            continue
        match = f'iifname "{s.ifname}" meta nfproto ipv{ipver}'
        if ipver == 6:
            # never reject neighbour discovery, or the router could not reach the server
            match += " ip6 saddr != fe80::/10"
        if mode is PathMode.REJECT_RST:
            rules.append(f"{match} meta l4proto tcp reject with tcp reset")
        else:
            v4, v6 = _ICMP_REJECT[mode]
            rules.append(f"{match} reject with {v4 if ipver == 4 else v6}")
    lines = ["flush chain inet aprlab scenario"]
    lines += [f"add rule inet aprlab scenario {rule}" for rule in rules]
    return "\n".join(lines) + "\n"


def delay_rules(topo: Topology, old: Scenario, new: Scenario) -> tuple[str, str]:
    """``ip -4 -batch`` / ``ip -6 -batch`` text steering server->client packets of a delayed
    family into the delay line (policy routing by incoming interface)."""
    r = topo.router
    rule = f"rule %s iif {r.server_ifname} lookup {r.delay_table} pref 100"
    out: list[str] = []
    for family in (4, 6):
        was, now = old.effective_delay(family) > 0, new.effective_delay(family) > 0
        out.append("" if was == now else (rule % ("add" if now else "del")) + "\n")
    return out[0], out[1]


def nptv6_rules(topo: Topology, enable: bool) -> list[list[str]]:
    """ip6tables argv lists adding (or deleting) the SNPT/DNPT pair on the router."""
    r, c = topo.router, topo.client
    op = "-A" if enable else "-D"
    inside, outside = c.ula_prefix, r.nptv6_outside
    return [
        ["-t", "mangle", op, "POSTROUTING", "-o", r.server_ifname, "-s", inside,
         "-j", "SNPT", "--src-pfx", inside, "--dst-pfx", outside],
        ["-t", "mangle", op, "PREROUTING", "-i", r.server_ifname, "-d", outside,
         "-j", "DNPT", "--src-pfx", outside, "--dst-pfx", inside],
    ]


def client_changes(topo: Topology, old: Scenario, new: Scenario) -> str:
    """``ip -batch`` text moving the client from ``old`` to ``new`` (family presence, the
    IPv4 source under NAT44, ULA source preference); empty when nothing on the client changes."""
    c, r = topo.client, topo.router
    lines: list[str] = []
    # NAT44 is the one scenario where plain IPv4 connects leave from the RFC 1918 source.
    v4_src = c.private_v4 if new.nat44 else c.v4
    v4_route = f"route replace default via {r.client_v4} dev {c.ifname} src {v4_src}"
    if old.client_v4 != new.client_v4:
        if new.client_v4:
            lines += [f"addr add {c.v4}/{c.v4_prefixlen} dev {c.ifname}",
                      f"addr add {c.private_v4}/{c.private_v4_prefixlen} dev {c.ifname}",
                      v4_route]
        else:
            lines += [f"route del default via {r.client_v4} dev {c.ifname}",
                      f"addr del {c.v4}/{c.v4_prefixlen} dev {c.ifname}",
                      f"addr del {c.private_v4}/{c.private_v4_prefixlen} dev {c.ifname}"]
    elif new.client_v4 and old.nat44 != new.nat44:
        lines.append(v4_route)
    if old.client_v6 != new.client_v6 and not new.client_v6:
        lines += [f"route del ::/0 via {r.client_link_local} dev {c.ifname}",
                  f"addr del {c.gua}/{c.v6_prefixlen} dev {c.ifname}",
                  f"addr del {c.ula}/{c.v6_prefixlen} dev {c.ifname}"]
    elif new.client_v6 and (old.client_v6 != new.client_v6 or old.ula_trap != new.ula_trap):
        if not old.client_v6:
            lines += [f"addr add {c.gua}/{c.v6_prefixlen} dev {c.ifname} nodad",
                      f"addr add {c.ula}/{c.v6_prefixlen} dev {c.ifname} nodad"]
        src = f" src {c.ula}" if new.ula_trap else ""
        lines.append(f"route replace ::/0 via {r.client_link_local} dev {c.ifname}{src}")
    return "\n".join(lines) + ("\n" if lines else "")
