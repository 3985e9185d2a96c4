"""The probe service end to end: on loopback first, then in the network lab.

Loopback tests never probe anything but 127.0.0.0/8 (gateways, NAT64 discovery and Atlas off).
Lab tests run the service inside the client namespace (``lab.run_in``) with short intervals and
check the status each topology must give within three probe rounds.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
import stat
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio

from apr_async.config import Config
from apr_async.connect.api import open_connection
from apr_async.core.ranking import AddrPair
from apr_async.core.status import ConnectivityStatus
from apr_async.lab import EchoServer, Lab, Scenario, ZoneEntry
from apr_async.probe.default import (
    ProbeService,
    aclose_default,
    configure,
    current_service,
    default_service,
    status,
    wait_ready,
)
from apr_async.probe.netwatch import NetWatcher
from apr_async.resolve import pairs

pytestmark = pytest.mark.asyncio(loop_scope="module")

INTERVAL = 0.5
PROBE_TIMEOUT = 0.5


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def loopback_config(port: int, **changes: object) -> Config:
    """Probes only 127/8: nothing else is ever probed from the host namespace."""
    values: dict[str, object] = {
        "targets": (f"127.0.0.1:{port}",),
        "probe_gateways": False,
        "nat64_discovery": False,
        "atlas": False,
        "icmp": "off",
        "probe_interval": 0.2,
        "probe_timeout": 0.5,
        "probe_jitter": 0.1,
        "netwatch": "off",
    }
    values.update(changes)
    return Config(**values)  # type: ignore[arg-type]


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    yield sock
    sock.close()


# ---------------------------------------------------------------------- loopback


async def test_service_probes_installs_context_and_leaves_nothing(
    listener: socket.socket,
) -> None:
    port = listener.getsockname()[1]
    fds = open_fds()
    tasks = len(asyncio.all_tasks())
    before = pairs.default_context()
    svc = ProbeService(loopback_config(port))
    await svc.start()
    assert pairs.default_context() is svc.context
    assert await svc.wait_ready(5)
    await svc.wait_rounds(1, timeout=5)
    (m,) = [m for m in svc.measurements() if m.destination == "127.0.0.1"]
    assert m.ok and m.methods == ("tcp",) and m.rtt is not None and m.samples >= 2
    assert m.last_rtt is not None and m.min_rtt is not None and m.min_rtt <= m.last_rtt
    assert svc.probes_sent["icmp"] == 0  # ICMP off by config
    await svc.aclose()
    await svc.aclose()  # idempotent
    assert pairs.default_context() is before
    assert open_fds() == fds
    assert len(asyncio.all_tasks()) == tasks
    assert not await svc.wait_ready(0.01) or svc.rounds >= 1


async def test_start_does_not_wait_for_the_network() -> None:
    # the only target never answers; start() and the first ranking are immediate anyway
    with socket.socket() as full:
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        port = full.getsockname()[1]
        filler = socket.create_connection(("127.0.0.1", port))
        try:
            cfg = loopback_config(port, probe_timeout=2.0)
            started = time.monotonic()
            async with ProbeService(cfg) as svc:
                ranked = await pairs.get_addr_pairs("127.0.0.1", port)
                elapsed = time.monotonic() - started
                assert ranked and not await svc.wait_ready(0.05)
            assert elapsed < 1.0
        finally:
            filler.close()


async def test_passive_samples_feed_tables_status_and_recent_targets(
    listener: socket.socket,
) -> None:
    port = listener.getsockname()[1]
    cfg = loopback_config(1, targets=(), recent_probe_interval=0.1, probe_interval=0.2)
    async with ProbeService(cfg, install=False) as svc:
        pair = AddrPair(socket.AF_INET, ("127.0.0.1", 0), ("127.0.0.5", port))
        svc.record_attempt(pair, port, False, None, 110)  # ETIMEDOUT
        now = svc.context.clock()
        assert svc.failures.failing(*_ips("127.0.0.1", "127.0.0.5"), port, now)
        svc.record_attempt(pair, port, True, 0.002, None)
        assert not svc.failures.failing(*_ips("127.0.0.1", "127.0.0.5"), port, now)
        estimate = svc.latency.estimate(*_ips("127.0.0.1", "127.0.0.5"))
        assert estimate is not None and estimate.rtt == pytest.approx(0.002)
        # the used destination is re-probed on its own port, not on some default
        await svc.wait_rounds(2, timeout=5)
        seen = [m for m in svc.measurements() if m.destination == "127.0.0.5"]
        assert seen and "tcp" in seen[0].methods
        # garbage is ignored, never raised into the connector
        svc.record_attempt(object(), port, True, 0.1, None)
        svc.record_attempt(AddrPair(socket.AF_INET6, ("::1", 0), ("127.0.0.1", 1)), 1, True,
                           None, None)


async def test_recent_destinations_reprobed_on_their_port_rate_limited(
    listener: socket.socket,
) -> None:
    port = listener.getsockname()[1]
    cfg = loopback_config(1, targets=(), probe_interval=0.1, probe_jitter=0.0,
                          recent_probe_interval=0.45)
    async with ProbeService(cfg, install=False) as svc:
        svc.note_destination(*_ips("127.0.0.6"), port)  # type: ignore[arg-type]
        started = time.monotonic()
        probed = 0
        while time.monotonic() - started < 1.0:
            await svc.wait_rounds(1, timeout=5)
            recent = [t for t in svc.targets() if t.kind == "recent"]
            assert all((str(t.ip), t.port) == ("127.0.0.6", port) for t in recent)
            probed += len(recent)
        rounds = svc.rounds
    # about ten rounds ran, but the used destination was probed at most every 0.45 s
    assert rounds >= 5
    assert 1 <= probed <= 3


async def test_untried_pairs_are_probed_next_round_on_their_port_bounded(
    listener: socket.socket,
) -> None:
    port = listener.getsockname()[1]
    cfg = loopback_config(1, targets=(), probe_interval=0.1, probe_jitter=0.0,
                          recent_probe_interval=5.0)
    async with ProbeService(cfg, install=False) as svc:
        await svc.wait_ready(5)
        used = AddrPair(socket.AF_INET, ("127.0.0.1", 0), ("127.0.0.10", port))
        svc.record_attempt(used, port, True, 0.001, None)  # used: re-probed only later
        untried = [AddrPair(socket.AF_INET, ("127.0.0.1", 0), (f"127.0.0.{n}", port))
                   for n in (7, 8, 9, 10)]
        svc.record_untried([object(), *untried], port)  # garbage is skipped, never raised
        await svc.wait_rounds(1, timeout=5)
        recent = {(str(t.ip), t.port) for t in svc.targets() if t.kind == "recent"}
        # due at once, on the application's port; at most two per family from one call
        assert recent == {("127.0.0.7", port), ("127.0.0.8", port)}
        assert {m.destination for m in svc.measurements()} >= {"127.0.0.7", "127.0.0.8"}
        # untried again by the next races: rate-limited like any used destination
        svc.record_untried(untried[:1], port)
        await svc.wait_rounds(1, timeout=5)
        assert not any(t.kind == "recent" for t in svc.targets())


def _ips(*texts: str) -> tuple[object, ...]:
    import ipaddress

    return tuple(ipaddress.ip_address(t) for t in texts)


async def test_connector_reports_attempts_to_the_service(listener: socket.socket) -> None:
    from apr_async.connect.api import connect_socket

    port = listener.getsockname()[1]
    async with ProbeService(loopback_config(port, targets=()), install=False) as svc:
        sock = await connect_socket("127.0.0.1", port, service=svc, context=svc.context)
        sock.close()
        for _ in range(50):  # the connector reports the winner just after handing it over
            if any(m.methods == ("passive",) for m in svc.measurements()):
                break
            await asyncio.sleep(0.01)
        assert svc.latency.estimate(*_ips("127.0.0.1", "127.0.0.1")) is not None
        assert any(m.methods == ("passive",) for m in svc.measurements())


async def test_bad_config_and_double_start() -> None:
    with pytest.raises(TypeError):
        ProbeService({"targets": ()})  # type: ignore[arg-type]
    svc = ProbeService(loopback_config(9), install=False)
    await svc.start()
    try:
        with pytest.raises(RuntimeError):
            await svc.start()
    finally:
        await svc.aclose()
    never = ProbeService(loopback_config(9), install=False)
    await never.aclose()  # closing an unstarted service is fine
    assert never.status() == ConnectivityStatus()


async def test_warm_start_cache(listener: socket.socket, tmp_path: Path) -> None:
    port = listener.getsockname()[1]
    cache = tmp_path / "cache" / "latency.json"
    cfg = loopback_config(port, persist=True, cache_path=cache)
    async with ProbeService(cfg, install=False) as first:
        await first.wait_rounds(2, timeout=5)
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600
    second = ProbeService(cfg, install=False)
    await second.start()
    try:
        # before any probe of its own, the ranking already knows the loopback RTT
        assert second.rounds == 0
        assert second.latency.estimate(*_ips("127.0.0.1", "127.0.0.1")) is not None
    finally:
        await second.aclose()


async def test_corrupt_cache_is_ignored(
    listener: socket.socket, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = tmp_path / "latency.json"
    cache.write_text("{garbage")
    cache.chmod(0o600)
    cfg = loopback_config(listener.getsockname()[1], persist=True, cache_path=cache)
    async with ProbeService(cfg, install=False) as svc:
        assert len(svc.latency) == 0
    assert "corrupt" in caplog.text


async def test_default_service_lazy_configure_and_close(
    listener: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    import apr_async.probe.default

    # whatever this test configures is undone afterwards for the rest of the suite
    monkeypatch.setattr(apr_async.probe.default, "_default_config", None)
    port = listener.getsockname()[1]
    assert current_service() is None
    configure(loopback_config(port))
    try:
        first = status()  # starts the default service without waiting
        svc = default_service()
        assert svc is current_service() and svc.running
        assert isinstance(first, ConnectivityStatus)
        assert pairs.default_context() is svc.context
        assert await wait_ready(5)
        configure(loopback_config(port, probe_interval=0.3))
        await asyncio.sleep(0.05)
        assert not svc.running  # the old one was closed
        assert default_service().config.probe_interval == 0.3
    finally:
        await aclose_default()
    assert current_service() is None
    with pytest.raises(TypeError):
        configure(loopback_config(port), probe_interval=1.0)


async def test_default_service_needs_a_loop() -> None:
    with pytest.raises(RuntimeError, match="event loop"):
        await asyncio.to_thread(default_service)  # a thread without an event loop


async def test_netwatch_poll_mode_calls_back() -> None:
    calls: list[float] = []
    async with NetWatcher(lambda: calls.append(time.monotonic()), mode="poll",
                          poll_interval=0.05) as watcher:
        await asyncio.sleep(0.3)
        assert watcher.backend == "poll"
    assert len(calls) >= 2
    with pytest.raises(ValueError):
        NetWatcher(lambda: None, mode="telepathy")


# ---------------------------------------------------------------------- lab

lab_test = pytest.mark.lab


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def echo(lab: Lab) -> AsyncIterator[EchoServer]:
    server = await lab.start_echo_server()
    yield server
    await lab.stop_echo_server(server)


def lab_config(lab: Lab, port: int, **changes: object) -> Config:
    values: dict[str, object] = {
        "targets": (f"{lab.server.v4[0]}:{port}", f"[{lab.server.v6[0]}]:{port}"),
        "probe_interval": INTERVAL,
        "probe_timeout": PROBE_TIMEOUT,
        "probe_jitter": 0.1,
        "nameservers": tuple(lab.dns_servers),
        "dns_timeout": 0.5,
        "netwatch_debounce": 0.05,
    }
    values.update(changes)
    return Config(**values)  # type: ignore[arg-type]


async def status_within(
    cfg: Config, predicate: Callable[[ConnectivityStatus], bool], rounds: int = 3
) -> tuple[ConnectivityStatus, int, str | None]:
    """Run a service (inside the client namespace) for at most ``rounds`` rounds."""
    async with ProbeService(cfg, install=False) as svc:
        for _ in range(rounds):
            await svc.wait_rounds(1, timeout=10 * INTERVAL)
            if predicate(svc.status()):
                break
        return svc.status(), svc.rounds, svc.icmp_mode


def healthy_flags(s: ConnectivityStatus) -> bool:
    return s.GUA_ok and s.IPv4_ok and s.IPv6_ok and s.LLA_ok


@lab_test
async def test_lab_healthy_dual_stack(healthy_lab: Lab, echo: EchoServer) -> None:
    lab = healthy_lab
    s, rounds, icmp = await lab.run_in("client", status_within,
                                       lab_config(lab, echo.port), healthy_flags)
    assert healthy_flags(s), s
    assert rounds <= 3
    assert icmp == "privileged"
    assert s.RFC1918 and s.ULA_present
    # a NAT-free path: the lab's internet drops the private and ULA sources untranslated, so
    # reaching the server from them cannot be mistaken for translation
    assert not s.NAT44 and not s.NPTv6 and not s.ULA_ok
    assert s.def_gateway4 == lab.router.client_v4
    assert s.def_gateway6 == f"{lab.router.client_link_local}%{lab.client.ifname}"


@lab_test
async def test_lab_ipv6_blackholed(healthy_lab: Lab, echo: EchoServer) -> None:
    lab = healthy_lab
    await lab.set_scenario(Scenario.v6_blackholed())
    s, _, _ = await lab.run_in("client", status_within, lab_config(lab, echo.port),
                               lambda s: s.IPv4_ok)
    assert s.IPv4_ok
    assert not s.GUA_ok and not s.IPv6_ok and not s.ULA_ok
    # the GUA is still configured and the IPv6 gateway still answers: only the path is dead
    assert s.def_gateway6 is not None and s.LLA_ok


@lab_test
async def test_lab_nat44(healthy_lab: Lab, echo: EchoServer) -> None:
    lab = healthy_lab
    await lab.set_scenario(Scenario.nat44_masquerade())
    s, _, _ = await lab.run_in("client", status_within, lab_config(lab, echo.port),
                               lambda s: s.NAT44)
    assert s.NAT44 and s.RFC1918 and s.IPv4_ok
    assert not s.NPTv6  # toggled independently: the ULA is still not translated


@lab_test
async def test_lab_nptv6(healthy_lab: Lab, echo: EchoServer) -> None:
    lab = healthy_lab
    await lab.set_scenario(Scenario.nptv6_translation())
    s, _, _ = await lab.run_in("client", status_within, lab_config(lab, echo.port),
                               lambda s: s.NPTv6)
    assert s.NPTv6 and s.ULA_present and s.ULA_ok and s.GUA_ok
    assert not s.NAT44  # toggled independently: IPv4 is still NAT-free


@lab_test
async def test_lab_ula_not_routed_back(healthy_lab: Lab, echo: EchoServer) -> None:
    lab = healthy_lab
    await lab.set_scenario(Scenario.ula_source_trap())
    s, _, _ = await lab.run_in("client", status_within, lab_config(lab, echo.port),
                               lambda s: s.GUA_ok and s.IPv4_ok)
    assert s.GUA_ok and s.ULA_present
    assert not s.ULA_ok and not s.NPTv6


@lab_test
async def test_lab_ipv4_only(healthy_lab: Lab, echo: EchoServer) -> None:
    lab = healthy_lab
    await lab.set_scenario(Scenario.ipv4_only_client())
    s, _, _ = await lab.run_in("client", status_within, lab_config(lab, echo.port),
                               lambda s: s.IPv4_ok)
    assert s.IPv4_ok and s.RFC1918
    assert not s.IPv6_ok and not s.GUA_ok and not s.ULA_present
    assert s.def_gateway6 is None and s.def_gateway4 == lab.router.client_v4


@lab_test
async def test_lab_ipv6_only(healthy_lab: Lab, echo: EchoServer) -> None:
    lab = healthy_lab
    await lab.set_scenario(Scenario.ipv6_only_client())
    s, _, _ = await lab.run_in("client", status_within, lab_config(lab, echo.port),
                               lambda s: s.GUA_ok)
    assert s.GUA_ok and s.IPv6_ok
    assert not s.IPv4_ok and not s.RFC1918 and not s.NAT44
    assert s.def_gateway4 is None


@lab_test
async def test_lab_link_local_path(healthy_lab: Lab, echo: EchoServer) -> None:
    lab = healthy_lab
    target = f"[{lab.server.direct_link_local}%{lab.client.direct_ifname}]:{echo.port}"
    cfg = lab_config(lab, echo.port, targets=(target,), probe_gateways=False)
    s, _, _ = await lab.run_in("client", status_within, cfg, lambda s: s.LLA_ok)
    assert s.LLA_ok
    assert not s.GUA_ok and not s.IPv4_ok  # nothing beyond a gateway was probed


@lab_test
async def test_lab_icmp_off_status_via_tcp(healthy_lab: Lab, echo: EchoServer,
                                           caplog: pytest.LogCaptureFixture) -> None:
    lab = healthy_lab
    await lab.exec("client", "sysctl", "-qw", "net.ipv4.ping_group_range=1 0", check=True)
    try:
        cfg = lab_config(lab, echo.port, icmp="unprivileged")
        with caplog.at_level(logging.WARNING, logger="apr_async.probe"):
            s, _, icmp = await lab.run_in("client", status_within, cfg, healthy_flags)
    finally:
        await lab.exec("client", "sysctl", "-qw",
                       "net.ipv4.ping_group_range=0 2147483647", check=True)
    assert icmp is None
    assert healthy_flags(s), s  # LLA_ok too: the gateway refused TCP, which proves the link
    icmp_lines = [r for r in caplog.records if "ICMP probes are off" in r.getMessage()]
    assert len(icmp_lines) == 1


@lab_test
async def test_lab_nat64_prefix_discovery(healthy_lab: Lab, echo: EchoServer) -> None:
    lab = healthy_lab
    lab.dns.update("ipv4only.arpa", ZoneEntry(aaaa=("64:ff9b::c000:aa", "64:ff9b::c000:ab")))
    try:
        s, _, _ = await lab.run_in("client", status_within, lab_config(lab, echo.port),
                                   lambda s: s.NAT64_prefix is not None)
    finally:
        lab.dns.update("ipv4only.arpa", None)
    assert s.NAT64_prefix == "64:ff9b::/96"


@lab_test
async def test_lab_flags_follow_the_network(healthy_lab: Lab, echo: EchoServer) -> None:
    """One service across scenario switches: nothing is sticky."""
    lab = healthy_lab
    main_loop = asyncio.get_running_loop()

    async def switch(scenario: Scenario) -> None:
        await asyncio.wrap_future(
            asyncio.run_coroutine_threadsafe(lab.set_scenario(scenario), main_loop))

    async def scenario_walk() -> list[ConnectivityStatus]:
        seen = []
        async with ProbeService(lab_config(lab, echo.port), install=False) as svc:
            seen.append(await svc.wait_status(healthy_flags, timeout=3 * INTERVAL + 2))
            await switch(Scenario.v6_blackholed())
            seen.append(await svc.wait_status(lambda s: not s.GUA_ok, timeout=4))
            await switch(Scenario.healthy())
            seen.append(await svc.wait_status(lambda s: s.GUA_ok, timeout=4))
        return seen

    seen = await lab.run_in("client", scenario_walk)
    assert [s.GUA_ok for s in seen] == [True, False, True]
    assert seen[1].changed_at is not None and seen[0].changed_at is not None
    assert seen[1].changed_at > seen[0].changed_at


@lab_test
async def test_lab_ranking_follows_a_broken_ipv6_path(healthy_lab: Lab, echo: EchoServer) -> None:
    """IPv6 breaks mid-run: IPv4 pairs go first within two probe intervals, and back."""
    lab = healthy_lab
    interval = 1.0
    cfg = lab_config(lab, echo.port, probe_interval=interval, probe_jitter=0.1,
                     probe_timeout=0.3)
    stop = threading.Event()
    ready = threading.Event()
    timeline: list[tuple[float, int]] = []

    async def watch_ranking() -> None:
        async with ProbeService(cfg, install=False) as svc:
            await svc.wait_ready(5)
            while not stop.is_set():
                ranked = await pairs.get_addr_pairs(lab.names.dual, echo.port,
                                                    context=svc.context)
                timeline.append((time.monotonic(), ranked[0].family))
                ready.set()
                await asyncio.sleep(0.05)

    watcher = asyncio.ensure_future(lab.run_in("client", watch_ranking))
    try:
        await asyncio.wait_for(asyncio.to_thread(ready.wait, 10), 11)
        await asyncio.sleep(interval)
        broke = time.monotonic()
        await lab.set_scenario(Scenario.v6_blackholed())
        await asyncio.sleep(2.5 * interval)
        healed = time.monotonic()
        await lab.set_scenario(Scenario.healthy())
        await asyncio.sleep(2.5 * interval)
    finally:
        stop.set()
        await watcher
    before = [fam for t, fam in timeline if t < broke]
    assert before and set(before[-5:]) == {socket.AF_INET6}
    first_v4 = next(t for t, fam in timeline if t >= broke and fam == socket.AF_INET)
    first_v6 = next(t for t, fam in timeline if t >= healed and fam == socket.AF_INET6)
    # generous tolerance on top of two probe intervals: scheduling in two threads
    assert first_v4 - broke <= 2 * interval + 0.2
    assert first_v6 - healed <= 2 * interval + 0.2
    assert {fam for t, fam in timeline if first_v4 <= t < healed} == {socket.AF_INET}


@dataclass
class SlowerRun:
    families: list[int] = field(default_factory=list)  # each connection's, in order
    recent: set[tuple[str, int | None]] = field(default_factory=set)  # "recent" targets seen
    ranked: list[AddrPair] = field(default_factory=list)  # the ranking at the end


async def connect_until_ipv4(
    cfg: Config, name: str, port: int, *, bound: bool, connections: int = 5
) -> SlowerRun:
    """Connect to ``name`` once per probe round until a connection goes over IPv4, through
    the package's default service (module-level calls) or one given as ``service=``."""
    bound_service = ProbeService(cfg, install=False) if bound else None
    if bound_service is not None:
        await bound_service.start()
    else:
        configure(cfg)  # autostart: the first module-level call starts the default service
    try:
        run = SlowerRun()
        svc: ProbeService | None = bound_service
        for _ in range(connections):
            _reader, writer = await open_connection(name, port, timeout=5.0,
                                                    service=bound_service)
            peer = writer.get_extra_info("peername")
            writer.close()
            await writer.wait_closed()
            run.families.append(socket.AF_INET6 if ":" in peer[0] else socket.AF_INET)
            svc = svc or current_service()
            assert svc is not None, "no probe service behind the connection"
            if run.families[-1] == socket.AF_INET:
                break
            await svc.wait_rounds(1, timeout=5)
            run.recent |= {(str(t.ip), t.port) for t in svc.targets() if t.kind == "recent"}
        context = svc.context if svc is not None else None
        run.ranked = list(await pairs.get_addr_pairs(name, port, context=context))
        return run
    finally:
        if bound_service is not None:
            await bound_service.aclose()
        else:
            await aclose_default()
            configure()  # back to the environment's (test) configuration


