"""``apr-async demo``: apr_async next to plain asyncio on a deliberately broken network.

The demo builds a lab (network namespaces: client -- router -- server, see
:mod:`apr_async.lab`) with IPv6 blackholed and a ULA-source trap, starts a dual-stack server in
it and, from the client namespace, shows:

1. the connectivity status after one round of the probe service (lab targets only);
2. the ranked (source, destination) pairs for a lab name, with the reason for each place;
3. races against plain ``asyncio.open_connection`` (capped at :data:`PLAIN_CAP` seconds) and
   asyncio with ``happy_eyeballs_delay=0.25``, one per pathology: the blackhole on the
   dual-stack name, then the ULA trap on the IPv6-only name.

Why one race per pathology: glibc's getaddrinfo sorts by RFC 6724, whose label rule puts IPv4
first when the kernel's IPv6 source is a ULA. With both pathologies at once a stock client
therefore goes to IPv4 and never meets the blackhole. The plain asyncio clients here get that
same order (the lab DNS answers sorted by RFC 6724 with the kernel's source for each address,
as glibc does), so what they show is what an unmodified program would do.

Without root (or network namespaces) the demo says why in one line and runs a loopback-only
version. Nothing is ever sent outside the lab (or loopback).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno as errno_codes
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, TextIO

from apr_async.cli.commands import pair_dict
from apr_async.cli.common import Output, sockaddr_text
from apr_async.cli.demo_observer import HE_DELAY, PLAIN_CAP, AsyncioObserver, oserror_text
from apr_async.cli.demo_render import DemoPrinter, Report
from apr_async.cli.exit import EXIT_FAILED, EXIT_OK
from apr_async.cli.render import Style
from apr_async.cli.timeline import Timeline, timeline_event_json
from apr_async.config import Config
from apr_async.connect.api import ContextRecorder, open_connection, ranked_source
from apr_async.lab import EchoServer, Lab, Scenario, combine, lab_unavailable_reason
from apr_async.lab.netns import NetnsError
from apr_async.probe.default import ProbeService
from apr_async.resolve.pairs import PairContext, get_addr_pairs
from apr_async.resolve.resolver import Resolver

__all__ = ["HE_DELAY", "PLAIN_CAP", "run_demo"]

#: Bound on each apr_async race (it needs a fraction of this).
APR_TIMEOUT = 5.0


Switch = Callable[..., Awaitable[None]]


# -- one race ---------------------------------------------------------------------------------


async def _server_saw(reader: asyncio.StreamReader) -> str | None:
    """The echo server's ``PEER <ip> ...`` greeting: the source as the server saw it."""
    try:
        line = (await asyncio.wait_for(reader.readline(), 1.0)).decode().split()
    except (OSError, TimeoutError, UnicodeDecodeError):
        return None
    return line[1] if line[:1] == ["PEER"] else None


async def _finish(
    client: str,
    connect: Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]],
    t0: Callable[[], float],
    events: list[dict[str, Any]],
) -> Report:
    error: str | None = None
    winner: dict[str, str] | None = None
    saw: str | None = None
    try:
        reader, writer = await connect
    except TimeoutError:
        error = "timed out"
    except OSError as exc:
        error = oserror_text(exc)
    elapsed = t0()
    if error is None:
        try:
            sock = writer.get_extra_info("socket")
            winner = {"source": sockaddr_text(sock.getsockname(), port=False),
                      "destination": sockaddr_text(sock.getpeername())}
            saw = await _server_saw(reader)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    return {
        "client": client,
        "connected": error is None,
        "elapsed_ms": round(elapsed * 1000, 3),
        "attempts": sum(1 for e in events if e["kind"] == "attempt"),
        "winner": winner,
        "server_saw": saw,
        "error": error,
        "events": [timeline_event_json(e) for e in events],
    }


