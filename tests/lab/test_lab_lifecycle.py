"""A lab leaves nothing behind, whatever happens; helpers run in the right namespace."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from labprobe import tcp_connect

from apr_async.lab import Lab, PathMode, Scenario, lab_namespaces, sweep_stale_labs
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


def open_fds() -> set[str]:
    """What this process' descriptors point at (sockets, the tun device, namespace files)."""
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(FileNotFoundError):  # the listing's own descriptor
            out.add(os.readlink(f"/proc/self/fd/{fd}"))
    return out


async def assert_nothing_left(lab: Lab, before_children: set[int], before_fds: set[str]) -> None:
    assert lab_namespaces(lab.prefix) == []
    assert not any(lab.prefix in name for name in os.listdir("/run/netns"))
    assert lab_threads(lab.prefix) == []
    assert lab.threads() == []
    assert children() <= before_children
    # asyncio closes a killed subprocess' pipes when it sees their EOF, a few loop turns
    # after the kill: give it those turns, then nothing may be left open.
    for _ in range(100):
        if open_fds() <= before_fds:
            break
        await asyncio.sleep(0.01)
    assert open_fds() <= before_fds


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # a killed child of ours stays a zombie until reaped; it is gone all the same
    return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"


async def start_grandchild(lab: Lab) -> int:
    """A process the lab did not start itself (a child of a popen'd shell); its pid."""
    proc = await lab.popen("client", "sh", "-c", "sleep 60 & echo $!; wait",
                           stdout=subprocess.PIPE)
    assert proc.stdout is not None
    return int(await asyncio.wait_for(proc.stdout.readline(), 5))


async def serve_forever(ready: threading.Event) -> None:
    """A client-side server a test leaves running in the background."""
    server = await asyncio.start_server(lambda r, w: None, "::", 0)
    async with server:
        ready.set()
        await server.serve_forever()


async def netns_inode() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


async def test_clean_exit_leaves_nothing() -> None:
    before, fds = children(), open_fds()
    async with Lab() as lab:
        assert len(lab_namespaces(lab.prefix)) == 3
        await lab.start_echo_server()
        proc = await lab.popen("server", "sleep", "60")
        assert proc.pid in children()
        assert lab_threads(lab.prefix)
    assert proc.returncode is not None
    await assert_nothing_left(lab, before, fds)


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
    before, fds = children(), open_fds()
    lab = Lab()
    with pytest.raises(ZeroDivisionError):
        async with lab:
            await lab.popen("client", "sleep", "60")
            await lab.start_echo_server("client")
            _ = 1 / 0
    await assert_nothing_left(lab, before, fds)


async def test_failure_with_work_still_running_leaves_nothing() -> None:
    # A failing test leaves whatever it started running: a background run_in call, a
    # process's own child; closing the lab ends all of it, at once.
    before, fds = children(), open_fds()
    lab = Lab()
    ready = threading.Event()
    with pytest.raises(ZeroDivisionError):
        async with lab:
            grandchild = await start_grandchild(lab)
            background = asyncio.ensure_future(lab.run_in("client", serve_forever, ready))
            await asyncio.to_thread(ready.wait, 5)
            _ = 1 / 0
    await assert_nothing_left(lab, before, fds)
    assert pid_gone(grandchild)
    with pytest.raises(RuntimeError, match="lab closed"):
        await background  # told why, not a CancelledError nobody asked for


async def test_cancellation_while_running_leaves_nothing() -> None:
    before, fds = children(), open_fds()
    built: list[Lab] = []
    started = asyncio.Event()
    grandchild: list[int] = []

    async def user() -> None:
        async with Lab() as lab:
            built.append(lab)
            await lab.start_echo_server()
            grandchild.append(await start_grandchild(lab))
            started.set()
            await lab.run_in("client", serve_forever, threading.Event())

    task = asyncio.ensure_future(user())
    await asyncio.wait_for(started.wait(), 10)
    await asyncio.sleep(0.05)  # into run_in
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await assert_nothing_left(built[0], before, fds)
    assert pid_gone(grandchild[0])


async def test_cancelled_scenario_switch_leaves_a_consistent_lab() -> None:
    # Cancelled at any point, a switch still completes: a half-applied one would make the
    # next switches compute their changes from the wrong state (duplicate NPTv6 rules, a
    # delay-line rule left behind, client addresses added twice).
    messy = Scenario(v4=PathMode.REJECT_RST, v6_delay=0.05, nat44=True, nptv6=True)
    async with Lab() as lab:
        for delay in (0.0, 0.002, 0.005, 0.01, 0.02):
            task = asyncio.ensure_future(lab.set_scenario(messy))
            await asyncio.sleep(delay)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            assert lab.scenario == messy
            await lab.set_scenario(Scenario.ipv4_only_client())
            await lab.set_scenario()
        mangle = await lab.exec("router", "ip6tables", "-w", "-t", "mangle", "-S", check=True)
        assert "NPT" not in mangle.stdout
        rules = await lab.exec("router", "ip", "-6", "rule", "show", "pref", "100", check=True)
        assert rules.stdout.strip() == ""
        route = await lab.exec("client", "ip", "-4", "route", "show", "default", check=True)
        assert f"src {lab.client.v4}" in route.stdout
        addrs = await lab.exec("client", "ip", "-6", "addr", "show", "scope", "global",
                               check=True)
        assert lab.client.gua in addrs.stdout and lab.client.ula in addrs.stdout


async def test_cancellation_during_setup_leaves_nothing() -> None:
    before, fds = children(), open_fds()
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
        await assert_nothing_left(lab, before, fds)


async def test_keyboard_interrupt_during_setup_leaves_nothing() -> None:
    # KeyboardInterrupt raised from inside set-up (as a signal handler would) propagates,
    # and what was built is removed before it does.
    before, fds = children(), open_fds()
    lab = Lab()
    original = lab._build

    async def interrupted() -> None:
        await original()
        raise KeyboardInterrupt

    lab._build = interrupted  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        await lab.start()
    await assert_nothing_left(lab, before, fds)


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
    # Built at the same time, with the same addresses and the same server port: each lab's
    # traffic and scenario stay inside it.
    one, two = Lab(), Lab()
    try:
        await asyncio.gather(one.start(), two.start())
        assert one.prefix != two.prefix and one.server.v6 == two.server.v6
        echo_one = await one.start_echo_server(announce_peer=True)
        echo_two = await two.start_echo_server(port=echo_one.port, announce_peer=True)
        await two.set_scenario(Scenario.v6_blackholed())
        out = await one.run_in("client", tcp_connect, one.server.v6[0], echo_one.port)
        assert out.ok  # two's scenario does not touch one
        blocked = await two.run_in("client", tcp_connect, two.server.v6[0], echo_two.port,
                                   limit=0.4)
        assert blocked.timed_out  # while it does apply in two
        assert (await two.run_in("client", tcp_connect, two.server.v4[0], echo_two.port)).ok
        assert [a.peer for a in await echo_one.wait_accepted(1)] == [one.client.gua]
        assert [a.peer for a in await echo_two.wait_accepted(1)] == [two.client.v4]
    finally:
        await asyncio.gather(one.close(), two.close())
    assert lab_namespaces(one.prefix) == lab_namespaces(two.prefix) == []


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
