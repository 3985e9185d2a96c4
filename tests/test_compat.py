"""The getapr-compatible sync shim (``apr_async.compat``).

Everything that starts the probe service runs as a separate Python process, so its
interpreter exit (the atexit shutdown) is tested too: on loopback with nothing to probe, or
inside the lab's client namespace with targets and DNS set through ``APR_ASYNC_*`` (never the
defaults).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from apr_async import compat
from apr_async.core.status import PROTOTYPE_FIELDS
from apr_async.lab import EchoServer, ExecResult, Lab, Scenario


def test_bad_input_raises_before_anything_starts() -> None:
    threads = threading.active_count()
    with pytest.raises(TypeError):
        compat.get_addr_pairs(None, 80)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        compat.get_addr_pairs("", 80)
    with pytest.raises(ValueError):
        compat.get_addr_pairs("example.net", 70000)
    with pytest.raises(ValueError):
        compat.status(wait=-1)
    with pytest.raises(TypeError):
        compat.init_getapr(config="targets")  # type: ignore[arg-type]
    assert threading.active_count() == threads  # no background thread was started
    compat.shutdown()  # nothing to stop: a no-op


EXIT_SCRIPT = textwrap.dedent(
    """
    import atexit, json, sys, threading, time
    report = {}

    def after_shutdown():
        # Registered before compat's own handler, so it runs after it (atexit is LIFO).
        report["exit_s"] = time.monotonic() - report.pop("t_exit")
        stuck.join(5)
        report["compat_threads"] = [
            t.name for t in threading.enumerate() if t.name.startswith("apr_async")
        ]
        report["loop_closed"] = loop.is_closed()
        print(json.dumps(report), flush=True)

    atexit.register(after_shutdown)
    from apr_async import compat as getapr

    barrier = threading.Barrier(8)
    firsts = []

    def first_use():
        barrier.wait()
        firsts.append(getapr.get_addr_pairs("127.0.0.1", int(sys.argv[1])))

    t0 = time.monotonic()
    threads = [threading.Thread(target=first_use) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report["first_use_s"] = time.monotonic() - t0
    report["pairs"] = [[int(af), list(sa), list(da)] for af, sa, da in firsts[0]]
    t0 = time.monotonic()
    report["init"] = getapr.init_getapr()
    report["init_s"] = time.monotonic() - t0
    loop = getapr._background.loop()

    async def services():
        import asyncio
        return sum(t.get_name() == "apr_async-probe-service" for t in asyncio.all_tasks())

    report["services"] = getapr._background.call(services())

    def stuck_call():
        try:
            getapr.get_addr_pairs("unanswered.test", 80)  # the DNS server never answers
        except Exception as exc:
            report["stuck"] = f"{type(exc).__name__}: {exc}"

    stuck = threading.Thread(target=stuck_call, daemon=True)
    stuck.start()
    time.sleep(0.3)
    atexit.register(lambda: report.__setitem__("t_exit", time.monotonic()))  # runs first
    """
)


def test_first_use_is_quick_and_exit_is_clean_with_a_call_in_flight() -> None:
    # Loopback only: a literal (no DNS) for the answers, no probe target, no gateway probe,
    # no NAT64 discovery, and a DNS server that is a local UDP socket nobody reads.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent_dns:
        silent_dns.bind(("127.0.0.1", 0))
        env = {
            **os.environ,
            "APR_ASYNC_TARGETS": "none",
            "APR_ASYNC_PROBE_GATEWAYS": "0",
            "APR_ASYNC_NAT64_DISCOVERY": "0",
            "APR_ASYNC_NAMESERVERS": f"127.0.0.1:{silent_dns.getsockname()[1]}",
            "APR_ASYNC_DNS_TIMEOUT": "30",
        }
        start = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-W", "error", "-c", EXIT_SCRIPT, "9"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # no warning, no traceback, not even from the stuck thread
    data = json.loads(proc.stdout)
    assert data["pairs"] == [[socket.AF_INET, ["127.0.0.1", 0], ["127.0.0.1", 9]]]
    assert list(data["init"]) == list(PROTOTYPE_FIELDS)
    # First use starts a thread and the service, and waits for no probe round (generous
    # bounds on a loaded machine: blocking would take seconds).
    assert data["first_use_s"] < 1.0 and data["init_s"] < 1.0, data
    assert data["services"] == 1  # eight threads arriving first at once share one service
    # Exit did not wait for the call in flight (DNS timeout 30 s) nor for SHUTDOWN_TIMEOUT:
    # the call was told why it ended, the thread was joined and the loop closed.
    assert data["exit_s"] < 2.0, data
    assert data["stuck"] == "RuntimeError: apr_async.compat was shut down during this call"
    assert data["compat_threads"] == [] and data["loop_closed"]
    assert elapsed < 30


SCRIPT = textwrap.dedent(
    """
    import json, socket, sys, time, warnings
    warnings.simplefilter("error")
    from apr_async import compat as getapr

    host, port = sys.argv[1], int(sys.argv[2])
    t0 = time.monotonic()
    pairs = getapr.get_addr_pairs(host, port)
    first_call = time.monotonic() - t0
    AF, SA, DA = pairs[0]
    with socket.socket(AF, socket.SOCK_STREAM) as s:
        s.settimeout(3)
        s.bind(SA)
        s.connect(DA)
        peer = s.recv(200).decode()
    infos = getapr.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    t1 = time.monotonic()
    status = getapr.status(wait=10)
    print(json.dumps({
        "first_call": first_call,
        "pairs": [[int(p[0]), list(p[1]), list(p[2])] for p in pairs],
        "plain_tuples": all(len(p) == 3 and isinstance(p, tuple) for p in pairs),
        "peer": peer,
        "infos": [[int(i[0]), int(i[1]), i[2], i[3], list(i[4])] for i in infos],
        "status": status,
        "status_wait": time.monotonic() - t1,
        "init": getapr.init_getapr(),
    }))
    """
)


def lab_test(fn: Any) -> Any:
    return pytest.mark.lab(pytest.mark.asyncio(loop_scope="module")(fn))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def echo(lab: Lab) -> AsyncIterator[EchoServer]:
    server = await lab.start_echo_server(announce_peer=True)
    yield server
    await lab.stop_echo_server(server)


async def run(lab: Lab, echo: EchoServer, host: str) -> tuple[ExecResult, float]:
    env = {
        "APR_ASYNC_NAMESERVERS": ",".join(lab.dns_servers),
        "APR_ASYNC_TARGETS": f"{lab.server.v4[1]}:{echo.port},[{lab.server.v6[1]}]:{echo.port}",
        "APR_ASYNC_PROBE_INTERVAL": "0.5",
        "APR_ASYNC_PROBE_TIMEOUT": "0.5",
        "APR_ASYNC_NETWATCH": "poll",
    }
    argv = ["env", *(f"{k}={v}" for k, v in env.items())]
    start = time.monotonic()
    result = await lab.exec(
        "client",
        *argv,
        sys.executable,
        "-W",
        "error",
        "-c",
        SCRIPT,
        host,
        str(echo.port),
        max_time=60,
    )
    return result, time.monotonic() - start


@lab_test
async def test_prototype_shapes_status_and_clean_exit(healthy_lab: Lab, echo: EchoServer) -> None:
    lab = healthy_lab
    result, elapsed = await run(lab, echo, lab.names.dual)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no warning, no traceback at exit
    data = json.loads(result.stdout)
    assert data["first_call"] < 1.0  # no blocking start-up
    assert data["plain_tuples"]
    af, sa, da = data["pairs"][0]
    assert af == socket.AF_INET6 and sa[0] == lab.client.gua and da[0] == lab.server.v6[0]
    assert data["peer"].startswith("PEER")
    assert data["infos"][0][0] == socket.AF_INET6
    assert {i[4][0] for i in data["infos"]} == {lab.server.v4[0], lab.server.v6[0]}
    assert all(i[1] == socket.SOCK_STREAM for i in data["infos"])
    status = data["status"]
    assert list(status) == list(PROTOTYPE_FIELDS)
    assert status["GUA_ok"] and status["IPv4_ok"] and status["RFC1918"]
    assert status["def_gateway4"] == lab.router.client_v4
    assert set(data["init"]) == set(PROTOTYPE_FIELDS)
    # interpreter exit stopped the service and joined the thread promptly
    assert elapsed < 20


@lab_test
async def test_ula_trap_ranks_the_gua_source_first(healthy_lab: Lab, echo: EchoServer) -> None:
    lab = healthy_lab
    await lab.set_scenario(Scenario.ula_source_trap())
    result, _ = await run(lab, echo, lab.names.v6_only)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["pairs"][0][1][0] == lab.client.gua
    assert data["peer"].split()[1].strip("[]").startswith(lab.client.gua.split("::")[0])
