"""The ``pairs``, ``connect``, ``wait`` and ``forward`` subcommands."""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import time
from typing import Any

from apr_async.cli.common import (
    Output,
    Settings,
    family_arg,
    family_name,
    sockaddr_text,
)
from apr_async.cli.endpoints import RelayRecord
from apr_async.cli.exit import EXIT_FAILED, EXIT_OK, EXIT_RESOLUTION
from apr_async.cli.forward import Forwarder
from apr_async.cli.render import Progress, format_duration, format_ms, render_table
from apr_async.cli.svcb import svcb_view
from apr_async.cli.timeline import (
    TIMELINE_HEADERS,
    Timeline,
    json_ms,
    timeline_event_json,
    timeline_rows,
)
from apr_async.connect.api import (
    ContextRecorder,
    connect_socket,
    open_connection,
    ranked_source,
)
from apr_async.core.ranking import AddrPair
from apr_async.errors import describe_error
from apr_async.resolve.pairs import get_addr_pairs

__all__ = [
    "cmd_connect",
    "cmd_forward",
    "cmd_pairs",
    "cmd_wait",
    "pair_dict",
    "pairs_table",
]


def _error_text(exc: BaseException) -> str:
    return describe_error(exc)


# -- pairs --------------------------------------------------------------------------------------


def pair_dict(rank: int, pair: AddrPair) -> dict[str, object]:
    """JSON form of one ranked pair."""
    return {
        "rank": rank,
        "family": family_name(pair.family),
        "source": sockaddr_text(pair.source, port=False),
        "destination": sockaddr_text(pair.destination),
        "rtt_ms": json_ms(pair.rtt),
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
    host, port, svcb = await svcb_view(args, out, settings)
    pairs = await get_addr_pairs(host, port, family=family_arg(args), context=settings.context())
    if out.json:
        out.emit(
            {
                "host": args.host,
                "port": args.port,
                "pairs": [pair_dict(n, p) for n, p in enumerate(pairs, 1)],
                **({"svcb": svcb} if svcb is not None else {}),
            }
        )
    else:
        out.print(pairs_table(pairs, out))
    return EXIT_OK if pairs else EXIT_FAILED


# -- connect ------------------------------------------------------------------------------------


async def cmd_connect(args: argparse.Namespace, out: Output, settings: Settings) -> int:
    """Race HOST PORT and show the timeline of attempts and the winner."""
    host, port, svcb = await svcb_view(args, out, settings)
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
            host,
            port,
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
                "elapsed_ms": json_ms(elapsed),
                "winner": None
                if error is not None
                else {
                    "source": sockaddr_text(local, port=False),
                    "destination": sockaddr_text(peer),
                },
                "error": None if error is None else _error_text(error),
                "events": events,
                **({"svcb": svcb} if svcb is not None else {}),
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
                "elapsed_ms": json_ms(elapsed),
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