@lab_test
@pytest.mark.parametrize("bound", [False, True], ids=["module-level", "service-bound"])
async def test_lab_slower_ipv6_gets_ipv4_measured_and_preferred(
    healthy_lab: Lab, echo: EchoServer, bound: bool
) -> None:
    """IPv6 answers 50 ms later than IPv4, well within the 250 ms attempt delay, so the race
    never tries IPv4: the connector hands its untried IPv4 pair to the service, whose next
    rounds measure it, and the ranking (then the connection) moves to IPv4."""
    lab = healthy_lab
    await lab.set_scenario(Scenario.v6_slower(0.05))
    # nothing to probe but what the application uses: only the connector can name IPv4
    cfg = lab_config(lab, echo.port, targets=(), probe_gateways=False, nat64_discovery=False,
                     atlas=False, probe_interval=0.3, autostart=True)
    run = await lab.run_in("client", connect_until_ipv4, cfg, lab.names.dual, echo.port,
                           bound=bound)
    assert run.families[0] == socket.AF_INET6, run  # cold: nothing known, IPv6 first
    assert run.families[-1] == socket.AF_INET, run  # within four probe rounds
    assert (lab.server.v4[0], echo.port) in run.recent  # re-probed on the application's port
    best = run.ranked[0]
    assert (best.family, best.destination[0]) == (socket.AF_INET, lab.server.v4[0])
    assert best.rtt is not None and "bias" in best.reason, best.reason
    slower = next(p for p in run.ranked if p.family == socket.AF_INET6)
    assert "bias" in slower.reason, slower.reason


