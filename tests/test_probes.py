"""Probe coroutines on loopback: real sockets, each bound to its source."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from apr_async.probe.probes import (
    IcmpUnavailableError,
    detect_icmp_mode,
    icmp_probe,
    sockaddr_for,
    tcp_probe,
)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    yield sock
    sock.close()


def closed_port(family: socket.AddressFamily = socket.AF_INET) -> int:
    host = "127.0.0.1" if family == socket.AF_INET else "::1"
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
    return port


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


async def test_tcp_probe_accepted_from_bound_source(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    before = open_fds()
    result = await tcp_probe("127.0.0.2", "127.0.0.1", port, max_wait=2)
    assert result.ok and not result.refused
    assert result.rtt is not None and 0 < result.rtt < 2
    conn, peer = listener.accept()
    conn.close()
    assert peer[0] == "127.0.0.2"  # the probe really left from the requested source
    assert open_fds() == before


async def test_tcp_probe_refused_counts_as_reachable() -> None:
    result = await tcp_probe("127.0.0.1", "127.0.0.1", closed_port(), max_wait=2)
    assert result.ok and result.refused
    assert result.rtt is not None and result.rtt >= 0
    assert result.error is None


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 on loopback")
async def test_tcp_probe_ipv6_refused() -> None:
    result = await tcp_probe("::1", "::1", closed_port(socket.AF_INET6), max_wait=2)
    assert result.ok and result.refused


async def test_tcp_probe_timeout_when_syn_dropped() -> None:
    # A listener whose accept queue is full drops further SYNs: the probe sees no answer.
    with socket.socket() as full:
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        port = full.getsockname()[1]
        fillers = [socket.create_connection(("127.0.0.1", port))]
        try:
            result = await tcp_probe("127.0.0.1", "127.0.0.1", port, max_wait=0.3)
        finally:
            for f in fillers:
                f.close()
    assert not result.ok
    assert result.error == errno.ETIMEDOUT
    assert result.rtt is None


async def test_tcp_probe_unassigned_source_fails_without_sending() -> None:
    before = open_fds()
    result = await tcp_probe("198.51.100.77", "127.0.0.1", 9, max_wait=1)
    assert not result.ok
    assert result.error == errno.EADDRNOTAVAIL
    assert "bind" in result.detail
    assert open_fds() == before


async def test_tcp_probe_cancel_leaks_nothing() -> None:
    with socket.socket() as full:
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        port = full.getsockname()[1]
        fillers = [socket.create_connection(("127.0.0.1", port))]
        before = open_fds()
        task = asyncio.create_task(tcp_probe("127.0.0.1", "127.0.0.1", port, max_wait=30))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert open_fds() == before
        for f in fillers:
            f.close()


@pytest.mark.parametrize(
    ("args", "exc"),
    [
        (("127.0.0.1", "::1", 80), ValueError),
        (("127.0.0.1", "localhost", 80), ValueError),
        (("127.0.0.1", "127.0.0.1", 0), ValueError),
        (("127.0.0.1", "127.0.0.1", 65536), ValueError),
        (("fe80::1", "fe80::2", 80), ValueError),
        ((b"127.0.0.1", "127.0.0.1", 80), TypeError),
    ],
)
async def test_tcp_probe_bad_input(args: tuple[object, object, int], exc: type[Exception]) -> None:
    with pytest.raises(exc):
        await tcp_probe(*args, max_wait=1)  # type: ignore[arg-type]


def test_sockaddr_for() -> None:
    assert sockaddr_for("127.0.0.1", 5) == (socket.AF_INET, ("127.0.0.1", 5))
    assert sockaddr_for("2001:db8::1", 5) == (socket.AF_INET6, ("2001:db8::1", 5, 0, 0))
    assert sockaddr_for("fe80::1%1", 5) == (socket.AF_INET6, ("fe80::1", 5, 0, 1))
    lo = socket.if_nametoindex("lo")
    assert sockaddr_for("fe80::1%lo", 0) == (socket.AF_INET6, ("fe80::1", 0, 0, lo))
    with pytest.raises(ValueError):
        sockaddr_for("fe80::1%nosuchif0", 0)
    with pytest.raises(ValueError):
        sockaddr_for("10.0.0.1%eth0", 0)


def ping_group_allows_root() -> bool:
    lo, hi = Path("/proc/sys/net/ipv4/ping_group_range").read_text().split()
    return int(lo) <= os.getgid() <= int(hi)


def test_detect_icmp_mode() -> None:
    assert detect_icmp_mode("off") is None
    if os.geteuid() == 0:
        assert detect_icmp_mode("auto") == "privileged"
    expected = "unprivileged" if ping_group_allows_root() else None
    assert detect_icmp_mode("unprivileged") == expected
    with pytest.raises(ValueError):
        detect_icmp_mode("loud")


@pytest.mark.skipif(os.geteuid() != 0, reason="raw ICMP sockets need root")
async def test_icmp_probe_privileged_loopback() -> None:
    before = open_fds()
    results = await asyncio.gather(
        icmp_probe("127.0.0.1", "127.0.0.1", max_wait=2),
        icmp_probe("127.0.0.2", "127.0.0.3", max_wait=2),
    )
    for r in results:
        assert r.ok and r.method == "icmp"
        assert r.rtt is not None and 0 < r.rtt < 2
    assert open_fds() == before


@pytest.mark.skipif(
    os.geteuid() != 0 or not has_ipv6_loopback(), reason="needs root and IPv6 loopback"
)
async def test_icmp_probe_ipv6_loopback() -> None:
    r = await icmp_probe("::1", "::1", max_wait=2)
    assert r.ok


@pytest.mark.skipif(ping_group_allows_root(), reason="ping sockets are allowed here")
async def test_icmp_probe_unprivileged_unavailable_raises() -> None:
    before = open_fds()
    with pytest.raises(IcmpUnavailableError):
        await icmp_probe("127.0.0.1", "127.0.0.1", privileged=False, max_wait=1)
    assert open_fds() == before


@pytest.mark.skipif(os.geteuid() != 0, reason="raw ICMP sockets need root")
async def test_icmp_probe_unassigned_source() -> None:
    r = await icmp_probe("198.51.100.77", "127.0.0.1", max_wait=1)
    assert not r.ok and r.error == errno.EADDRNOTAVAIL
