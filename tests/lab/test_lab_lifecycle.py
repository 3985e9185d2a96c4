"""A lab leaves nothing behind, whatever happens; helpers run in the right namespace."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from labprobe import tcp_connect

from apr_async.lab import Lab, Scenario, lab_namespaces, sweep_stale_labs
from apr_async.lab.netns import run_coroutine_in_netns

pytestmark = pytest.mark.lab


def children() -> set[int]:
    """Direct child processes of this process, across all its threads."""
    pids: set[int] = set()
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        with (task / "children").open() as f:
            pids.update(int(p) for p in f.read().split())
    return pids


def lab_threads(prefix: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if prefix in t.name and t.is_alive()]


def assert_nothing_left(lab: Lab, before_children: set[int]) -> None:
    assert lab_namespaces(lab.prefix) == []
    assert not any(lab.prefix in name for name in os.listdir("/run/netns"))
    assert lab_threads(lab.prefix) == []
    assert lab.threads() == []
    assert children() <= before_children


async def netns_inode() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


async def test_clean_exit_leaves_nothing() -> None:
    before = children()
    async with Lab() as lab:
        assert len(lab_namespaces(lab.prefix)) == 3
        await lab.start_echo_server()
        proc = await lab.popen("server", "sleep", "60")
        assert proc.pid in children()
        assert lab_threads(lab.prefix)
    assert proc.returncode is not None
    assert_nothing_left(lab, before)


def root_links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True,
                         check=True).stdout
    return {line.split(":")[1].strip() for line in out.splitlines()}


async def test_no_link_to_the_host_namespace() -> None:
    before = root_links()
    async with Lab() as lab:
        assert root_links() == before  # every veth end was created inside a lab namespace
        for host in ("client", "router", "server"):
            result = await lab.exec(host, "ip", "-o", "link", "show", check=True)
            names = {line.split(":")[1].strip().split("@")[0]
                     for line in result.stdout.splitlines()}
            assert "eth0" not in names
    assert root_links() == before


async def test_exception_inside_leaves_nothing() -> None:
    before = children()
    lab = Lab()
    with pytest.raises(ZeroDivisionError):
        async with lab:
            await lab.popen("client", "sleep", "60")
            await lab.start_echo_server("client")
            _ = 1 / 0
    assert_nothing_left(lab, before)


async def test_cancellation_during_setup_leaves_nothing() -> None:
    before = children()
    for delay in (0.0, 0.01, 0.03, 0.06):
        lab = Lab()
        task = asyncio.ensure_future(lab.start())
        await asyncio.sleep(delay)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        else:
            await lab.close()
        assert_nothing_left(lab, before)


async def test_keyboard_interrupt_during_setup_leaves_nothing() -> None:
    # KeyboardInterrupt raised from inside set-up (as a signal handler would) propagates,
    # and what was built is removed before it does.
    before = children()
    lab = Lab()
    original = lab._build

    async def interrupted() -> None:
        await original()
        raise KeyboardInterrupt

    lab._build = interrupted  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        await lab.start()
    assert_nothing_left(lab, before)


def test_process_killed_mid_run_is_swept_later(tmp_path: Path) -> None:
    # A crashed run (SIGKILL: no cleanup at all) leaves namespaces; the sweeper removes them
    # because their owner pid is dead, and leaves a live owner's labs alone.
    script = tmp_path / "crash.py"
    script.write_text(
        "import asyncio, os, signal\n"
        "from apr_async.lab import Lab\n"
        "async def main():\n"
        "    lab = Lab()\n"
        "    await lab.start()\n"
        "    print(lab.prefix, flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "asyncio.run(main())\n"
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60, check=False)
    prefix = proc.stdout.strip()
    assert prefix and proc.returncode == -9
    assert len(lab_namespaces(prefix)) == 3
    removed = sweep_stale_labs()
    assert set(lab_namespaces(prefix)).isdisjoint(lab_namespaces())
    assert {f"{prefix}-{role}" for role in ("client", "router", "server")} <= set(removed)


async def test_sweeper_spares_live_labs() -> None:
    async with Lab() as lab:
        sweep_stale_labs()
        assert len(lab_namespaces(lab.prefix)) == 3


async def test_labs_side_by_side_are_isolated() -> None:
    async with Lab() as one, Lab() as two:
        assert one.prefix != two.prefix
        echo = await one.start_echo_server()
        await two.set_scenario(Scenario.v6_blackholed())
        out = await one.run_in("client", tcp_connect, one.server.v6[0], echo.port)
        assert out.ok  # two's scenario does not touch one
        blocked = await two.run_in("client", tcp_connect, two.server.v6[0], echo.port)
        assert not blocked.ok  # no echo server in two


async def test_run_in_socket_exec_land_in_the_right_namespace() -> None:
    async with Lab() as lab:
        root = await netns_inode()
        client = await lab.run_in("client", netns_inode)
        server = await lab.run_in("server", netns_inode)
        assert len({root, client, server}) == 3
        sock = lab.socket("client", socket.AF_INET6, socket.SOCK_DGRAM)
        with sock:
            sock.bind((lab.client.gua, 0))  # only exists in the client namespace
        result = await lab.exec("client", "ip", "-brief", "addr", "show", "dev", "up0")
        assert lab.client.gua in result.stdout and result.returncode == 0
        failed = await lab.exec("client", "false")
        assert failed.returncode == 1
        with pytest.raises(ValueError):
            await lab.exec("nowhere", "true")  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            lab.socket("elsewhere")  # type: ignore[arg-type]


async def test_run_in_propagates_results_errors_and_cancellation() -> None:
    async with Lab() as lab:
        async def boom() -> None:
            raise LookupError("inside")

        with pytest.raises(LookupError, match="inside"):
            await lab.run_in("client", boom)

        cancelled = threading.Event()

        async def forever() -> None:
            try:
                await asyncio.sleep(3600)
            finally:
                cancelled.set()

        task = asyncio.ensure_future(lab.run_in("client", forever))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert cancelled.is_set()
        assert lab.threads() == [t for t in lab.threads() if "-svc" in t.name]


async def test_run_coroutine_in_missing_namespace_raises() -> None:
    async def noop() -> None:
        return None

    with pytest.raises(FileNotFoundError):
        await run_coroutine_in_netns("aprlab-does-not-exist", noop)


async def test_closed_lab_refuses_work() -> None:
    lab = Lab()
    async with lab:
        pass
    with pytest.raises(RuntimeError):
        await lab.set_scenario()
    with pytest.raises(RuntimeError):
        await lab.start()
