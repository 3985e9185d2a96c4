"""The ``interfaces``, ``pairs``, ``connect``, ``wait`` and ``forward`` subcommands."""

from __future__ import annotations

import argparse
import asyncio
import errno as errno_codes
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any

from apr_async.cli.common import (
    Output,
    Settings,
    family_arg,
    family_name,
    sockaddr_text,
)
from apr_async.cli.exit import EXIT_FAILED, EXIT_OK, EXIT_RESOLUTION
from apr_async.cli.forward import Forwarder, RelayRecord
from apr_async.cli.render import Progress, Style, format_duration, format_ms, render_table
from apr_async.connect.api import (
    AttemptRecorder,
    ConnectPair,
    ContextRecorder,
    PairSource,
    connect_socket,
    open_connection,
    ranked_source,
)
from apr_async.connect.types import families_for
from apr_async.core.ranking import AddrPair
from apr_async.errors import describe_error, describe_resolution_error
from apr_async.resolve import interfaces
from apr_async.resolve.pairs import get_addr_pairs
from apr_async.resolve.resolver import Resolver

__all__ = [
    "TIMELINE_HEADERS",
    "Timeline",
    "cmd_connect",
    "cmd_forward",
    "cmd_interfaces",
    "cmd_pairs",
    "cmd_wait",
    "pair_dict",
    "pairs_table",
    "timeline_event_json",
    "timeline_rows",
]


def _error_text(exc: BaseException) -> str:
    return describe_error(exc)


# -- interfaces ---------------------------------------------------------------------------------


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


# -- pairs --------------------------------------------------------------------------------------


def pair_dict(rank: int, pair: AddrPair) -> dict[str, object]:
    """JSON form of one ranked pair."""
    return {
        "rank": rank,
        "family": family_name(pair.family),
        "source": sockaddr_text(pair.source, port=False),
        "destination": sockaddr_text(pair.destination),
        "rtt_ms": _ms(pair.rtt),
        "failing": pair.failing,
        "reason": pair.reason,
    }


def pairs_table(pairs: list[AddrPair], out: Output) -> str:
    """The ranked pairs as a table for people."""
    st = out.style
    rows = []
    for rank, pair in enumerate(pairs, 1):
        rtt = format_ms(pair.rtt)
        if pair.failing:
            rtt = st.bad(rtt + " failing")
        elif pair.rtt is not None:
            rtt = st.ok(rtt)
        rows.append(
            [
                str(rank),
                family_name(pair.family),
                sockaddr_text(pair.source, port=False),
                sockaddr_text(pair.destination),
                rtt,
                pair.reason,
            ]
        )
    return render_table(
        ["#", "family", "source", "destination", "rtt", "why here"], rows, st, align_right=[0]
    )


async def cmd_pairs(args: argparse.Namespace, out: Output, settings: Settings) -> int:
    """The ranked (source, destination) pairs for HOST PORT, with latency and reasons."""
    pairs = await get_addr_pairs(
        args.host, args.port, family=family_arg(args), context=settings.context()
    )
    if out.json:
        out.emit(
            {
                "host": args.host,
                "port": args.port,
                "pairs": [pair_dict(n, p) for n, p in enumerate(pairs, 1)],
            }
        )
    else:
        out.print(pairs_table(pairs, out))
    return EXIT_OK if pairs else EXIT_FAILED


# -- connect ------------------------------------------------------------------------------------


