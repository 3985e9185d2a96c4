"""The getapr-compatible sync shim (``apr_async.compat``).

Everything that starts the probe service runs as a separate Python process inside the lab's
client namespace, with targets and DNS set through ``APR_ASYNC_*`` (never the defaults), so
the process's interpreter exit (atexit shutdown) is tested too.
"""

from __future__ import annotations

import json
import socket
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from apr_async import compat
from apr_async.lab import EchoServer, ExecResult, Lab, Scenario
from apr_async.status import PROTOTYPE_FIELDS


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
