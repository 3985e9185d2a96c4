"""Network pathologies a running lab can be switched into, and the rules that create them.

A :class:`Scenario` is a frozen description; :func:`combine` composes several (for example
"IPv6 slower by 80 ms" + "NAT44"). Turning a scenario into nftables text, ``ip`` commands and
delay-line settings is pure and lives here too, so it is unit-testable without root.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, fields, replace

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
            if (not isinstance(delay, int | float) or isinstance(delay, bool)
                    or not math.isfinite(delay) or not 0.0 <= delay <= MAX_DELAY):
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
        changed = [f"{f.name}={getattr(self, f.name)}" for f in fields(self)
                   if getattr(self, f.name) != f.default]
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