class Timeline:
    """Collects what happened during one race, with times relative to its start.

    It is the race's ``service`` (``record_attempt``) and wraps its pair source, so it sees
    each family's answer and each attempt's outcome as they happen. ``events`` hold times in
    seconds; :func:`timeline_event_json` gives their JSON form and :func:`timeline_rows` a
    table.
    """

    def __init__(
        self,
        source: PairSource,
        recorder: AttemptRecorder | None = None,
        *,
        resolver: Resolver | None = None,
    ) -> None:
        self._source = source
        self._recorder = recorder
        # Asked (never queried: cached answers only) why a family came back without pairs.
        self._resolver = resolver
        self.t0 = time.monotonic()
        self.events: list[dict[str, Any]] = []

    def _at(self) -> float:
        return time.monotonic() - self.t0

    def record_attempt(
        self, pair: Any, port: int, ok: bool, rtt: float | None, errno: int | None
    ) -> None:
        """Called by the race for every attempt that has an outcome."""
        if self._recorder is not None:  # the context still learns, as without a timeline
            self._recorder.record_attempt(pair, port, ok, rtt, errno)
        connected = ok and errno is None
        self.events.append(
            {
                "t": self._at(),
                "kind": "attempt",
                "family": family_name(pair.family),
                "source": sockaddr_text(pair.source, port=False),
                "destination": sockaddr_text(pair.destination),
                "ok": connected,
                "outcome": "connected" if connected else _errno_text(errno),
                "rtt": rtt,
            }
        )

    def pair_source(
        self, host: str, port: int, family: int
    ) -> AsyncIterator[tuple[int, Sequence[ConnectPair]]]:
        """The wrapped pair source, noting when each family's answer arrived."""

        async def gen() -> AsyncIterator[tuple[int, Sequence[ConnectPair]]]:
            agen = self._source(host, port, family)
            answered: set[int] = set()
            try:
                async for fam, pairs in agen:
                    if fam == socket.AF_UNSPEC:
                        answered.update(families_for(family))
                    else:
                        answered.add(fam)
                    self._answer(
                        # AF_UNSPEC: every family at once (a literal, a warm cache).
                        "both" if fam == socket.AF_UNSPEC else family_name(fam),
                        len(pairs),
                        None if pairs else self._family_error(host, fam),
                    )
                    yield fam, pairs
            except socket.gaierror as exc:
                # A source may raise the name's error instead of yielding the families that
                # had no answer: give every family its row, so the timeline tells the story.
                for fam in families_for(family):
                    if fam not in answered:
                        why = self._family_error(host, fam) or describe_resolution_error(exc)
                        self._answer(family_name(fam), 0, why)
                raise
            finally:
                # A PairSource is any async iterator; the ones that are generators get closed
                # here, in this task, rather than by the garbage collector later.
                aclose = getattr(agen, "aclose", None)
                if aclose is not None:
                    await aclose()

        return gen()

    def _answer(self, family: str, pairs: int, error: str | None) -> None:
        event: dict[str, Any] = {
            "t": self._at(),
            "kind": "answer",
            "family": family,
            "pairs": pairs,
        }
        if error is not None:
            event["error"] = error
        self.events.append(event)

    def _family_error(self, host: str, family: int) -> str | None:
        """Why ``family`` has no address, from the resolver's cache (``None``: not known)."""
        if self._resolver is None:
            return None
        try:
            resolution = self._resolver.cached(host, family)
        except (ValueError, TypeError):
            return None
        if resolution is None:
            return None
        for answer in resolution.answers:
            if answer.error is not None and family in (socket.AF_UNSPEC, answer.family):
                return describe_resolution_error(answer.error)
        return None


def _errno_text(errno: int | None) -> str:
    if errno is None:
        return "failed"
    if errno == errno_codes.ECONNREFUSED:
        return "refused"
    if errno == errno_codes.ETIMEDOUT:
        # The race reports an attempt it abandoned (after its delay) as ETIMEDOUT.
        return "timed out / lost the race"
    return os.strerror(errno).lower()


#: Column headers of :func:`timeline_rows`.
TIMELINE_HEADERS = ("t", "family", "source", "destination", "outcome")


def timeline_event_json(event: Mapping[str, Any]) -> dict[str, Any]:
    """A :class:`Timeline` event (seconds) in its JSON form: ``t`` and ``rtt`` in ms."""
    out = {**event, "t": _ms(event["t"])}
    if "rtt" in event:
        out["rtt"] = _ms(event["rtt"])
    return out


