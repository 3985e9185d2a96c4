"""The service's plain pieces: :class:`PathMeasurement`, :func:`context_for`, address parsing."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from apr_async.config import Config
from apr_async.core.addresses import IPAddress, Scope, parse_address, scope_of
from apr_async.core.failures import FailureTable
from apr_async.core.families import AF_INET, AF_INET6
from apr_async.core.latency import LatencyTable
from apr_async.core.ranking import Translator
from apr_async.core.status import ConnectivityStatus
from apr_async.resolve import interfaces, pairs
from apr_async.resolve.resolver import Resolver

__all__ = ["PathMeasurement", "context_for", "gateway_texts", "ip_of", "translators_of"]


@dataclass(frozen=True, slots=True)
class PathMeasurement:
    """What is known about one (source, destination) path, for people and monitors.

    ``ok``: the latest result of at least one method (ICMP, TCP, passive) proved the path.
    ``rtt`` is the EWMA, ``last_rtt`` the latest sample, ``min_rtt`` the smallest (seconds);
    ``loss`` the fraction of recent probes lost; ``age`` seconds since the latest result.
    """

    source: str
    destination: str
    methods: tuple[str, ...]
    ok: bool
    rtt: float | None
    min_rtt: float | None
    loss: float
    samples: int
    age: float
    last_rtt: float | None = None




def context_for(
    config: Config, *, clock: Callable[[], float] = time.monotonic
) -> pairs.PairContext:
    """A ranking context with ``config``'s tables, resolver and preferences (empty tables).

    The resolver uses ``config.nameservers`` (the system's when empty) and ``dns_timeout``;
    it opens no socket until its first query.
    """
    return pairs.PairContext(
        latency=LatencyTable(
            prefix_v6=config.prefix_v6,
            prefix_v4=config.prefix_v4,
            alpha=config.ewma_weight,
            max_entries=config.table_size,
        ),
        failures=FailureTable(config.failure_ttl, max_entries=config.table_size),
        resolver=Resolver(list(config.nameservers) or None, timeout=config.dns_timeout),
        ipv6_bias_ms=config.ipv6_bias_ms,
        clock=clock,
    )


def ip_of(addr: object) -> tuple[IPAddress, int | None] | None:
    if not isinstance(addr, tuple) or not addr or not isinstance(addr[0], str):
        return None
    try:
        ip, zone = parse_address(addr[0])
    except ValueError:
        return None
    scope = addr[3] if len(addr) == 4 and isinstance(addr[3], int) and addr[3] else None
    if scope is None and zone is not None and zone.isdigit():
        scope = int(zone)
    return ip, scope


def gateway_texts(snapshot: interfaces.HostSnapshot) -> dict[int, str | None]:
    """The default gateway of each family as the status shows it (``None``: none)."""
    gateways: dict[int, str | None] = {}
    for family in (AF_INET, AF_INET6):
        gw = snapshot.default_gateway(family)
        text: str | None = None
        if gw is not None:
            if gw.address is None:
                text = f"dev {gw.interface}" if gw.interface else "on-link"
            elif scope_of(gw.address) <= Scope.LINK_LOCAL and gw.interface:
                text = f"{gw.address}%{gw.interface}"
            else:
                text = str(gw.address)
        gateways[family] = text
    return gateways


def translators_of(status: ConnectivityStatus) -> frozenset[str]:
    """The translators (``ranking.Translator`` values) the status detected."""
    found = set()
    if status.NAT44:
        found.add(Translator.NAT44.value)
    if status.NPTv6:
        found.add(Translator.NPTV6.value)
    if status.NAT64_prefix:
        found.add(Translator.NAT64.value)
    return frozenset(found)
