"""The demo's output: :class:`DemoPrinter` collects the report and, for people, renders each
section (lab, status, pairs, each race's table and timeline) as soon as it is known."""

from __future__ import annotations

import time
from typing import Any

from apr_async.cli.commands import pairs_table
from apr_async.cli.common import Output
from apr_async.cli.demo_observer import HE_DELAY, PLAIN_CAP
from apr_async.cli.render import Progress, format_duration, render_table
from apr_async.cli.status import status_rows
from apr_async.cli.timeline import TIMELINE_HEADERS, timeline_rows

__all__ = ["DemoPrinter", "Report", "render_section"]

Report = dict[str, Any]


class DemoPrinter:
    """Collects the report; for people, prints each section as soon as it is known."""

    def __init__(self, out: Output) -> None:
        self.out = out
        self.report: Report = {"mode": "lab", "reason": None, "races": []}
        self._progress = Progress(enabled=None if not out.json else False)
        self._number = 0

    def progress(self, text: str) -> None:
        """A transient progress line (terminal only)."""
        self._progress.update(text)

    def emit(self, section: str, data: Any) -> None:
        """Record a section (keys starting with ``_`` are for rendering only)."""
        public = {k: v for k, v in data.items() if not k.startswith("_")}
        if section == "race":
            self.report["races"].append(public)
        elif section == "loopback":
            self.report.update(mode="loopback", reason=data["reason"])
        else:
            self.report[section] = public
        if self.out.json:
            return
        self._progress.clear()
        if section in ("status", "pairs", "race"):
            self._number += 1
        self.out.print(render_section(section, data, self.out, self._number))

    def finish(self, started: float) -> None:
        """Print the JSON document, or the closing line for people."""
        self._progress.clear()
        self.report["elapsed_s"] = round(time.monotonic() - started, 3)
        if self.out.json:
            self.out.emit(self.report)
            return
        where = "the lab" if self.report["mode"] == "lab" else "loopback"
        self.out.print(self.out.style(
            f"demo finished in {format_duration(self.report['elapsed_s'])}; "
            f"nothing was sent outside {where}", "dim"))


def render_section(section: str, data: Any, out: Output, number: int) -> str:
    st = out.style
    if section == "lab":
        s = data["server"]
        return "\n".join([
            st(f"apr-async demo: lab {data['prefix']} built in {data['setup_ms']:.0f} ms", "bold")
            + " (client -- router -- server in network namespaces)",
            f"  scenario: {st.warn('IPv6 blackholed')} + {st.warn('ULA source trap')} "
            "(the client's IPv6 route prefers its ULA source, which the lab's internet drops "
            "untranslated, as real upstreams do)",
            f"  server:   {', '.join(s['v6'][:1] + s['v4'][:1])} port {data['port']} "
            f"(dual-stack echo server); DNS {', '.join(data['dns'])}",
            "",
        ])
    if section == "loopback":
        return (st.warn(f"no lab: {data['reason']}") + "; running on loopback only "
                "(as root with network namespaces the demo shows the real thing)\n")
    if section == "status":
        head = st(f"{number}. Connectivity status", "bold") + (
            f" after one probe round ({format_duration(data['round_s'])}) towards "
            f"{', '.join(data['targets'])}")
        lines = [head, render_table(["flag", "value", "meaning"],
                                    status_rows(data["_status"], out), st, indent="  ")]
        if not data["ready"]:
            lines.append(st.warn("  no probe round completed in time"))
        return "\n".join([*lines, ""])
    if section == "pairs":
        return "\n".join([
            st(f"{number}. Ranked pairs for {data['host']} port {data['port']}", "bold"),
            _indent(pairs_table(data["_pairs"], out)), ""])
    return _render_race(data, out, number)


def _indent(text: str, prefix: str = "  ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())


def _client_label(client: str) -> str:
    if client == "asyncio":
        return f"asyncio (cap {PLAIN_CAP:g}s)"
    if client == "asyncio HE":
        return f"asyncio HE {HE_DELAY:g}s"
    return client


def _render_race(data: Report, out: Output, number: int) -> str:
    st = out.style
    lines = [st(f"{number}. Connecting to {data['host']} port {data['port']}: {data['title']}",
                "bold"),
             st(f"  ({data['note']})", "dim")]
    rows = []
    for c in data["clients"]:
        if c["connected"]:
            result = st.ok("connected")
            winner = f"{c['winner']['source']} -> {c['winner']['destination']}"
        else:
            result = st.bad(c["error"] or "failed")
            winner = "-"
        rows.append([_client_label(c["client"]), result,
                     format_duration(c["elapsed_ms"] / 1000), str(c["attempts"]), winner,
                     c["server_saw"] or "-"])
    lines.append(render_table(
        ["client", "result", "time", "attempts", "winner (source -> destination)", "server saw"],
        rows, st, align_right=[2, 3], indent="  "))
    lines.append("")
    trows = [[c["client"], *row] for c in data["clients"]
             for row in timeline_rows(c["events"], st)]
    lines.append(render_table(["timeline", *TIMELINE_HEADERS], trows, st, align_right=[1],
                              indent="  "))
    return "\n".join([*lines, ""])