def timeline_rows(events: Iterable[Mapping[str, Any]], style: Style) -> list[list[str]]:
    """Table rows under :data:`TIMELINE_HEADERS` for events in their JSON form (ms).

    An ``answer`` event counts ``pairs`` (a ranked answer) or ``addresses`` (an unranked
    one, in the system's order); an ``attempt`` shows its outcome and, when one came, the
    time the far end took to answer.
    """
    rows = []
    for e in events:
        t = format_ms(e["t"] / 1000)
        if e["kind"] == "answer":
            what = (
                f"{e['pairs']} pair(s)"
                if "pairs" in e
                else f"{e['addresses']} address(es), system order"
            )
            if e.get("error"):
                what = style.bad(str(e["error"]))
            rows.append([t, e["family"], style("answer", "dim"), "", what])
            continue
        outcome = style.ok(e["outcome"]) if e["ok"] else style.bad(e["outcome"])
        if e.get("rtt") is not None:
            outcome += f" in {format_ms(e['rtt'] / 1000)}"
        rows.append([t, e["family"], e["source"], e["destination"], outcome])
    return rows


async def cmd_connect(args: argparse.Namespace, out: Output, settings: Settings) -> int:
    """Race HOST PORT and show the timeline of attempts and the winner."""
    context = settings.context()
    timeline = Timeline(
        ranked_source(context), ContextRecorder(context), resolver=context.get_resolver()
    )
    error: OSError | None = None
    sock: socket.socket | None = None
    local: tuple[Any, ...] = ()
    peer: tuple[Any, ...] = ()
    try:
        sock = await connect_socket(
            args.host,
            args.port,
            family=family_arg(args),
            timeout=args.timeout,
            happy_eyeballs_delay=args.delay,
            service=timeline,
            pair_source=timeline.pair_source,
            context=context,
        )
        local, peer = sock.getsockname(), sock.getpeername()
    except OSError as exc:  # gaierror, TimeoutError and AllAttemptsFailedError included
        error = exc
    finally:
        if sock is not None:
            sock.close()
    elapsed = time.monotonic() - timeline.t0
    # The race records its winner one loop turn after handing the socket over (bookkeeping
    # stays off the caller's path): let it land before the timeline is read.
    await asyncio.sleep(0)
    events = [timeline_event_json(e) for e in timeline.events]
    if out.json:
        out.emit(
            {
                "host": args.host,
                "port": args.port,
                "connected": error is None,
                "elapsed_ms": _ms(elapsed),
                "winner": None
                if error is not None
                else {
                    "source": sockaddr_text(local, port=False),
                    "destination": sockaddr_text(peer),
                },
                "error": None if error is None else _error_text(error),
                "events": events,
            }
        )
    else:
        st = out.style
        out.print(render_table(TIMELINE_HEADERS, timeline_rows(events, st), st, align_right=[0]))
        out.print()
        if error is None:
            out.print(
                st.ok("connected")
                + f" {sockaddr_text(local, port=False)} -> {sockaddr_text(peer)}"
                + f" in {format_duration(elapsed)}"
            )
        else:
            out.print(st.bad("failed") + f": {_error_text(error)} ({format_duration(elapsed)})")
    if isinstance(error, socket.gaierror):
        return EXIT_RESOLUTION
    return EXIT_OK if error is None else EXIT_FAILED


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _ms(seconds: float | None) -> float | None:
    """Seconds as milliseconds for JSON (microsecond precision)."""
    return None if seconds is None else round(seconds * 1000, 3)


# -- wait ---------------------------------------------------------------------------------------


