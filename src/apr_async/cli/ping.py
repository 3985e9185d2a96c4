"""The ``ping`` subcommand: ICMP echo (TCP connect as fallback) from every source address."""

from __future__ import annotations

import argparse
import asyncio
import errno
import socket
import statistics
from dataclasses import dataclass, field
from typing import Any

from apr_async.cli.common import Output, Settings, family_arg, family_name, sockaddr_text
from apr_async.cli.exit import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_RESOLUTION,
    EXIT_SYSTEM,
    EXIT_USAGE,
    CliError,
)
from apr_async.cli.render import Style, format_ms, render_table
from apr_async.core.ranking import AddrPair
from apr_async.probe.probes import (
    IcmpUnavailableError,
    ProbeResult,
    detect_icmp_mode,
    icmp_probe,
    tcp_probe,
)
from apr_async.resolve.pairs import get_addr_pairs

__all__ = ["cmd_ping"]


def _probe_address(addr: tuple[Any, ...]) -> str:
    """A sockaddr as the probes take it: the IP, with a numeric zone for link-local."""
    if len(addr) >= 4 and addr[3]:
        return f"{addr[0]}%{addr[3]}"
    return str(addr[0])


@dataclass
class PairStats:
    """Probe results for one (source, destination) pair of one host."""

    host: str
    pair: AddrPair
    method: str = ""
    results: list[ProbeResult] = field(default_factory=list)

    @property
    def rtts(self) -> list[float]:
        """RTTs of answered probes."""
        return [r.rtt for r in self.results if r.ok and r.rtt is not None]

    @property
    def received(self) -> int:
        """Probes answered."""
        return sum(1 for r in self.results if r.ok)

    @property
    def note(self) -> str:
        """The last failure's words (or a refusal note)."""
        if any(r.refused for r in self.results):
            return "refused (RST): path works"
        failed = [r for r in self.results if not r.ok]
        if not failed or self.received:
            return ""
        if failed[-1].error == errno.ETIMEDOUT:
            return "no reply"
        return failed[-1].detail

    def as_dict(self) -> dict[str, object]:
        """JSON form."""
        rtts = self.rtts
        return {
            "host": self.host,
            "family": family_name(self.pair.family),
            "source": sockaddr_text(self.pair.source, port=False),
            "destination": sockaddr_text(self.pair.destination, port=False),
            "method": self.method,
            "sent": len(self.results),
            "received": self.received,
            "loss": 1 - self.received / len(self.results) if self.results else None,
            "rtt_min_ms": round(min(rtts) * 1000, 3) if rtts else None,
            "rtt_avg_ms": round(statistics.fmean(rtts) * 1000, 3) if rtts else None,
            "rtt_max_ms": round(max(rtts) * 1000, 3) if rtts else None,
            "note": self.note,
        }


class _Pinger:
    def __init__(self, args: argparse.Namespace, icmp_mode: str | None) -> None:
        self.args = args
        self.icmp_mode = icmp_mode
        self.limit = asyncio.Semaphore(32)

    async def one(self, method: str, pair: AddrPair) -> ProbeResult:
        src, dst = _probe_address(pair.source), _probe_address(pair.destination)
        async with self.limit:
            if method == "icmp":
                return await icmp_probe(
                    src, dst, max_wait=self.args.wait, privileged=self.icmp_mode == "privileged"
                )
            return await tcp_probe(src, dst, self.args.tcp_port, max_wait=self.args.wait)

    async def series(self, stats: PairStats, method: str) -> None:
        stats.method = method
        stats.results = []
        for n in range(self.args.count):
            if n:
                await asyncio.sleep(self.args.interval)
            stats.results.append(await self.one(method, stats.pair))

    async def pair(self, stats: PairStats) -> None:
        if self.icmp_mode is not None:
            try:
                await self.series(stats, "icmp")
            except IcmpUnavailableError:
                self.icmp_mode = None
            # Many hosts drop ICMP but answer TCP: a silent pair gets a second chance.
            if self.icmp_mode is not None and (stats.received or self.args.tcp_port is None):
                return
        await self.series(stats, "tcp")


