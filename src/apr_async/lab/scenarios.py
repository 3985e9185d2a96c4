"""Network pathologies a running lab can be switched into, and the rules that create them.

A :class:`Scenario` is a frozen description; :func:`combine` composes several (for example
"IPv6 slower by 80 ms" + "NAT44"). Turning a scenario into nftables text, ``ip`` commands and
delay-line settings is pure and lives here too, so it is unit-testable without root.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, fields, replace

from apr_async.lab.topology import Topology

__all__ = [
    "HEALTHY",
    "NON_INTERNET_V4",
    "NON_INTERNET_V6",
    "REJECT_HAIR",
    "PathMode",
    "Scenario",
    "combine",
]

#: Rejections are routed through the delay line with at least this delay. Zero-delay veth paths
#: deliver the ICMP error while ``connect()`` still holds the socket lock, and the kernel then
#: only records a soft error: the connect would look like a timeout instead of a fast failure.
REJECT_HAIR = 0.001

MAX_DELAY = 10.0

#: Sources the lab's "internet" (the router's server side) drops unless a scenario translates
#: them: RFC 1918 and the CGN shared space (RFC 6598), and ULA (RFC 4193).
NON_INTERNET_V4 = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10")
NON_INTERNET_V6 = "fc00::/7"


class PathMode(enum.StrEnum):
    """What happens to one address family between client and server."""

    OK = "ok"
    #: every packet towards the server silently dropped at the router (SYNs time out)
    BLACKHOLE = "blackhole"
    #: ICMP(v6) address/host unreachable from the server side -> EHOSTUNREACH
    REJECT_UNREACHABLE = "reject-unreachable"
    #: ICMP(v6) administratively prohibited -> EACCES (IPv6) / EHOSTUNREACH (IPv4)
    REJECT_PROHIBITED = "reject-prohibited"
    #: ICMP(v6) no route / network unreachable -> ENETUNREACH
    REJECT_NO_ROUTE = "reject-no-route"
    #: TCP answered with RST (port closed) -> ECONNREFUSED; other protocols pass
    REJECT_RST = "reject-rst"

    @property
    def rejects(self) -> bool:
        """True for the fast-failure modes."""
        return self.value.startswith("reject")


@dataclass(frozen=True)
class Scenario:
    """A network condition for a running lab. Defaults describe a healthy dual-stack path.

    Attributes:
        v4, v6: what happens to each family between client and server (dead addresses are
            always dropped, whatever the scenario).
        v4_delay, v6_delay: extra round-trip time in seconds added by the router's delay
            line (applied to server -> client packets).
        ula_trap: the client's IPv6 default route prefers its ULA source (``src``), which the
            lab's "internet" drops like every untranslated ULA source; the GUA source keeps
            working.
        nat44: the client's IPv4 default route uses its RFC 1918 source (``src``) and the
            router masquerades it towards the server. Without it the client uses its
            public-looking IPv4 source, and RFC 1918 sources are dropped at the router.
        nptv6: the router translates the client's ULA /48 to a GUA /48 (RFC 6296). Without it
            ULA sources are dropped at the router.
        client_v4, client_v6: whether the client has IPv4 / global IPv6 at all.
        block_echo: the router drops ICMP and ICMPv6 echo requests and replies it forwards
            (client <-> server, both families); TCP and ICMP errors still pass. The direct
            link-local link does not go through the router and is not affected.
        block_router_echo: the router ignores echo requests addressed to itself (any of its
            addresses, both families), like a gateway that does not answer ping.
    """

    v4: PathMode = PathMode.OK
    v6: PathMode = PathMode.OK
    v4_delay: float = 0.0
    v6_delay: float = 0.0
    ula_trap: bool = False
    nat44: bool = False
    nptv6: bool = False
    client_v4: bool = True
    client_v6: bool = True
    block_echo: bool = False
    block_router_echo: bool = False

    def __post_init__(self) -> None:
        for name in ("v4", "v6"):
            value = getattr(self, name)
            if not isinstance(value, PathMode):
                object.__setattr__(self, name, PathMode(value))
        for name in ("block_echo", "block_router_echo"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool")
        for name in ("v4_delay", "v6_delay"):
            delay = getattr(self, name)
            if (
                not isinstance(delay, int | float)
                or isinstance(delay, bool)
                or not math.isfinite(delay)
                or not 0.0 <= delay <= MAX_DELAY
            ):
                raise ValueError(f"{name} must be a number of seconds in [0, {MAX_DELAY}]")
        if self.ula_trap and self.nptv6:
            raise ValueError("ula_trap and nptv6 contradict each other (NPTv6 routes the ULA)")
        if not (self.client_v4 or self.client_v6):
            raise ValueError("a client without IPv4 and without IPv6 cannot reach anything")
        if self.ula_trap and not self.client_v6:
            raise ValueError("ula_trap needs client IPv6")
        if self.nptv6 and not self.client_v6:
            raise ValueError("nptv6 needs client IPv6")
        if self.nat44 and not self.client_v4:
            raise ValueError("nat44 needs client IPv4")

    # -- presets ----------------------------------------------------------------------------

    @classmethod
    def healthy(cls) -> Scenario:
        """Dual-stack, everything works."""
        return cls()

    @classmethod
    def v6_blackholed(cls) -> Scenario:
        """IPv6 towards the server silently dropped (connects time out)."""
        return cls(v6=PathMode.BLACKHOLE)

    @classmethod
    def v4_blackholed(cls) -> Scenario:
        """IPv4 towards the server silently dropped."""
        return cls(v4=PathMode.BLACKHOLE)

    @classmethod
    def v6_rejected(cls, mode: PathMode = PathMode.REJECT_UNREACHABLE) -> Scenario:
        """IPv6 fails fast (an ICMPv6 error or, with ``REJECT_RST``, a TCP reset)."""
        if not mode.rejects:
            raise ValueError(f"{mode} is not a reject mode")
        return cls(v6=mode)

    @classmethod
    def v6_slower(cls, delay: float) -> Scenario:
        """IPv6 round trips take ``delay`` seconds longer than IPv4."""
        return cls(v6_delay=delay)

    @classmethod
    def v4_slower(cls, delay: float) -> Scenario:
        """IPv4 round trips take ``delay`` seconds longer than IPv6."""
        return cls(v4_delay=delay)

    @classmethod
    def ula_source_trap(cls) -> Scenario:
        """The client's route prefers its ULA source, which the lab's internet drops."""
        return cls(ula_trap=True)

    @classmethod
    def nat44_masquerade(cls) -> Scenario:
        """The client's IPv4 goes out from its RFC 1918 source, masqueraded by the router."""
        return cls(nat44=True)

    @classmethod
    def nptv6_translation(cls) -> Scenario:
        """The router prefix-translates the client's ULA to a GUA prefix."""
        return cls(nptv6=True)

    @classmethod
    def ipv4_only_client(cls) -> Scenario:
        """The client has no global IPv6 address and no IPv6 default route."""
        return cls(client_v6=False)

    @classmethod
    def ipv6_only_client(cls) -> Scenario:
        """The client has no IPv4 address and no IPv4 default route."""
        return cls(client_v4=False)

    @classmethod
    def echo_blocked(cls, *, router: bool = False) -> Scenario:
        """ICMP(v6) echo between client and server dropped (TCP still passes); with
        ``router``, the router does not answer ping either."""
        return cls(block_echo=True, block_router_echo=router)

    def __or__(self, other: Scenario) -> Scenario:
        return combine(self, other)

    # -- derived ----------------------------------------------------------------------------

    def effective_delay(self, family: int) -> float:
        """Delay-line setting for IP version ``family`` (4 or 6): rejects need a hair."""
        mode, delay = (self.v4, self.v4_delay) if family == 4 else (self.v6, self.v6_delay)
        if mode.rejects:
            return max(delay, REJECT_HAIR)
        return delay

    def describe(self) -> str:
        """Short human-readable summary (``healthy`` or the changed fields)."""
        changed = [
            f"{f.name}={getattr(self, f.name)}"
            for f in fields(self)
            if getattr(self, f.name) != f.default
        ]
        return ", ".join(changed) or "healthy"