async def cmd_wait(args: argparse.Namespace, out: Output, settings: Settings) -> int:
    """Try HOST PORT until it accepts a connection (0) or ``--timeout`` passes (1)."""
    progress = Progress(enabled=None if not out.json else False)
    start = time.monotonic()
    deadline = start + args.timeout
    attempts = 0
    last: BaseException | None = None
    context = settings.context()
    connected = False
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            attempts += 1
            try:
                sock = await connect_socket(
                    args.host,
                    args.port,
                    timeout=min(remaining, args.attempt_timeout),
                    family=family_arg(args),
                    context=context,
                )
            except OSError as exc:
                last = exc
            else:
                sock.close()
                connected = True
                break
            elapsed = time.monotonic() - start
            progress.update(
                f"waiting for {_hostport(args.host, args.port)}  {format_duration(elapsed)}"
                f" / {format_duration(args.timeout)}  (attempt {attempts}: {_error_text(last)})"
            )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            await asyncio.sleep(min(args.interval, remaining))
    finally:
        progress.clear()
    elapsed = time.monotonic() - start
    if out.json:
        out.emit(
            {
                "host": args.host,
                "port": args.port,
                "ready": connected,
                "elapsed_ms": _ms(elapsed),
                "attempts": attempts,
                "last_error": None if last is None or connected else _error_text(last),
            }
        )
    elif connected:
        out.print(
            out.style.ok("ready") + f": {_hostport(args.host, args.port)} accepted a connection "
            f"after {format_duration(elapsed)} ({attempts} attempt(s))"
        )
    else:
        why = f" (last error: {_error_text(last)})" if last is not None else ""
        out.print(
            out.style.bad("timed out") + f": {_hostport(args.host, args.port)} not ready after "
            f"{format_duration(elapsed)}{why}"
        )
    if connected:
        return EXIT_OK
    return EXIT_RESOLUTION if isinstance(last, socket.gaierror) else EXIT_FAILED


# -- forward ------------------------------------------------------------------------------------


async def cmd_forward(args: argparse.Namespace, out: Output, settings: Settings) -> int:
    """Relay LISTEN to UPSTREAM until SIGINT/SIGTERM; one line per finished connection."""
    context = settings.context()
    st = out.style

    async def connect(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await open_connection(host, port, limit=args.buffer_size, context=context)

    def closed(record: RelayRecord) -> None:
        if out.json:
            out.emit({"event": "closed", **record.as_dict()})
            return
        status = st.ok("ok") if record.error is None else st.bad(record.error)
        out.print(
            f"#{record.id} {record.peer} -> {record.upstream or '-'}  up {record.bytes_up} B"
            f"  down {record.bytes_down} B  {format_duration(record.duration)}  {status}"
        )

    forwarder = Forwarder(
        args.listen,
        args.upstream,
        connect=connect,
        buffer_size=args.buffer_size,
        connect_timeout=args.connect_timeout,
        on_close=closed,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        await forwarder.start()
        listening = [
            a if isinstance(a, str) else sockaddr_text((a[0], a[1])) for a in forwarder.addresses
        ]
        if out.json:
            out.emit(
                {"event": "listening", "listen": listening, "upstream": str(forwarder.upstream)}
            )
        else:
            out.print(
                f"forwarding {', '.join(listening)} -> {forwarder.upstream}"
                + st("  (Ctrl-C to stop)", "dim")
            )
        await forwarder.serve_until(stop, grace=args.grace)
    finally:
        await forwarder.aclose()
        for sig in signals:
            loop.remove_signal_handler(sig)
    stats = forwarder.stats
    if out.json:
        out.emit(
            {
                "event": "stopped",
                "accepted": stats.accepted,
                "completed": stats.completed,
                "failed": stats.failed,
                "bytes_up": stats.bytes_up,
                "bytes_down": stats.bytes_down,
            }
        )
    else:
        out.print(
            f"stopped: {stats.accepted} connection(s), {stats.failed} failed, "
            f"{stats.bytes_up} B up, {stats.bytes_down} B down"
        )
    return EXIT_OK
