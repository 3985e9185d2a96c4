"""What building a lab and switching its scenario run: the namespaces, veth links, addresses,
routes and base rulesets of a :class:`~apr_async.lab.topology.Topology`, and the rule changes
from one :class:`~apr_async.lab.scenarios.Scenario` to another.

The :class:`~apr_async.lab.lab.Lab` owns the threads, servers and processes; these functions
only talk to ``ip`` and ``nft`` (and the delay line they are given).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from apr_async.lab.cleanup import sweep_stale_labs
from apr_async.lab.delayline import DelayLine, open_tun
from apr_async.lab.netns import run_ip, write_sysctls
from apr_async.lab.nft_rules import (
    client_changes,
    delay_rules,
    nptv6_rules,
    router_base_ruleset,
    router_scenario_rules,
    server_base_ruleset,
    server_scenario_rules,
)
from apr_async.lab.scenarios import Scenario
from apr_async.lab.topology import Topology

__all__ = [
    "apply_scenario",
    "configure_hosts",
    "create_namespaces",
    "open_delay_line",
    "run_all",
    "set_delays",
]


async def run_all(*coros: Coroutine[Any, Any, Any]) -> None:
    """Run ``coros`` concurrently; on the first failure cancel and await the rest.

    ``asyncio.gather`` alone would leave the others running, unsupervised, after it raised.
    """
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def create_namespaces(topo: Topology) -> None:
    """The namespaces and the links between them (stale labs swept first), and sysctls."""
    sweep_stale_labs()
    await run_ip(["-batch", "-"], topo.root_batch())
    iface = topo.iface_sysctls()
    for ns, values in topo.sysctls().items():
        write_sysctls(ns, {**values, **iface[ns]})


async def configure_hosts(topo: Topology) -> None:
    """Each host's addresses and routes, then the router's and the server's base rulesets
    (after :func:`create_namespaces` and the router's delay line)."""
    r, s = topo.router.netns, topo.server.netns
    await run_all(
        run_ip(["-n", topo.client.netns, "-batch", "-"], topo.client_batch()),
        run_ip(["-n", r, "-batch", "-"], topo.router_batch()),
        run_ip(["-n", s, "-batch", "-"], topo.server_batch()),
    )
    await run_all(
        run_ip(["netns", "exec", r, "nft", "-f", "-"], router_base_ruleset(topo)),
        run_ip(["netns", "exec", s, "nft", "-f", "-"], server_base_ruleset()),
    )


def open_delay_line(ifname: str) -> DelayLine:
    """A started delay line on a new tun device *ifname* (in the calling thread's namespace)."""
    # Runs on the router's service loop: the tun device is created in the router namespace.
    line = DelayLine(open_tun(ifname))
    line.start()
    return line


def set_delays(delay: DelayLine | None, scenario: Scenario) -> None:
    """Give the delay line (if any) *scenario*'s per-family delays."""
    if delay is not None:
        delay.set_delays(scenario.effective_delay(4), scenario.effective_delay(6))


async def apply_scenario(topo: Topology, old: Scenario, new: Scenario,
                         delay: DelayLine | None) -> None:
    """Change the rules in force for *old* into those for *new*: only what differs."""
    r, s, c = topo.router.netns, topo.server.netns, topo.client.netns

    async def router_side() -> None:
        if new.effective_delay(4) or new.effective_delay(6):
            set_delays(delay, new)  # before steering packets into the line
        v4_rules, v6_rules = delay_rules(topo, old, new)
        if v4_rules:
            await run_ip(["-4", "-n", r, "-batch", "-"], v4_rules)
        if v6_rules:
            await run_ip(["-6", "-n", r, "-batch", "-"], v6_rules)
        set_delays(delay, new)
        if router_scenario_rules(topo, old) != router_scenario_rules(topo, new):
            await run_ip(["netns", "exec", r, "nft", "-f", "-"],
                         router_scenario_rules(topo, new))
        if old.nptv6 != new.nptv6:
            for argv in nptv6_rules(topo, new.nptv6):
                await run_ip(["netns", "exec", r, "ip6tables", "-w", *argv])

    async def server_side() -> None:
        if server_scenario_rules(topo, old) != server_scenario_rules(topo, new):
            await run_ip(["netns", "exec", s, "nft", "-f", "-"],
                         server_scenario_rules(topo, new))

    async def client_side() -> None:
        batch = client_changes(topo, old, new)
        if batch:
            await run_ip(["-n", c, "-batch", "-"], batch)

    await run_all(router_side(), server_side(), client_side())