HEALTHY = Scenario()


def combine(*scenarios: Scenario) -> Scenario:
    """Merge scenarios: each field takes the one non-default value set for it.

    Raises :class:`ValueError` when two scenarios set the same field to different values or
    when the result is contradictory.
    """
    merged: dict[str, object] = {}
    for scenario in scenarios:
        if not isinstance(scenario, Scenario):
            raise TypeError(f"not a Scenario: {scenario!r}")
        for f in fields(Scenario):
            value = getattr(scenario, f.name)
            if value == f.default:
                continue
            if f.name in merged and merged[f.name] != value:
                raise ValueError(f"conflicting values for {f.name}: {merged[f.name]} / {value}")
            merged[f.name] = value
    return replace(HEALTHY, **merged)  # type: ignore[arg-type]


# -- rule generation -------------------------------------------------------------------------

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
            fwd.append(
                f'iifname "{r.client_ifname}" oifname "{r.server_ifname}" meta nfproto {proto} drop'
            )
    if scenario.block_echo:
        fwd += _ECHO_DROP
    local: list[str] = []
    if scenario.block_router_echo:
        local += _ECHO_DROP
    nat: list[str] = []
    if scenario.nat44:
        nat.append(f'oifname "{r.server_ifname}" ip saddr {c.private_v4_prefix} masquerade')
    lines = [
        "flush chain inet aprlab scenario",
        "flush chain inet aprlab scenario_input",
        "flush chain ip aprlab_nat scenario",
    ]
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
        [
            "-t",
            "mangle",
            op,
            "POSTROUTING",
            "-o",
            r.server_ifname,
            "-s",
            inside,
            "-j",
            "SNPT",
            "--src-pfx",
            inside,
            "--dst-pfx",
            outside,
        ],
        [
            "-t",
            "mangle",
            op,
            "PREROUTING",
            "-i",
            r.server_ifname,
            "-d",
            outside,
            "-j",
            "DNPT",
            "--src-pfx",
            outside,
            "--dst-pfx",
            inside,
        ],
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
            lines += [
                f"addr add {c.v4}/{c.v4_prefixlen} dev {c.ifname}",
                f"addr add {c.private_v4}/{c.private_v4_prefixlen} dev {c.ifname}",
                v4_route,
            ]
        else:
            lines += [
                f"route del default via {r.client_v4} dev {c.ifname}",
                f"addr del {c.v4}/{c.v4_prefixlen} dev {c.ifname}",
                f"addr del {c.private_v4}/{c.private_v4_prefixlen} dev {c.ifname}",
            ]
    elif new.client_v4 and old.nat44 != new.nat44:
        lines.append(v4_route)
    if old.client_v6 != new.client_v6 and not new.client_v6:
        lines += [
            f"route del ::/0 via {r.client_link_local} dev {c.ifname}",
            f"addr del {c.gua}/{c.v6_prefixlen} dev {c.ifname}",
            f"addr del {c.ula}/{c.v6_prefixlen} dev {c.ifname}",
        ]
    elif new.client_v6 and (old.client_v6 != new.client_v6 or old.ula_trap != new.ula_trap):
        if not old.client_v6:
            lines += [
                f"addr add {c.gua}/{c.v6_prefixlen} dev {c.ifname} nodad",
                f"addr add {c.ula}/{c.v6_prefixlen} dev {c.ifname} nodad",
            ]
        src = f" src {c.ula}" if new.ula_trap else ""
        lines.append(f"route replace ::/0 via {r.client_link_local} dev {c.ifname}{src}")
    return "\n".join(lines) + ("\n" if lines else "")
