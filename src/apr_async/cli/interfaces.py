"""The ``interfaces`` subcommand: interfaces, their addresses with flags, gateways."""

from __future__ import annotations

import argparse
from typing import Any

from apr_async.cli.common import (
    Output,
    family_name,
)
from apr_async.cli.exit import EXIT_OK
from apr_async.cli.render import render_table
from apr_async.resolve import interfaces

__all__ = ["cmd_interfaces"]


async def cmd_interfaces(args: argparse.Namespace, out: Output) -> int:
    """Interfaces, their addresses (prefix length, scope, kind, flags) and default gateways."""
    snap = interfaces.read_snapshot()
    st = out.style
    by_index: dict[int | None, list[Any]] = {}
    for src in snap.sources:
        by_index.setdefault(src.ifindex, []).append(src)
    ifaces = sorted(snap.interfaces.values(), key=lambda i: i.index)
    if out.json:
        out.emit(
            {
                "backend": snap.backend,
                "interfaces": [
                    {
                        "index": i.index,
                        "name": i.name,
                        "up": i.up,
                        "running": i.running,
                        "loopback": i.loopback,
                        "addresses": [_source_dict(s) for s in by_index.get(i.index, [])],
                    }
                    for i in ifaces
                ],
                "gateways": [_gateway_dict(g) for g in snap.gateways],
            }
        )
        return EXIT_OK
    rows = []
    for iface in ifaces:
        state = (
            st.ok("up")
            if iface.up and iface.running
            else st.warn("up, no carrier" if iface.up else "down")
        )
        addrs = by_index.get(iface.index, [])
        label = f"{iface.name} ({iface.index})"
        if not addrs:
            rows.append([label, state, st("-", "dim"), "", "", ""])
        for n, src in enumerate(addrs):
            rows.append(
                [
                    label if n == 0 else "",
                    state if n == 0 else "",
                    f"{src.address}/{src.prefixlen}" if src.prefixlen is not None else src.text,
                    src.scope.name.lower().replace("_", "-"),
                    str(src.kind),
                    ", ".join(_flags(src)) or st("-", "dim"),
                ]
            )
    out.print(render_table(["interface", "state", "address", "scope", "kind", "flags"], rows, st))
    if snap.gateways:
        out.print()
        grows = [
            [family_name(g.family), str(g.address or "on-link"), g.interface or "-", str(g.metric)]
            for g in snap.gateways
        ]
        out.print(render_table(["default route", "gateway", "interface", "metric"], grows, st))
    else:
        out.print(st.warn("\nno default route"))
    return EXIT_OK


def _flags(src: Any) -> list[str]:
    return [name for name in ("deprecated", "temporary", "home") if getattr(src, name)]


def _source_dict(src: Any) -> dict[str, object]:
    return {
        "address": src.text,
        "prefixlen": src.prefixlen,
        "scope": src.scope.name.lower(),
        "kind": str(src.kind),
        "flags": _flags(src),
    }


def _gateway_dict(g: Any) -> dict[str, object]:
    return {
        "family": family_name(g.family),
        "gateway": None if g.address is None else str(g.address),
        "interface": g.interface,
        "metric": g.metric,
    }
