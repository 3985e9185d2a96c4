"""Moving a running lab from one :class:`~apr_async.lab.scenarios.Scenario` to another.

Each host's rules are computed from the pair (old, new) by :mod:`apr_async.lab.nft_rules`, so
a switch touches only what differs and open connections survive an unrelated change. The
three hosts are changed concurrently: they are independent, and a switch is on the critical
path of every lab test.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from apr_async.lab.delayline import DelayLine
from apr_async.lab.netns import run_ip
from apr_async.lab.nft_rules import (
    client_changes,
    delay_rules,
    nptv6_rules,
    router_scenario_rules,
    server_scenario_rules,
)
from apr_async.lab.scenarios import Scenario
from apr_async.lab.topology import Topology

__all__ = ["apply_scenario", "run_all"]


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


def set_delays(delay: DelayLine | None, scenario: Scenario) -> None:
    """Give the delay line the per-family delays of ``scenario`` (no line: nothing to do)."""
    if delay is not None:
        delay.set_delays(scenario.effective_delay(4), scenario.effective_delay(6))


async def apply_scenario(
    topo: Topology, old: Scenario, new: Scenario, delay: DelayLine | None,
) -> None:
    """Change the lab built from ``topo`` from scenario ``old`` to ``new``."""
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
            await run_ip(["netns", "exec", r, "nft", "-f", "-"], router_scenario_rules(topo, new))
        if old.nptv6 != new.nptv6:
            for argv in nptv6_rules(topo, new.nptv6):
                await run_ip(["netns", "exec", r, "ip6tables", "-w", *argv])

    async def server_side() -> None:
        if server_scenario_rules(topo, old) != server_scenario_rules(topo, new):
            await run_ip(["netns", "exec", s, "nft", "-f", "-"], server_scenario_rules(topo, new))

    async def client_side() -> None:
        batch = client_changes(topo, old, new)
        if batch:
            await run_ip(["-n", c, "-batch", "-"], batch)

    await run_all(router_side(), server_side(), client_side())