@lab_test
async def test_lab_network_change_drops_failures_and_stale_status(
    healthy_lab: Lab, echo: EchoServer
) -> None:
    lab = healthy_lab
    main_loop = asyncio.get_running_loop()
    extra = "2001:db8:c::99"

    async def ip(*argv: str) -> None:
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(
            lab.exec("client", "ip", *argv, check=True), main_loop))

    async def run() -> tuple[int, int, int, bool]:
        cfg = lab_config(lab, echo.port, probe_interval=30.0)  # no round would come by itself
        async with ProbeService(cfg, install=False) as svc:
            await svc.wait_status(healthy_flags, timeout=5)
            svc.record_attempt(AddrPair(socket.AF_INET, (lab.client.v4, 0),
                                        (lab.server.dead_v4[0], 80)), 80, False, None, 110)
            # (the private and ULA sources' probes fail too, and will fail again after the
            # change: follow the one failure recorded here)
            recorded = (ipaddress.ip_address(lab.client.v4),
                        ipaddress.ip_address(lab.server.dead_v4[0]), 80)
            failing_before = svc.failures.failing(*recorded, time.monotonic())
            rounds = svc.rounds
            await ip("addr", "add", f"{extra}/64", "dev", lab.client.ifname, "nodad")
            try:
                # the event arrives, the stale status goes, and a new round starts at once
                await svc.wait_rounds(1, timeout=5)
            finally:
                await ip("addr", "del", f"{extra}/64", "dev", lab.client.ifname)
            failing_after = svc.failures.failing(*recorded, time.monotonic())
            return failing_before, failing_after, svc.network_changes, svc.rounds > rounds

    failing_before, failing_after, changes, probed_again = await lab.run_in("client", run)
    assert failing_before and not failing_after
    assert changes >= 1 and probed_again


