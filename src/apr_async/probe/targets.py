"""What a probe round probes: the configured targets (resolved), gateways, recent destinations
and Atlas anchors, as :class:`~apr_async.probe.plan.Target` s."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from apr_async.config import Config
from apr_async.core.addresses import IPAddress, parse_address
from apr_async.probe.plan import RecentDestinations, Target, gateway_targets
from apr_async.resolve import interfaces
from apr_async.resolve.resolver import Resolver

__all__ = ["collect_targets", "resolve_target"]

log = logging.getLogger("apr_async.probe")


async def collect_targets(
    config: Config,
    resolver: Resolver,
    snapshot: interfaces.HostSnapshot,
    now: float,
    *,
    icmp: bool,
    recent: RecentDestinations,
    anchors: Sequence[IPAddress],
) -> list[Target]:
    """The targets of one round; *icmp* tells whether ICMP probes can be sent."""
    cfg = config
    out: list[Target] = []
    tcp_default = cfg.probe_port if cfg.tcp_probes else None
    for target in cfg.probe_targets:
        port = (target.port or cfg.probe_port) if cfg.tcp_probes else None
        for ip, ifindex in await resolve_target(target.host, snapshot, resolver,
                                                cfg.dns_timeout * 2):
            out.append(Target(ip, ifindex, port, "configured", target.host))
    if cfg.probe_gateways:
        # a gateway is not a TCP service; it gets TCP only when ICMP cannot be used,
        # and then a refusal (RST) is the expected proof of the path
        out += gateway_targets(snapshot, tcp_default if not icmp else None)
    out += recent.due(now, tcp=cfg.tcp_probes)
    out += [Target(ip, None, tcp_default, "atlas", str(ip)) for ip in anchors]
    return out


async def resolve_target(
    host: str, snapshot: interfaces.HostSnapshot, resolver: Resolver, within: float
) -> list[tuple[IPAddress, int | None]]:
    """*host* (an address, or a name resolved within *within* seconds) with its interface index."""
    try:
        ip, zone = parse_address(host)
    except ValueError:
        pass
    else:
        ifindex = None
        if zone is not None:
            ifindex = int(zone) if zone.isdigit() else snapshot.ifindex_of(zone)
            if ifindex is None:
                return []
        return [(ip, ifindex)]
    try:
        async with asyncio.timeout(within):
            found = await resolver.resolve(host)
    except (OSError, TimeoutError) as exc:
        log.debug("probe target %s does not resolve: %s", host, exc)
        return []
    out: list[tuple[IPAddress, int | None]] = []
    for ip, zone in found:
        ifindex = None
        if zone is not None:
            ifindex = int(zone) if zone.isdigit() else snapshot.ifindex_of(zone)
        out.append((ip, ifindex))
    return out