async def race(host: str, port: int, service: ProbeService | None, context: PairContext,
               *, plain_cap: float = PLAIN_CAP) -> list[Report]:
    """apr_async alone, then plain asyncio (capped) and asyncio with Happy Eyeballs together.

    apr_async runs first and alone so nothing else shares its loop turns; the two asyncio
    clients run side by side, so capped failures cost ``plain_cap`` once.
    """
    # The race feeds the service (or, without one, the context) through the timeline.
    timeline = Timeline(ranked_source(context), service or ContextRecorder(context))
    apr = await _finish(
        "apr_async",
        open_connection(host, port, timeout=APR_TIMEOUT, context=context,
                        service=timeline, pair_source=timeline.pair_source),
        lambda: time.monotonic() - timeline.t0, timeline.events)
    resolver = context.get_resolver()
    observers = [AsyncioObserver(resolver), AsyncioObserver(resolver)]
    with AsyncioObserver.installed(asyncio.get_running_loop()):
        plain = await asyncio.gather(*(
            _finish(client, asyncio.wait_for(
                observer.open_connection(host, port, happy_eyeballs_delay=delay), plain_cap),
                observer.elapsed, observer.events)
            for client, delay, observer in (("asyncio", None, observers[0]),
                                            ("asyncio HE", HE_DELAY, observers[1]))))
    return [apr, *plain]


# -- the lab demo (inside the client namespace) -----------------------------------------------


#: (title, scenario, lab name key, note): one race per pathology, see the module docstring.
_RACES = (
    ("IPv6 blackholed", Scenario.v6_blackholed(), "dual",
     "the ULA trap is lifted here: with it, the system's RFC 6724 order puts IPv4 first "
     "and a stock client never meets the blackhole"),
    ("ULA source trap", Scenario.ula_source_trap(), "v6_only",
     "IPv6 works again, but the kernel's route picks the ULA source, which the lab's "
     "internet drops untranslated; the name has only IPv6 addresses, so Happy Eyeballs "
     "cannot fall back"),
)


async def _client_side(
    lab_info: Report, switch: Switch, emit: Callable[[str, Any], None],
    progress: Callable[[str], None],
) -> None:
    """Everything the client does: probe, rank, race. Runs in the client namespace."""
    port = lab_info["port"]
    config = Config(
        targets=tuple(lab_info["targets"]),
        nameservers=tuple(lab_info["dns"]),
        # Short rounds with no jitter so the first one is over in well under a second;
        # targets and DNS are the lab's only (never the built-in public targets).
        probe_interval=1.0,
        probe_timeout=0.4,
        probe_jitter=0.0,
        dns_timeout=0.5,
        persist=False,
        atlas=False,
    )
    async with ProbeService(config, install=False) as service:
        progress("probing the lab targets from every source address")
        start = time.monotonic()
        ready = await service.wait_ready(5.0)
        emit("status", {
            "ready": ready,
            "round_s": round(time.monotonic() - start, 3),
            "targets": [t.label for t in service.targets()],
            "status": service.status().as_dict(full=True),
            "_status": service.status(),
        })
        name = lab_info["names"]["dual"]
        ranked = await get_addr_pairs(name, port, context=service.context)
        emit("pairs", {"host": name, "port": port,
                       "pairs": [pair_dict(n, p) for n, p in enumerate(ranked, 1)],
                       "_pairs": ranked})
        for title, scenario, name_key, note in _RACES:
            host = lab_info["names"][name_key]
            await switch(scenario)
            # The next probe round would notice the change within probe_interval; asking for
            # it now keeps the demo short.
            progress(f"{title}: a probe round, then racing to {host}")
            service.probe_now()
            with contextlib.suppress(TimeoutError):
                await service.wait_rounds(1, timeout=3.0)
            clients = await race(host, port, service, service.context)
            emit("race", {"title": title, "scenario": scenario.describe(), "note": note,
                          "host": host, "port": port, "clients": clients})


