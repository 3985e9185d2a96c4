"""The fast path (one memoised pair, default arguments) behaves as the general path does:
same source binding, same recording, same errors, nothing left open on failure or
cancellation, and the options cache keeps no context alive."""

from __future__ import annotations

import asyncio
import errno
import gc
import ipaddress
import os
import socket
import weakref
from collections.abc import AsyncIterator
from typing import Any

import pytest

from apr_async.connect import api, fast, general
from apr_async.connect.errors import AllAttemptsFailedError
from apr_async.connect.recorders import ContextRecorder
from apr_async.resolve.pairs import PairContext


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
async def server() -> AsyncIterator[int]:
    srv = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    try:
        yield int(srv.sockets[0].getsockname()[1])
    finally:
        srv.close()
        await srv.wait_closed()


def forbid_general_path(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make the general path record that it ran."""
    used: list[str] = []
    original = general.race_sockets

    async def spy(*args: Any, **kwargs: Any) -> socket.socket:
        used.append("general")
        return await original(*args, **kwargs)

    monkeypatch.setattr(general, "race_sockets", spy)
    return used


async def test_repeated_numeric_connections_take_the_fast_path(
    server: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = PairContext()
    used = forbid_general_path(monkeypatch)
    _, writer = await api.open_connection("127.0.0.1", server, context=ctx)
    writer.close()
    assert used == ["general"]  # the first call ranks (and fills the memo)
    for _ in range(5):
        reader, writer = await api.open_connection("127.0.0.1", server, context=ctx)
        # bound to the pair's source, as every attempt is
        assert writer.get_extra_info("sockname")[0] == "127.0.0.1"
        assert writer.get_extra_info("peername") == ("127.0.0.1", server)
        assert isinstance(reader, asyncio.StreamReader)
        writer.close()
    transport, _ = await api.create_connection(asyncio.Protocol, "127.0.0.1", server, context=ctx)
    transport.close()
    assert used == ["general"]
    # A success is in the tables by the time the caller has its connection.
    loopback = ipaddress.ip_address("127.0.0.1")
    assert ctx.latency.estimate(loopback, loopback) is not None


async def test_a_socket_module_family_takes_the_fast_path(
    server: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # family=socket.AF_INET is an AddressFamily (an IntEnum), the usual way to pass it
    ctx = PairContext()
    used = forbid_general_path(monkeypatch)
    for _ in range(3):
        _, writer = await api.open_connection("127.0.0.1", server, family=socket.AF_INET,
                                              context=ctx)
        writer.close()
    assert used == ["general"]


async def test_other_arguments_take_the_general_path(
    server: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = PairContext()
    _, writer = await api.open_connection("127.0.0.1", server, context=ctx)
    writer.close()
    used = forbid_general_path(monkeypatch)
    _, writer = await api.open_connection("127.0.0.1", server, context=ctx, timeout=5)
    writer.close()
    _, writer = await api.open_connection(
        "127.0.0.1", server, context=ctx, happy_eyeballs_delay=0.1
    )
    writer.close()
    assert used == ["general", "general"]


async def test_fast_path_errors_are_the_general_paths() -> None:
    ctx = PairContext()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    fds = open_fds()
    shapes = []
    for _ in range(3):  # the first through the general path, then the fast path
        with pytest.raises(AllAttemptsFailedError) as caught:
            await api.open_connection("127.0.0.1", port, context=ctx)
        shapes.append((type(caught.value), caught.value.errno, str(caught.value)))
        assert [e.errno for e in caught.value.exceptions] == [errno.ECONNREFUSED]
    assert shapes[0] == shapes[1] == shapes[2]
    assert open_fds() == fds


async def test_bad_arguments_are_still_checked() -> None:
    ctx = PairContext()
    with pytest.raises(TypeError):
        await api.open_connection("127.0.0.1", True, context=ctx)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="port"):
        await api.open_connection("127.0.0.1", 70000, context=ctx)
    with pytest.raises(TypeError, match="context"):
        await api.open_connection("127.0.0.1", 80, context=object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="protocol_factory"):
        await api.create_connection(None, "127.0.0.1", 80, context=ctx)  # type: ignore[arg-type]


async def test_cancelled_fast_connections_leave_nothing_open(server: int) -> None:
    ctx = PairContext()
    _, writer = await api.open_connection("127.0.0.1", server, context=ctx)
    writer.close()
    await asyncio.sleep(0)
    fds = open_fds()
    for spins in range(6):
        task = asyncio.ensure_future(api.open_connection("127.0.0.1", server, context=ctx))
        for _ in range(spins):
            await asyncio.sleep(0)
        task.cancel()
        try:
            _, writer = await task
        except asyncio.CancelledError:
            continue
        writer.close()
    for _ in range(5):
        await asyncio.sleep(0)
    gc.collect()
    assert open_fds() == fds


def test_options_cache_keeps_no_context_alive() -> None:
    ctx = PairContext()
    ref = weakref.ref(ctx)
    opts = fast.fast_options("127.0.0.1", 80, 0, None, ctx, default_service=lambda *_: None)
    assert opts is not None and opts.context is ctx
    again = fast.fast_options("127.0.0.1", 80, 0, None, ctx, default_service=lambda *_: None)
    assert again is opts  # reused, not re-checked
    assert isinstance(opts.recorder, ContextRecorder)
    del ctx, opts, again
    gc.collect()
    assert ref() is None


def test_options_cache_follows_the_service() -> None:
    class Service:
        def __init__(self) -> None:
            self.context = PairContext()

        def record_attempt(self, *args: object) -> None:
            pass

    a, b = Service(), Service()
    opts_a = fast.fast_options("127.0.0.1", 80, 0, None, None, default_service=lambda *_: a)
    opts_b = fast.fast_options("127.0.0.1", 80, 0, None, None, default_service=lambda *_: b)
    assert opts_a is not None and opts_b is not None
    assert opts_a.context is a.context and opts_b.context is b.context


def test_repeated_successes_record_what_the_checked_path_records() -> None:
    # ContextRecorder skips record_outcome's checks for the pair and port it accepted last;
    # the tables must end up as those fed every sample through record_outcome.
    from apr_async.core.outcomes import record_outcome
    from apr_async.core.ranking import AddrPair

    pair = AddrPair(socket.AF_INET, ("127.0.0.1", 0), ("127.0.0.2", 80))
    other = AddrPair(socket.AF_INET, ("127.0.0.1", 0), ("127.0.0.3", 80))
    src, dst, dst3 = (ipaddress.ip_address(a) for a in ("127.0.0.1", "127.0.0.2", "127.0.0.3"))
    fast_ctx, plain_ctx = PairContext(clock=lambda: 5.0), PairContext(clock=lambda: 5.0)
    recorder = ContextRecorder(fast_ctx)
    events: list[tuple[AddrPair, int, bool, float | None, int | None]] = [
        (pair, 80, True, 0.001, None),
        (pair, 80, True, 0.002, None),
        (pair, 443, True, 0.004, None),  # another port: checked again
        (pair, 80, False, None, errno.ETIMEDOUT),
        (pair, 80, True, 0.003, None),  # clears the failure
        (pair, 80, True, -1.0, None),  # dropped, as record_outcome drops it
        (pair, 80, True, None, None),
        (other, 80, True, 0.005, None),
        (pair, 80, True, 0.006, None),
    ]
    for p, port, ok, rtt, number in events:
        recorder.record_attempt(p, port, ok, rtt, number)
        record_outcome(plain_ctx.latency, plain_ctx.failures, src, dst if p is pair else dst3,
                       port, ok=ok, rtt=rtt, errno=number, now=5.0)
    for d in (dst, dst3):
        assert fast_ctx.latency.estimate(src, d) == plain_ctx.latency.estimate(src, d)
    assert len(fast_ctx.failures) == len(plain_ctx.failures) == 0
    recorder.record_attempt(pair, 80, False, None, errno.ECONNREFUSED)
    assert fast_ctx.failures.failure(src, dst, 80, now=5.0) is not None