@lab_test
async def test_lab_netwatch_netlink_events(healthy_lab: Lab) -> None:
    lab = healthy_lab
    main_loop = asyncio.get_running_loop()

    async def run() -> tuple[str | None, int]:
        fired = asyncio.Event()
        async with NetWatcher(fired.set, mode="netlink", debounce=0.02) as watcher:
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(
                lab.exec("client", "ip", "route", "add", "203.0.113.0/24", "via",
                         lab.router.client_v4, check=True), main_loop))
            try:
                await asyncio.wait_for(fired.wait(), 5)
            finally:
                await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(
                    lab.exec("client", "ip", "route", "del", "203.0.113.0/24", check=True),
                    main_loop))
            return watcher.backend, watcher.events

    backend, events = await lab.run_in("client", run)
    assert backend == "netlink" and events >= 1


@lab_test
async def test_lab_service_leaves_no_fd_task_or_thread(healthy_lab: Lab, echo: EchoServer) -> None:
    lab = healthy_lab

    async def settled_fds(baseline: int) -> int:
        # the fd table is process-wide: the lab's server thread closes the connections our
        # probes opened a moment later, so give it a little time before comparing
        for _ in range(40):
            if open_fds() <= baseline:
                break
            await asyncio.sleep(0.05)
        return open_fds()

    async def run() -> tuple[int, int, int, int, int, set[threading.Thread]]:
        fds, tasks = open_fds(), len(asyncio.all_tasks())
        targets = (f"{lab.server.v4[0]}:{echo.port}",
                   *(f"[{ip}]:{echo.port}" for ip in lab.server.v6))
        async with ProbeService(lab_config(lab, echo.port, targets=targets),
                                install=False) as svc:
            await svc.wait_rounds(2, timeout=10)
            sent = sum(svc.probes_sent.values())
            running = set(threading.enumerate()) - {threading.current_thread()}
        return (sent, fds, await settled_fds(fds), tasks, len(asyncio.all_tasks()), running)

    before = set(threading.enumerate())
    sent, fds_before, fds_after, tasks_before, tasks_after, running = (
        await lab.run_in("client", run))
    assert sent >= 10
    assert fds_after == fds_before
    assert tasks_after == tasks_before
    # probes are tasks, not threads (pycares keeps one process-wide channel-reaper thread)
    new = {t.name for t in running - before if "shutdown_loop" not in t.name}
    assert not new


