"""The lab's address plan and the ``ip`` commands that build it (pure: no I/O).

Topology (every link lives between two lab namespaces; nothing touches the host's namespace)::

    client up0 ======= cl0 router sv0 ======= up0 server
    client ll0 ============================== ll0 server   (optional direct link, link-local only)

Addresses avoid the host's own eth0 networks (192.0.2.0/24 and fd00::/64) on purpose, even
though nothing could collide: a log line mentioning them must never be ambiguous.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import re
import secrets
from dataclasses import dataclass
from typing import Literal, get_args

__all__ = [
    "LAB_NAME_RE",
    "ClientPlan",
    "HostName",
    "RouterPlan",
    "ServerPlan",
    "Topology",
    "check_host",
    "new_lab_prefix",
    "nptv6_translate",
]

#: Namespace names look like ``aprlab-<pid>-<counter>-<random>-<role>``; the sweeper relies on it.
LAB_NAME_RE = re.compile(r"^(aprlab-(\d+)-\d+-[0-9a-f]+)-(client|router|server)$")

_counter = itertools.count(1)

#: The lab's three hosts, by role.
HostName = Literal["client", "router", "server"]
_HOSTS: tuple[str, ...] = get_args(HostName)


def check_host(host: str) -> HostName:
    """*host* if it names a lab host, else ``ValueError``."""
    if host not in _HOSTS:
        raise ValueError(f"unknown lab host {host!r}; expected one of {', '.join(_HOSTS)}")
    return host  # type: ignore[return-value]


def new_lab_prefix() -> str:
    """A prefix unique to this process and call, so labs can run side by side."""
    return f"aprlab-{os.getpid()}-{next(_counter)}-{secrets.token_hex(3)}"


@dataclass(frozen=True)
class ClientPlan:
    """The client host: a public-looking and an RFC 1918 IPv4 source, a GUA and a ULA IPv6
    source.

    The lab's "internet" (the router's server side) drops private and ULA sources it is not
    told to translate, so ``v4`` is the source a healthy path uses and ``private_v4`` only
    gets through in the NAT44 scenario (``ula`` only in the NPTv6 one).
    """

    netns: str
    ifname: str = "up0"
    ifindex: int = 10
    #: public-looking IPv4 source (the default route's ``src`` unless the scenario is NAT44)
    v4: str = "203.0.113.194"
    v4_prefixlen: int = 26
    #: RFC 1918 IPv4 source, on the same link as the lab DNS server
    private_v4: str = "10.0.1.2"
    private_v4_prefixlen: int = 24
    gua: str = "2001:db8:c::2"
    ula: str = "fd12:3456:789a:c::2"
    v6_prefixlen: int = 64
    link_local: str = "fe80::2"
    #: direct link to the server (link-local only; needs a scope id)
    direct_ifname: str = "ll0"
    direct_ifindex: int = 14
    direct_link_local: str = "fe80::c"

    @property
    def private_v4_prefix(self) -> str:
        """The RFC 1918 client subnet (the inside of the NAT44 scenario, the DNS server's link)."""
        return str(ipaddress.IPv4Network(f"{self.private_v4}/{self.private_v4_prefixlen}",
                                         strict=False))

    @property
    def ula_prefix(self) -> str:
        """The site's ULA /48 (the inside prefix of the NPTv6 scenario)."""
        return str(ipaddress.IPv6Network(f"{self.ula}/48", strict=False))


@dataclass(frozen=True)
class RouterPlan:
    """The router between client and server, also hosting the lab DNS server."""

    netns: str
    client_ifname: str = "cl0"
    client_ifindex: int = 11
    server_ifname: str = "sv0"
    server_ifindex: int = 12
    delay_ifname: str = "dly0"
    delay_table: int = 100
    #: gateway addresses on the client side (the IPv4 default route goes via ``client_v4``
    #: whichever source it uses; ``client_public_v4`` makes the client's public /26 on-link)
    client_v4: str = "10.0.1.1"
    client_public_v4: str = "203.0.113.193"
    client_gua: str = "2001:db8:c::1"
    client_ula: str = "fd12:3456:789a:c::1"
    client_link_local: str = "fe80::1"
    #: addresses on the server side
    server_v4: str = "198.51.100.1"
    server_v6: str = "2001:db8:5::1"
    server_link_local: str = "fe80::1"
    #: the lab DNS server listens here (router namespace, client side)
    dns_v4: str = "10.0.1.53"
    dns_v6: str = "2001:db8:c::53"
    #: NPTv6 outside prefix (the client's ULA /48 is translated to it)
    nptv6_outside: str = "2001:db8:cafe::/48"


@dataclass(frozen=True)
class ServerPlan:
    """The server: several public-looking IPv4/IPv6 addresses, plus dead ones.

    Dead addresses are routed towards the server but silently dropped by the router in every
    scenario, which is what Happy Eyeballs must survive.
    """

    netns: str
    ifname: str = "up0"
    ifindex: int = 13
    v4: tuple[str, ...] = ("198.51.100.10", "198.51.100.11", "203.0.113.10")
    v6: tuple[str, ...] = ("2001:db8:5::10", "2001:db8:5::11", "2001:db8:55::10")
    dead_v4: tuple[str, ...] = ("198.51.100.99", "203.0.113.99")
    dead_v6: tuple[str, ...] = ("2001:db8:5::dead", "2001:db8:55::dead")
    link_local: str = "fe80::2"
    direct_ifname: str = "ll0"
    direct_ifindex: int = 15
    direct_link_local: str = "fe80::5"


@dataclass(frozen=True)
class Topology:
    """The complete plan of one lab, and the commands that build it."""

    prefix: str
    direct_link: bool = True

    @property
    def client(self) -> ClientPlan:
        """Client host plan."""
        return ClientPlan(netns=f"{self.prefix}-client")

    @property
    def router(self) -> RouterPlan:
        """Router plan."""
        return RouterPlan(netns=f"{self.prefix}-router")

    @property
    def server(self) -> ServerPlan:
        """Server host plan."""
        return ServerPlan(netns=f"{self.prefix}-server")

    @property
    def namespaces(self) -> tuple[str, str, str]:
        """The three namespace names (client, router, server)."""
        return (self.client.netns, self.router.netns, self.server.netns)

    # -- commands ---------------------------------------------------------------------------

    def root_batch(self) -> str:
        """``ip -batch`` run once: create namespaces and veth pairs directly inside them.

        Each veth end is created straight in its namespace (never in the host's), with its own
        ifindex: equal ifindexes on the two ends delay carrier-up by about a second.
        """
        c, r, s = self.client, self.router, self.server
        lines = [f"netns add {ns}" for ns in self.namespaces]
        lines.append(
            f"link add name {c.ifname} index {c.ifindex} netns {c.netns} type veth"
            f" peer name {r.client_ifname} index {r.client_ifindex} netns {r.netns}"
        )
        lines.append(
            f"link add name {r.server_ifname} index {r.server_ifindex} netns {r.netns} type veth"
            f" peer name {s.ifname} index {s.ifindex} netns {s.netns}"
        )
        if self.direct_link:
            lines.append(
                f"link add name {c.direct_ifname} index {c.direct_ifindex} netns {c.netns}"
                f" type veth peer name {s.direct_ifname} index {s.direct_ifindex}"
                f" netns {s.netns}"
            )
        return "\n".join(lines) + "\n"

    def client_batch(self) -> str:
        """Client addresses and default routes (the healthy, dual-stack state)."""
        c, r = self.client, self.router
        lines = ["link set lo up", *_static_link(c.ifname, c.link_local)]
        lines += [
            f"addr add {c.v4}/{c.v4_prefixlen} dev {c.ifname}",
            f"addr add {c.private_v4}/{c.private_v4_prefixlen} dev {c.ifname}",
            f"addr add {c.gua}/{c.v6_prefixlen} dev {c.ifname} nodad",
            f"addr add {c.ula}/{c.v6_prefixlen} dev {c.ifname} nodad",
            f"link set {c.ifname} up",
            f"route add default via {r.client_v4} dev {c.ifname} src {c.v4}",
            f"route add ::/0 via {r.client_link_local} dev {c.ifname}",
        ]
        if self.direct_link:
            lines += [*_static_link(c.direct_ifname, c.direct_link_local),
                      f"link set {c.direct_ifname} up"]
        return "\n".join(lines) + "\n"

    def router_batch(self) -> str:
        """Router addresses, routes to the server's extra prefixes, the delay-line table."""
        c, r, s = self.client, self.router, self.server
        lines = ["link set lo up", *_static_link(r.client_ifname, r.client_link_local)]
        lines += [
            f"addr add {r.client_v4}/{c.private_v4_prefixlen} dev {r.client_ifname}",
            f"addr add {r.client_public_v4}/{c.v4_prefixlen} dev {r.client_ifname}",
            f"addr add {r.dns_v4}/32 dev {r.client_ifname}",
            f"addr add {r.client_gua}/64 dev {r.client_ifname} nodad",
            f"addr add {r.client_ula}/64 dev {r.client_ifname} nodad",
            f"addr add {r.dns_v6}/128 dev {r.client_ifname} nodad",
            f"link set {r.client_ifname} up",
            *_static_link(r.server_ifname, r.server_link_local),
            f"addr add {r.server_v4}/24 dev {r.server_ifname}",
            f"addr add {r.server_v6}/64 dev {r.server_ifname} nodad",
            f"link set {r.server_ifname} up",
        ]
        for net in _extra_server_nets(s.v4 + s.dead_v4, "198.51.100.0/24"):
            lines.append(f"route add {net} via {s.v4[0]} dev {r.server_ifname}")
        for net in _extra_server_nets(s.v6 + s.dead_v6, "2001:db8:5::/64"):
            lines.append(f"route add {net} via {s.link_local} dev {r.server_ifname}")
        lines += [
            f"link set {r.delay_ifname} addrgenmode none",
            f"link set {r.delay_ifname} up",
            f"route add default dev {r.delay_ifname} table {r.delay_table}",
            f"route add ::/0 dev {r.delay_ifname} table {r.delay_table}",
        ]
        return "\n".join(lines) + "\n"

    def server_batch(self) -> str:
        """Server addresses (several per family, extra ones on ``lo``) and default routes."""
        s, r = self.server, self.router
        lines = ["link set lo up", *_static_link(s.ifname, s.link_local)]
        for addr in s.v4:
            if ipaddress.IPv4Address(addr) in ipaddress.IPv4Network("198.51.100.0/24"):
                lines.append(f"addr add {addr}/24 dev {s.ifname}")
            else:
                lines.append(f"addr add {addr}/32 dev lo")
        for addr in s.v6:
            if ipaddress.IPv6Address(addr) in ipaddress.IPv6Network("2001:db8:5::/64"):
                lines.append(f"addr add {addr}/64 dev {s.ifname} nodad")
            else:
                lines.append(f"addr add {addr}/128 dev lo nodad")
        lines += [
            f"link set {s.ifname} up",
            f"route add default via {r.server_v4} dev {s.ifname}",
            f"route add ::/0 via {r.server_link_local} dev {s.ifname}",
        ]
        if self.direct_link:
            lines += [*_static_link(s.direct_ifname, s.direct_link_local),
                      f"link set {s.direct_ifname} up"]
        return "\n".join(lines) + "\n"

    def sysctls(self) -> dict[str, dict[str, str]]:
        """Per-namespace sysctls: no DAD (addresses usable at once), forwarding on the router,
        no ICMP rate limit (rejects must be prompt however many tests run), ping for everyone."""
        no_dad = {
            "net.ipv6.conf.all.accept_dad": "0",
            "net.ipv6.conf.default.accept_dad": "0",
            "net.ipv6.conf.all.accept_ra": "0",
            "net.ipv6.conf.default.accept_ra": "0",
            "net.ipv4.icmp_ratelimit": "0",
            "net.ipv6.icmp.ratelimit": "0",
            "net.ipv4.ping_group_range": "0 2147483647",
        }
        router = {
            **no_dad,
            "net.ipv4.ip_forward": "1",
            "net.ipv6.conf.all.forwarding": "1",
            "net.ipv6.conf.default.forwarding": "1",
            # The delay line re-injects packets on a tun device: strict reverse-path
            # filtering would drop them as arriving on the "wrong" interface.
            "net.ipv4.conf.all.rp_filter": "0",
            "net.ipv4.conf.default.rp_filter": "0",
        }
        return {self.client.netns: no_dad, self.router.netns: router, self.server.netns: no_dad}

    def iface_sysctls(self) -> dict[str, dict[str, str]]:
        """Per-interface DAD off for links created before ``default`` could apply."""
        c, r, s = self.client, self.router, self.server
        out: dict[str, dict[str, str]] = {
            c.netns: _no_dad(c.ifname), r.netns: {**_no_dad(r.client_ifname),
                                                  **_no_dad(r.server_ifname)},
            s.netns: _no_dad(s.ifname),
        }
        if self.direct_link:
            out[c.netns].update(_no_dad(c.direct_ifname))
            out[s.netns].update(_no_dad(s.direct_ifname))
        return out


def _no_dad(ifname: str) -> dict[str, str]:
    return {f"net.ipv6.conf.{ifname}.accept_dad": "0"}


def _static_link(ifname: str, link_local: str) -> list[str]:
    # A fixed link-local address makes gateways and scope-id tests deterministic.
    return [f"link set {ifname} addrgenmode none",
            f"addr add {link_local}/64 dev {ifname} nodad"]


def _extra_server_nets(addresses: tuple[str, ...], on_link: str) -> list[str]:
    link = ipaddress.ip_network(on_link)
    nets: list[str] = []
    for addr in addresses:
        ip = ipaddress.ip_address(addr)
        if ip in link:
            continue
        net = str(ipaddress.ip_network(f"{ip}/{24 if ip.version == 4 else 64}", strict=False))
        if net not in nets:
            nets.append(net)
    return nets


def nptv6_translate(address: str, inside: str, outside: str) -> str:
    """The address NPTv6 (RFC 6296, as Linux' SNPT does it) turns ``address`` into.

    The prefix is replaced and one 16-bit word (the subnet word for a /48) is adjusted so that
    the one's-complement checksum of the address is unchanged.
    """
    ins, outs = ipaddress.IPv6Network(inside), ipaddress.IPv6Network(outside)
    if ins.prefixlen != outs.prefixlen or ins.prefixlen > 48:
        raise ValueError("NPTv6 needs equal prefix lengths of at most /48")
    addr = ipaddress.IPv6Address(address)
    if addr not in ins:
        raise ValueError(f"{address} is not inside {inside}")
    host_mask = (1 << (128 - ins.prefixlen)) - 1
    value = int(outs.network_address) | (int(addr) & host_mask)
    words = [(value >> (112 - 16 * i)) & 0xFFFF for i in range(8)]

    def csum(net: ipaddress.IPv6Network) -> int:
        total = sum((int(net.network_address) >> (112 - 16 * i)) & 0xFFFF for i in range(8))
        while total >> 16:
            total = (total & 0xFFFF) + (total >> 16)
        return total

    # adjustment = sum(inside) - sum(outside) in one's complement arithmetic
    adjustment = csum(ins) + (~csum(outs) & 0xFFFF)
    word = words[3] + adjustment
    while word >> 16:
        word = (word & 0xFFFF) + (word >> 16)
    if word == 0xFFFF:
        word = 0
    words[3] = word
    out = 0
    for w in words:
        out = (out << 16) | w
    return str(ipaddress.IPv6Address(out))
