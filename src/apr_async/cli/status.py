"""The ``status`` and ``monitor`` subcommands, both on a private probe service."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import signal
import time
from collections.abc import Iterator
from typing import Any

from apr_async.cli.common import Output, Settings
from apr_async.cli.exit import EXIT_FAILED, EXIT_OK
from apr_async.cli.render import LiveView, Progress, format_duration, format_ms, render_table
from apr_async.core.status import ConnectivityStatus
from apr_async.probe.default import PathMeasurement, ProbeService
from apr_async.resolve import interfaces

__all__ = ["cmd_monitor", "cmd_status", "status_json"]

_FLAG_HELP = {
    "IPv4_ok": "an IPv4 source reached a target beyond the gateway",
    "IPv6_ok": "an IPv6 source reached a target beyond the gateway",
    "GUA_ok": "a global IPv6 source reached a target beyond the gateway",
    "ULA_ok": "a ULA source reached a target beyond the gateway",
    "LLA_ok": "a link-local source reached its link-local target",
    "NAT44": "a private IPv4 source reached a public destination (translated)",
    "NPTv6": "a ULA source reached a global destination (NPTv6 / NAT66)",
    "RFC1918": "an RFC 1918 (or CGN) IPv4 source is configured",
    "ULA_present": "a ULA source is configured",
}


def _service(settings: Settings) -> ProbeService:
    # install=False: the CLI passes contexts explicitly and never touches process defaults.
    return ProbeService(settings.config, install=False)


@contextlib.contextmanager
def _stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        yield
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


def status_rows(status: ConnectivityStatus, out: Output) -> list[list[str]]:
    """Rows (flag, value, meaning) for the status table: what works in green or red, what
    is merely present (a translation, a private source) in yellow, then the gateways and the
    NAT64 prefix."""
    st = out.style
    rows = []
    for name in (
        "IPv4_ok",
        "IPv6_ok",
        "GUA_ok",
        "ULA_ok",
        "LLA_ok",
        "NAT44",
        "NPTv6",
        "RFC1918",
        "ULA_present",
    ):
        value = bool(getattr(status, name))
        works = name.endswith("_ok")
        shown = (
            (st.ok("yes") if value else st.bad("no"))
            if works
            else (st.warn("yes") if value else "no")
        )
        rows.append([name, shown, _FLAG_HELP[name]])
    rows.append(["def_gateway4", status.def_gateway4 or st.warn("none"), "IPv4 default gateway"])
    rows.append(["def_gateway6", status.def_gateway6 or st.warn("none"), "IPv6 default gateway"])
    rows.append(["NAT64_prefix", status.NAT64_prefix or "-", "RFC 7050 discovery"])
    return rows


def status_json(
    status: ConnectivityStatus, *, now: float | None = None, wall: float | None = None
) -> dict[str, Any]:
    """``status.as_dict(full=True)`` for JSON consumers: ``changed_at`` and ``updated_at`` as
    ISO 8601 UTC wall-clock times (the status holds monotonic seconds, which mean nothing
    outside this process), plus ``changed_age_s`` / ``updated_age_s`` in seconds.

    ``now`` is the monotonic time matching the wall-clock ``wall`` (both default to now).
    """
    now = time.monotonic() if now is None else now
    wall = time.time() if wall is None else wall
    data = status.as_dict(full=True)
    for name in ("changed", "updated"):
        at = data.pop(f"{name}_at")
        if at is None:
            data[f"{name}_at"] = data[f"{name}_age_s"] = None
            continue
        age = max(0.0, now - at)
        stamp = datetime.datetime.fromtimestamp(wall - age, tz=datetime.UTC)
        data[f"{name}_at"] = stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        data[f"{name}_age_s"] = round(age, 3)
    return data


def _addresses(snapshot: interfaces.HostSnapshot) -> list[dict[str, Any]]:
    out = []
    for src in snapshot.sources:
        out.append(
            {
                "interface": src.interface,
                "address": src.text,
                "prefixlen": src.prefixlen,
                "kind": str(src.kind),
                "scope": src.scope.name.lower(),
            }
        )
    return out


async def cmd_status(args: argparse.Namespace, out: Output, settings: Settings) -> int:
    """Probe the targets once (up to ``--timeout``) and show the connectivity status."""
    progress = Progress(enabled=None if not out.json else False)
    start = time.monotonic()
    async with _service(settings) as service:
        waiter = asyncio.ensure_future(service.wait_ready(args.timeout))
        try:
            while not waiter.done():
                progress.update(
                    f"probing {len(service.targets()) or len(settings.config.targets)} target(s)"
                    f" from every source  {format_duration(time.monotonic() - start)}"
                )
                await asyncio.wait({waiter}, timeout=0.1)
            ready = waiter.result()
        finally:
            waiter.cancel()
            progress.clear()
        status = service.status()
        targets = [t.label for t in service.targets()]
    snapshot = interfaces.read_snapshot()
    works = status.IPv4_ok or status.IPv6_ok
    if out.json:
        out.emit(
            {
                "ready": ready,
                "status": status_json(status),
                "targets": targets,
                "addresses": _addresses(snapshot),
            }
        )
    else:
        st = out.style
        out.print(render_table(["flag", "value", "meaning"], status_rows(status, out), st))
        out.print()
        rows = [
            [
                src.interface or "-",
                f"{src.text}/{src.prefixlen}",
                str(src.kind),
                f"IPv{src.address.version}",
            ]
            for src in snapshot.sources
        ]
        out.print(render_table(["interface", "address", "kind", "family"], rows, st))
        out.print()
        if not ready:
            out.print(st.warn(f"no probe round completed within {format_duration(args.timeout)}"))
        out.print(
            (st.ok("connectivity: ") if works else st.bad("connectivity: "))
            + status.summary()
            + st(f"  ({status.observations} observation(s), {len(targets)} target(s))", "dim")
        )
    return EXIT_OK if ready and works else EXIT_FAILED


def _measure_rows(
    measurements: list[PathMeasurement], labels: dict[str, str], out: Output
) -> list[list[str]]:
    st = out.style
    rows = []
    for m in measurements:
        state = st.ok("up") if m.ok else st.bad("down")
        rows.append(
            [
                labels.get(m.destination, m.destination),
                m.source,
                state,
                format_ms(m.rtt),
                format_ms(m.min_rtt),
                f"{m.loss:.0%}",
                str(m.samples),
                "/".join(m.methods),
                format_duration(m.age),
            ]
        )
    return rows


def _measure_dict(m: PathMeasurement) -> dict[str, object]:
    return {
        "source": m.source,
        "destination": m.destination,
        "ok": m.ok,
        "rtt_ms": None if m.rtt is None else round(m.rtt * 1000, 3),
        "min_rtt_ms": None if m.min_rtt is None else round(m.min_rtt * 1000, 3),
        "loss": m.loss,
        "samples": m.samples,
        "methods": list(m.methods),
        "age": round(m.age, 3),
    }


async def cmd_monitor(args: argparse.Namespace, out: Output, settings: Settings) -> int:
    """A live table of every probed path, refreshed in place until Ctrl-C or ``--duration``."""
    stop = asyncio.Event()
    view = LiveView(out.stream, live=None if not out.json else False)
    start = time.monotonic()
    frames = 0
    with _stop_on_signals(stop):
        async with _service(settings) as service:
            while True:
                elapsed = time.monotonic() - start
                status = service.status()
                measurements = service.measurements()
                if out.json:
                    out.emit(
                        {
                            "t": round(elapsed, 3),
                            "round": service.rounds,
                            "status": status_json(status),
                            "paths": [_measure_dict(m) for m in measurements],
                        }
                    )
                else:
                    labels = {str(t.ip): f"{t.label} ({t.kind})" for t in service.targets()}
                    head = out.style(
                        f"apr-async monitor  round {service.rounds}  "
                        f"{format_duration(elapsed)}  (Ctrl-C to stop)",
                        "bold",
                    )
                    table = render_table(
                        [
                            "target",
                            "source",
                            "state",
                            "rtt",
                            "min",
                            "loss",
                            "samples",
                            "via",
                            "age",
                        ],
                        _measure_rows(measurements, labels, out),
                        out.style,
                        align_right=[3, 4, 5, 6],
                    )
                    view.update(f"{head}\n{status.summary()}\n\n{table}")
                frames += 1
                remaining = None if args.duration is None else args.duration - elapsed
                if remaining is not None and remaining <= 0:
                    break
                wait = args.refresh if remaining is None else min(args.refresh, remaining)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), wait)
                if stop.is_set():
                    break
    return EXIT_OK