@lab_test
async def test_lab_atlas_anchors_become_targets(healthy_lab: Lab, echo: EchoServer) -> None:
    """Atlas on: anchors fetched from a local server with the API's JSON shape are probed."""
    from aiohttp import web

    lab = healthy_lab
    anchors = [
        {"id": 1, "fqdn": "a1.anchors.atlas.ripe.net", "probe": 6001, "is_disabled": False,
         "date_decommissioned": None, "ip_v4": lab.server.v4[1], "ip_v6": lab.server.v6[1]},
        {"id": 2, "fqdn": "a2.anchors.atlas.ripe.net", "probe": 6002, "is_disabled": True,
         "date_decommissioned": None, "ip_v4": lab.server.v4[2], "ip_v6": lab.server.v6[2]},
    ]

    async def run() -> tuple[set[str], bool]:
        app = web.Application()

        async def anchor_list(request: web.Request) -> web.Response:
            return web.json_response({"count": 2, "next": None, "previous": None,
                                      "results": anchors})

        app.router.add_get("/api/v2/anchors/", anchor_list)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            cfg = lab_config(lab, echo.port, targets=(), probe_gateways=False, atlas=True,
                             atlas_url=f"http://127.0.0.1:{port}/api/v2/",
                             probe_port=echo.port)
            async with ProbeService(cfg, install=False) as svc:
                status = await svc.wait_status(lambda s: s.GUA_ok and s.IPv4_ok, timeout=5)
                chosen = {str(t.ip) for t in svc.targets() if t.kind == "atlas"}
        finally:
            await runner.cleanup()
        return chosen, status.GUA_ok and status.IPv4_ok

    chosen, works = await lab.run_in("client", run)
    assert chosen == {lab.server.v4[1], lab.server.v6[1]}  # the disabled anchor is not used
    assert works