async def _lab_demo(emit: Callable[[str, Any], None], progress: Callable[[str], None]) -> None:
    started = time.monotonic()
    progress("building the lab (network namespaces)")
    scenario = combine(Scenario.v6_blackholed(), Scenario.ula_source_trap())
    async with Lab(scenario) as lab:
        setup = time.monotonic() - started
        echo = await lab.start_echo_server(announce_peer=True)
        server = lab.server
        info: Report = {
            "prefix": lab.prefix,
            "setup_ms": round(setup * 1000, 1),
            "scenario": scenario.describe(),
            "port": echo.port,
            "dns": list(lab.dns_servers),
            "names": {"dual": lab.names.dual, "v6_only": lab.names.v6_only},
            "server": {"v4": list(server.v4), "v6": list(server.v6)},
            "targets": [f"{server.v4[0]}:{echo.port}", f"[{server.v6[0]}]:{echo.port}"],
        }
        emit("lab", info)
        main_loop = asyncio.get_running_loop()

        async def switch(new: Scenario) -> None:
            # The lab is driven from this (the main) loop; the client waits for the switch.
            done = asyncio.run_coroutine_threadsafe(lab.set_scenario(new), main_loop)
            await asyncio.wrap_future(done)

        await lab.run_in("client", _client_side, info, switch, emit, progress)


# -- the loopback demo ------------------------------------------------------------------------


def _loopback_hosts() -> list[str]:
    hosts = ["127.0.0.1"]
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return hosts
    return ["::1", *hosts]


async def _start_loopback_servers() -> list[EchoServer]:
    """Echo servers on ::1 and 127.0.0.1 sharing one port (never on a wildcard address)."""
    hosts = _loopback_hosts()
    for _ in range(20):
        first = EchoServer(hosts[0], 0, announce_peer=True)
        await first.start()
        servers = [first]
        try:
            for host in hosts[1:]:
                other = EchoServer(host, first.port, announce_peer=True)
                await other.start()
                servers.append(other)
        except OSError:  # that port is taken on the other address: try another one
            for server in servers:
                await server.stop()
            continue
        return servers
    raise OSError(errno_codes.EADDRINUSE, "no port free on every loopback address")


async def _loopback_demo(
    reason: str, emit: Callable[[str, Any], None], progress: Callable[[str], None]
) -> None:
    emit("loopback", {"reason": reason})
    servers = await _start_loopback_servers()
    # RFC 6761 localhost (::1 and 127.0.0.1) without the hosts file, and never any DNS query.
    resolver = Resolver(hosts_path=None)
    try:
        port = servers[0].port
        context = PairContext(resolver=resolver)
        ranked = await get_addr_pairs("localhost", port, context=context)
        emit("pairs", {"host": "localhost", "port": port,
                       "pairs": [pair_dict(n, p) for n, p in enumerate(ranked, 1)],
                       "_pairs": ranked})
        progress("connecting to localhost")
        clients = await race("localhost", port, None, context)
        emit("race", {"title": "loopback", "scenario": "loopback", "host": "localhost",
                      "port": port, "clients": clients,
                      "note": "::1 and 127.0.0.1 both work: every client connects at once"})
    finally:
        await resolver.close()
        for server in servers:
            await server.stop()


def run_demo(json_output: bool = False, color: str = "auto", stream: TextIO | None = None) -> int:
    """Run the demo; print it for people (or one JSON document). Returns the exit code.

    0 when apr_async connected in every race, 1 otherwise. Builds a lab when this machine
    can (root, network namespaces); otherwise says why and runs on loopback only.
    """
    out_stream = stream or sys.stdout
    out = Output(bool(json_output), Style.for_stream(out_stream, color), out_stream)
    printer = DemoPrinter(out)
    started = time.monotonic()
    reason = lab_unavailable_reason()
    if reason is None:
        try:
            asyncio.run(_lab_demo(printer.emit, printer.progress))
        except (NetnsError, OSError) as exc:
            if "lab" in printer.report:
                raise  # the lab was built: this is a failure of the demo, not of set-up
            reason = f"lab set-up failed: {exc}"
    if reason is not None:
        asyncio.run(_loopback_demo(reason, printer.emit, printer.progress))
    printer.finish(started)
    races = printer.report["races"]
    ok = bool(races) and all(r["clients"][0]["connected"] for r in races)
    return EXIT_OK if ok else EXIT_FAILED