def _icmp_mode_or_fail(args: argparse.Namespace, settings: Settings) -> str | None:
    """The ICMP mode to probe with (``None``: TCP only); a usage error if neither is possible."""
    icmp_mode = None if args.tcp else detect_icmp_mode(settings.config.icmp)
    if icmp_mode is None and args.tcp_port is None:
        if args.tcp:
            raise CliError("--tcp needs --tcp-port", EXIT_USAGE)
        if settings.config.icmp == "off":
            raise CliError("ICMP is off: pass --tcp-port to probe with TCP", EXIT_USAGE)
        raise CliError(
            "ICMP is not available here (no raw socket, no ping group): pass --tcp-port",
            EXIT_SYSTEM,
        )
    return icmp_mode


_PING_HEADERS = ["host", "source", "destination", "via", "recv", "loss", "min / avg / max", "note"]


def _ping_row(s: PairStats, st: Style) -> list[str]:
    d = s.as_dict()
    loss = d["loss"]
    loss_text = "-" if loss is None else f"{loss:.0%}"
    loss_text = (
        st.ok(loss_text) if loss == 0 else st.bad(loss_text) if loss == 1 else st.warn(loss_text)
    )
    rtts = s.rtts
    rtt = (
        f"{format_ms(min(rtts))} / {format_ms(statistics.fmean(rtts))} / {format_ms(max(rtts))}"
        if rtts
        else "-"
    )
    return [
        s.host,
        str(d["source"]),
        str(d["destination"]),
        s.method,
        f"{s.received}/{len(s.results)}",
        loss_text,
        rtt,
        s.note,
    ]


def _print_ping(
    out: Output, table: list[PairStats], down: list[str], unresolved: dict[str, str]
) -> None:
    st = out.style
    rows = [_ping_row(s, st) for s in table]
    if rows:
        out.print(render_table(_PING_HEADERS, rows, st))
    for host, why in unresolved.items():
        out.print(st.bad(f"{host}: cannot resolve: {why}"))
    out.print()
    if down:
        out.print(st.bad("down: ") + ", ".join(down))
    else:
        out.print(st.ok("all hosts up"))


async def cmd_ping(args: argparse.Namespace, out: Output, settings: Settings) -> int:
    """Probe each HOST from every source address; report RTT/loss and which hosts are down."""
    icmp_mode = _icmp_mode_or_fail(args, settings)
    context = settings.context()
    port = args.tcp_port or 0

    async def resolve(host: str) -> list[AddrPair] | socket.gaierror:
        try:
            return await get_addr_pairs(host, port, family=family_arg(args), context=context)
        except socket.gaierror as exc:
            return exc

    resolved = await asyncio.gather(*(resolve(h) for h in args.hosts))
    pinger = _Pinger(args, icmp_mode)
    table: list[PairStats] = []
    for host, pairs in zip(args.hosts, resolved, strict=True):
        if isinstance(pairs, list):
            table.extend(PairStats(host, p) for p in pairs)
    await asyncio.gather(*(pinger.pair(s) for s in table))

    down: list[str] = []
    unresolved: dict[str, str] = {}
    for host, pairs in zip(args.hosts, resolved, strict=True):
        if isinstance(pairs, socket.gaierror):
            unresolved[host] = str(pairs.strerror or pairs)
            down.append(host)
        elif not any(s.received for s in table if s.host == host):
            down.append(host)
    if out.json:
        out.emit({"pairs": [s.as_dict() for s in table], "down": down, "unresolved": unresolved})
    else:
        _print_ping(out, table, down, unresolved)
    if unresolved and len(unresolved) == len(args.hosts):
        return EXIT_RESOLUTION
    return EXIT_FAILED if down else EXIT_OK
