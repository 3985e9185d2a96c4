"""The lazily started default service behind the module-level functions (issue 4).

``apr_async.get_addr_pairs`` / ``open_connection`` without a context start the package's
default probe service in the background (unless ``autostart`` is off), answer at once from
RFC 6724 and the kernel's routes, and later calls see what the probes measured.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

import apr_async
from apr_async.config import Config
from apr_async.lab import Lab
from apr_async.lab.servers import EchoServer
from apr_async.probe import default as service

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.lab]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def echo(lab: Lab) -> AsyncIterator[EchoServer]:
    server = await lab.start_echo_server()
    yield server
    await lab.stop_echo_server(server)


def lab_only_config(lab: Lab, port: int, *, autostart: bool) -> Config:
    # Only lab targets and the lab DNS: the built-in public targets are never used here.
    return Config(
        targets=(f"{lab.server.v4[0]}:{port}", f"[{lab.server.v6[0]}]:{port}"),
        probe_gateways=False,
        probe_interval=0.3,
        probe_timeout=0.3,
        nameservers=tuple(lab.dns_servers),
        dns_timeout=0.5,
        nat64_discovery=False,
        autostart=autostart,
    )


async def first_call_then_measured(
    cfg: Config, literal: str, name: str, port: int
) -> dict[str, object]:
    service.configure(cfg)
    try:
        # A literal needs no DNS, so nothing in this call can wait for the network: the
        # answer is there before the just-started service has run a single probe.
        first = await apr_async.get_addr_pairs(literal, port)
        svc = service.current_service()
        rounds_at_first_answer = svc.rounds if svc is not None else None
        ready = await svc.wait_ready(5.0) if svc is not None else False
        second = await apr_async.get_addr_pairs(name, port)
        _reader, writer = await apr_async.open_connection(name, port)
        writer.close()
        await writer.wait_closed()
        return {
            "started": svc is not None,
            "rounds_at_first_answer": rounds_at_first_answer,
            "ready": ready,
            "first_rtts": [p.rtt for p in first],
            "second_rtts": [p.rtt for p in second],
            "status_ipv4_ok": apr_async.status().IPv4_ok,
        }
    finally:
        await service.aclose_default()
        service.configure()  # back to the environment's (test) configuration


async def module_call_without_autostart(
    cfg: Config, name: str, port: int
) -> tuple[object, list[str]]:
    service.configure(cfg)
    try:
        pairs = await apr_async.get_addr_pairs(name, port)
        return service.current_service(), [p.destination[0] for p in pairs]
    finally:
        service.configure()


async def test_module_functions_start_the_default_service_without_waiting(
    lab: Lab, echo: EchoServer
) -> None:
    cfg = lab_only_config(lab, echo.port, autostart=True)
    out = await lab.run_in("client", first_call_then_measured, cfg, lab.server.v4[0],
                           lab.names.dual, echo.port)
    assert out["started"] is True
    # The first answer came before any probe round finished: ranking never waits for probes.
    assert out["rounds_at_first_answer"] == 0
    assert all(rtt is None for rtt in out["first_rtts"])  # type: ignore[attr-defined]
    assert out["ready"] is True
    # After the first round the same call ranks with measured latencies.
    assert any(rtt is not None for rtt in out["second_rtts"])  # type: ignore[attr-defined]
    assert out["status_ipv4_ok"] is True


async def test_autostart_off_starts_nothing(lab: Lab, echo: EchoServer) -> None:
    cfg = lab_only_config(lab, echo.port, autostart=False)
    running, destinations = await lab.run_in("client", module_call_without_autostart, cfg,
                                             lab.names.dual, echo.port)
    assert running is None
    # no service, yet the configured nameservers (the lab's DNS) answered the name
    assert set(destinations) == {lab.server.v4[0], lab.server.v6[0]}


async def first_connection_queries(cfg: Config, name: str, port: int) -> dict[str, int]:
    service.configure(cfg)
    try:
        connecting = asyncio.ensure_future(apr_async.open_connection(name, port))
        # One loop turn: the call's first step has run (it created and started the default
        # service) and the lookup tasks it made have not run yet.
        await asyncio.sleep(0)
        svc = service.current_service()
        assert svc is not None
        sent_at_start = svc.resolver.queries_sent
        _reader, writer = await connecting
        writer.close()
        await writer.wait_closed()
        return {"at_start": sent_at_start, "in_all": svc.resolver.queries_sent}
    finally:
        await service.aclose_default()
        service.configure()


async def test_the_first_connection_sends_its_queries_before_the_service_starts(
    lab: Lab, echo: EchoServer
) -> None:
    # The service's start-up reads the interfaces and the shared table (~1.5 ms): the
    # answers to the call's AAAA and A queries travel meanwhile instead of after it.
    cfg = lab_only_config(lab, echo.port, autostart=True)
    out = await lab.run_in("client", first_connection_queries, cfg, lab.names.dual, echo.port)
    assert out == {"at_start": 2, "in_all": 2}  # sent during the first step, then joined
