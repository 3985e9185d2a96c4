"""The ``apr-async`` CLI run inside the lab's client namespace (explicit targets and DNS only)."""

from __future__ import annotations

import asyncio
import datetime
import json
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from apr_async.lab import EchoServer, ExecResult, Lab, Scenario

pytestmark = [pytest.mark.lab, pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def echo(lab: Lab) -> AsyncIterator[EchoServer]:
    server = await lab.start_echo_server(announce_peer=True)
    yield server
    await lab.stop_echo_server(server)


#: Subcommands that run a probe service: each test names its (lab) targets.
PROBING = {"status", "monitor"}


async def cli(lab: Lab, *argv: str, max_time: float = 60.0, **env: str) -> ExecResult:
    """``python -m apr_async ARGV`` in the client namespace, never with default targets."""
    if argv[0] in PROBING:
        assert "--target" in argv, f"{argv[0]} must name lab targets, never the defaults"
    # No target unless named: the built-in (public) ones are replaced, whatever the caller's
    # environment says.
    env = {"APR_ASYNC_TARGETS": "none", "APR_ASYNC_PROBE_GATEWAYS": "0", **env}
    prefix = ["env", "NO_COLOR=1", *(f"{k}={v}" for k, v in env.items())]
    return await lab.exec(
        "client", *prefix, sys.executable, "-m", "apr_async", *argv, max_time=max_time
    )


def ns_args(lab: Lab) -> list[str]:
    return [arg for ns in lab.dns_servers for arg in ("--nameserver", ns)]


def as_json(result: ExecResult) -> Any:
    assert "Traceback" not in result.stderr, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


async def test_pairs_by_name_ranks_ipv6_first_with_reasons(healthy_lab: Lab) -> None:
    lab = healthy_lab
    res = await cli(lab, "pairs", lab.names.dual, "80", "--json", *ns_args(lab))
    assert res.returncode == 0, res.stderr
    data = as_json(res)
    first = data["pairs"][0]
    assert first["family"] == "IPv6" and first["source"] == lab.client.gua
    assert all(p["reason"] for p in data["pairs"])
    # and the table for people
    res = await cli(lab, "pairs", lab.names.dual, "80", *ns_args(lab))
    assert res.returncode == 0
    assert res.stdout.splitlines()[0].split()[:4] == ["#", "family", "source", "destination"]
    assert lab.client.gua in res.stdout


async def test_pairs_env_nameservers_apply(healthy_lab: Lab) -> None:
    lab = healthy_lab
    res = await cli(
        lab, "pairs", lab.names.v4_only, "80", "--json", APR_ASYNC_NAMESERVERS=lab.dns_v4
    )
    assert res.returncode == 0, res.stderr
    assert {p["destination"] for p in as_json(res)["pairs"]} == {f"{lab.server.v4[0]}:80"}


async def test_nxdomain_exits_3(healthy_lab: Lab) -> None:
    lab = healthy_lab
    res = await cli(lab, "pairs", lab.names.nxdomain, "80", *ns_args(lab))
    assert res.returncode == 3
    assert res.stderr.startswith("apr-async: error: name resolution failed")
    assert "Traceback" not in res.stderr


async def test_connect_timeline_with_ipv6_blackholed(healthy_lab: Lab, echo: EchoServer) -> None:
    lab = healthy_lab
    await lab.set_scenario(Scenario.v6_blackholed())
    res = await cli(lab, "connect", lab.names.dual, str(echo.port), "--json", *ns_args(lab))
    assert res.returncode == 0, res.stderr
    data = as_json(res)
    assert data["connected"] and data["winner"]["source"] == lab.client.v4
    answers = {e["family"] for e in data["events"] if e["kind"] == "answer"}
    # Each family's answer, or one event for both when they landed in the same loop turn
    # (then ranked together).
    assert answers in ({"IPv4", "IPv6"}, {"both"})
    winner = [e for e in data["events"] if e["kind"] == "attempt" and e["ok"]]
    assert len(winner) == 1 and winner[0]["family"] == "IPv4"
    # the table for people names the winner
    res = await cli(lab, "connect", lab.names.dual, str(echo.port), *ns_args(lab))
    assert res.returncode == 0
    assert "connected" in res.stdout and lab.client.v4 in res.stdout


async def test_connect_to_dead_addresses_exits_1(healthy_lab: Lab) -> None:
    lab = healthy_lab
    res = await cli(
        lab, "connect", lab.names.all_dead, "80", "--timeout", "1", "--json", *ns_args(lab)
    )
    assert res.returncode == 1, res.stderr
    data = as_json(res)
    assert not data["connected"] and data["error"]


async def tcp_attempt_fails(lab: Lab) -> int:
    """The client namespace's count of failed TCP connects (refusals included)."""
    snmp = (await lab.exec("client", "cat", "/proc/net/snmp", check=True)).stdout
    header, values = (line.split() for line in snmp.splitlines() if line.startswith("Tcp:"))
    return int(dict(zip(header, values, strict=True))["AttemptFails"])


async def test_wait_succeeds_once_the_service_comes_up(healthy_lab: Lab) -> None:
    lab = healthy_lab
    port = 18765
    waiter = asyncio.create_task(
        cli(
            lab,
            "wait",
            lab.names.dual,
            str(port),
            "--timeout",
            "20",
            "--interval",
            "0.2",
            "--json",
            *ns_args(lab),
        )
    )
    # Start the server only once the waiter has really been refused at least once (counted
    # by the client namespace's TCP AttemptFails), so "waited, then succeeded" is proven
    # however slowly the subprocess starts on a loaded machine.
    base = await tcp_attempt_fails(lab)
    for _ in range(200):
        if await tcp_attempt_fails(lab) > base:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the waiter never tried to connect")
    assert not waiter.done()
    server = await lab.start_echo_server(port=port)
    try:
        res = await asyncio.wait_for(waiter, 30)
    finally:
        await lab.stop_echo_server(server)
    assert res.returncode == 0, res.stderr
    data = as_json(res)
    # The refusal counted above happened before any server listened, and the command still
    # ended ready: it kept trying instead of giving up at the first refusal. (How many of its
    # races that took depends on where in a race the server came up, so it is not asserted.)
    assert data["ready"] and data["attempts"] >= 1


async def test_wait_times_out_with_exit_1(healthy_lab: Lab) -> None:
    lab = healthy_lab
    res = await cli(lab, "wait", lab.names.dual, "18766", "--timeout", "1", *ns_args(lab))
    assert res.returncode == 1
    assert "timed out" in res.stdout


async def test_ping_reports_down_hosts(healthy_lab: Lab, echo: EchoServer) -> None:
    lab = healthy_lab
    alive, dead = lab.server.v4[0], lab.server.dead_v4[0]
    res = await cli(
        lab, "ping", alive, lab.server.v6[0], dead, "-c", "2", "-i", "0.05", "-W", "0.3", "--json"
    )
    assert res.returncode == 1, res.stderr
    data = as_json(res)
    assert data["down"] == [dead]
    by_dest = {(p["source"], p["destination"]): p for p in data["pairs"]}
    assert by_dest[(lab.client.v4, alive)]["received"] == 2
    assert by_dest[(lab.client.gua, lab.server.v6[0])]["rtt_avg_ms"] is not None


async def test_ping_falls_back_to_tcp_when_icmp_echo_is_blocked(
    healthy_lab: Lab, echo: EchoServer
) -> None:
    lab = healthy_lab
    await lab.set_scenario(Scenario.echo_blocked())
    v4, v6, dead = lab.server.v4[0], lab.server.v6[0], lab.server.dead_v4[0]
    res = await cli(
        lab, "ping", v4, v6, dead, "--tcp-port", str(echo.port),
        "-c", "2", "-i", "0.05", "-W", "0.3", "--json",
    )
    assert res.returncode == 1, res.stderr  # the dead address is down
    data = as_json(res)
    # ICMP and TCP both unanswered: down. ICMP unanswered but TCP accepted: up.
    assert data["down"] == [dead]
    by_pair = {(p["source"], p["destination"]): p for p in data["pairs"]}
    for pair in ((lab.client.v4, v4), (lab.client.gua, v6)):
        row = by_pair[pair]
        assert row["method"] == "tcp" and row["received"] == 2, row
        assert row["loss"] == 0 and row["rtt_avg_ms"] is not None, row
    dead_rows = [p for p in data["pairs"] if p["destination"] == dead]
    assert dead_rows and all(p["received"] == 0 and p["loss"] == 1 for p in dead_rows)
    # the table for people says which way each host answered
    res = await cli(
        lab, "ping", v4, "--tcp-port", str(echo.port), "-c", "1", "-W", "0.3",
    )
    assert res.returncode == 0, res.stderr
    row = next(line for line in res.stdout.splitlines() if f" {lab.client.v4} " in line)
    assert " tcp " in row and "1/1" in row
    assert "all hosts up" in res.stdout


async def test_ping_without_a_tcp_port_reports_icmp_silent_hosts_down(
    healthy_lab: Lab, echo: EchoServer
) -> None:
    # No port to fall back to: an ICMP-silent host is reported down, with ICMP as the method.
    lab = healthy_lab
    await lab.set_scenario(Scenario.echo_blocked())
    v4 = lab.server.v4[0]
    res = await cli(lab, "ping", v4, "-c", "1", "-W", "0.3", "--json")
    assert res.returncode == 1, res.stderr
    data = as_json(res)
    assert data["down"] == [v4]
    assert {p["method"] for p in data["pairs"]} == {"icmp"}


async def test_ping_tcp_only(healthy_lab: Lab, echo: EchoServer) -> None:
    lab = healthy_lab
    res = await cli(
        lab,
        "ping",
        lab.names.dual,
        "--tcp",
        "--tcp-port",
        str(echo.port),
        "-c",
        "1",
        "--json",
        *ns_args(lab),
    )
    assert res.returncode == 0, res.stderr
    data = as_json(res)
    assert {p["method"] for p in data["pairs"]} == {"tcp"}
    assert data["down"] == []


async def test_interfaces_in_the_client_namespace(healthy_lab: Lab) -> None:
    lab = healthy_lab
    res = await cli(lab, "interfaces", "--json")
    assert res.returncode == 0, res.stderr
    data = as_json(res)
    kinds = {a["address"]: a["kind"] for i in data["interfaces"] for a in i["addresses"]}
    assert kinds[lab.client.gua] == "GUA" and kinds[lab.client.ula] == "ULA"
    assert kinds[lab.client.v4] == "public IPv4" and kinds[lab.client.private_v4] == "RFC 1918"
    assert {g["gateway"] for g in data["gateways"]} >= {lab.router.client_v4}


def probe_args(lab: Lab, echo: EchoServer) -> list[str]:
    return [
        "--target",
        f"{lab.server.v4[1]}:{echo.port}",
        "--target",
        f"[{lab.server.v6[1]}]:{echo.port}",
        "--interval",
        "0.5",
        *ns_args(lab),
    ]


async def test_status_healthy(healthy_lab: Lab, echo: EchoServer) -> None:
    lab = healthy_lab
    res = await cli(lab, "status", "--json", "--timeout", "10", *probe_args(lab, echo))
    assert res.returncode == 0, res.stderr
    data = as_json(res)
    assert data["ready"]
    assert len(data["targets"]) == 2  # the named ones, nothing else
    status = data["status"]
    assert status["GUA_ok"] and status["IPv4_ok"] and status["IPv6_ok"] and status["RFC1918"]
    assert not status["NAT44"] and not status["NPTv6"]
    assert status["def_gateway4"] == lab.router.client_v4
    # wall-clock times a JSON consumer can use, not this process's monotonic seconds
    updated = datetime.datetime.fromisoformat(status["updated_at"])
    assert updated.tzinfo is not None and status["updated_at"].endswith("Z")
    now = datetime.datetime.now(datetime.UTC)
    assert abs((now - updated).total_seconds()) < 60
    assert 0 <= status["changed_age_s"] < 60
    assert lab.client.gua in {a["address"] for a in data["addresses"]}
    res = await cli(lab, "status", "--timeout", "10", *probe_args(lab, echo))
    assert res.returncode == 0
    assert res.stdout.splitlines()[0].split() == ["flag", "value", "meaning"]
    assert "connectivity:" in res.stdout


async def test_status_ipv6_blackholed(healthy_lab: Lab, echo: EchoServer) -> None:
    lab = healthy_lab
    await lab.set_scenario(Scenario.v6_blackholed())
    res = await cli(lab, "status", "--json", "--timeout", "10", *probe_args(lab, echo))
    assert res.returncode == 0, res.stderr  # IPv4 still works
    status = as_json(res)["status"]
    assert status["IPv4_ok"] and not status["GUA_ok"] and not status["IPv6_ok"]


async def test_monitor_json_lines_for_a_bounded_duration(
    healthy_lab: Lab, echo: EchoServer
) -> None:
    lab = healthy_lab
    # The private and ULA sources' probes are lost on the lab's internet, and a round ends
    # with its slowest probe: a short probe timeout lets a round finish within the duration.
    res = await cli(
        lab, "monitor", "--json", "--duration", "2", "--refresh", "0.5", *probe_args(lab, echo),
        APR_ASYNC_PROBE_TIMEOUT="0.5",
    )
    assert res.returncode == 0, res.stderr
    frames = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(frames) >= 3
    last = frames[-1]
    assert last["round"] >= 1
    up = {(p["source"], p["destination"]) for p in last["paths"] if p["ok"]}
    assert (lab.client.v4, lab.server.v4[1]) in up
    assert (lab.client.private_v4, lab.server.v4[1]) not in up  # no NAT44 when healthy
    assert (lab.client.gua, lab.server.v6[1]) in up


async def test_monitor_stops_cleanly_on_sigint(healthy_lab: Lab, echo: EchoServer) -> None:
    lab = healthy_lab
    proc = await lab.popen(
        "client",
        "env",
        "NO_COLOR=1",
        "APR_ASYNC_TARGETS=none",
        "APR_ASYNC_PROBE_GATEWAYS=0",
        sys.executable,
        "-m",
        "apr_async",
        "monitor",
        "--refresh",
        "0.2",
        *probe_args(lab, echo),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    first = await asyncio.wait_for(proc.stdout.readline(), 30)
    assert first.startswith(b"apr-async monitor")
    await asyncio.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == 0, err.decode()
    assert b"Traceback" not in err
    assert b"source" in out  # frames were printed plainly (not a TTY)
