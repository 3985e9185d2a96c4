"""10 000 failed or cancelled connection attempts leave no fd, task or warning behind.

Refusals come from closed loopback ports; cancellations hit attempts stuck on loopback
"blackholes" (a listener with a full zero-length accept queue drops further SYNs) and
resolutions that have not answered yet. Calls run concurrently in batches to stay fast.
"""

from __future__ import annotations

import asyncio
import gc
import os
import random
import socket
import warnings
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from apr_async.connect.api import (
    ConnectPair,
    DirectPair,
    PairSource,
    connect_socket,
    open_connection,
)
from apr_async.connect.errors import AllAttemptsFailedError
from apr_async.resolve.pairs import PairContext

BATCH = 250


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def closed_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def direct(host: str, port: int) -> ConnectPair:
    if ":" in host:
        return DirectPair(socket.AF_INET6, ("::1", 0, 0, 0), (host, port, 0, 0))
    return DirectPair(socket.AF_INET, ("127.0.0.1", 0), (host, port))


def source_of(*pairs: ConnectPair, delay: float = 0.0) -> PairSource:
    async def source(
        host: str, port: int, family: int
    ) -> AsyncIterator[tuple[int, Sequence[ConnectPair]]]:
        if delay:
            await asyncio.sleep(delay)
        yield socket.AF_INET6, [p for p in pairs if p.family == socket.AF_INET6]
        yield socket.AF_INET, [p for p in pairs if p.family == socket.AF_INET]

    return source


class Blackhole:
    def __init__(self, host: str) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.listener = socket.socket(family)
        self.listener.bind((host, 0))
        self.listener.listen(0)
        self.port = int(self.listener.getsockname()[1])
        self.filler = socket.create_connection((host, self.port))

    def close(self) -> None:
        self.filler.close()
        self.listener.close()


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0.01)


@pytest.mark.timeout(300)
async def test_ten_thousand_failed_or_cancelled_attempts_leak_nothing() -> None:
    rng = random.Random(5)
    context = PairContext()  # keep the default context's failure table clean
    holes = [Blackhole("::1"), Blackhole("127.0.0.1")]
    refused = source_of(
        direct("::1", closed_port("::1")), direct("127.0.0.1", closed_port("127.0.0.1"))
    )
    stuck = source_of(direct("::1", holes[0].port), direct("127.0.0.1", holes[1].port))
    slow_dns = source_of(direct("::1", holes[0].port), delay=0.02)
    try:
        # Earlier tests' garbage (an unclosed socket awaiting collection) must not be in the
        # baseline: the collection at the end would close it and the count would drop.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()
        await settle()
        fds, tasks = open_fds(), len(asyncio.all_tasks())
        attempts = 0

        async def refuse() -> int:
            try:
                await connect_socket("h", 1, pair_source=refused, context=context)
            except AllAttemptsFailedError as exc:
                assert isinstance(exc, ConnectionRefusedError)
                return len(exc.attempts)
            raise AssertionError("connected to a closed port")

        # 8 000 refused attempts (two pairs per call).
        for _ in range(4000 // BATCH):
            results = await asyncio.gather(*(refuse() for _ in range(BATCH)))
            attempts += sum(results)

        # 2 000 cancellations at varied moments: before resolution answers, during the
        # first attempt, after the second attempt started (10 ms Happy Eyeballs delay).
        async def cancel_one(kind: int, after: float) -> None:
            kwargs: dict[str, Any] = {"context": context, "happy_eyeballs_delay": 0.01}
            source = slow_dns if kind == 0 else stuck
            if kind == 2:
                coro: Any = open_connection("h", 1, pair_source=source, **kwargs)
            else:
                coro = connect_socket("h", 1, pair_source=source, **kwargs)
            task = asyncio.ensure_future(coro)
            await asyncio.sleep(after)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        for _ in range(2000 // BATCH):
            await asyncio.gather(
                *(cancel_one(rng.randrange(3), rng.uniform(0.0, 0.03)) for _ in range(BATCH))
            )
            attempts += BATCH

        assert attempts >= 10_000
        await settle()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            gc.collect()
        assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []
        assert open_fds() == fds
        assert len(asyncio.all_tasks()) == tasks
    finally:
        for hole in holes:
            hole.close()


class Acceptor:
    """A loopback server that accepts and closes: every connect() succeeds at once."""

    def __init__(self, server: asyncio.Server) -> None:
        self.server = server
        self.port = int(server.sockets[0].getsockname()[1])

    @classmethod
    async def start(cls, host: str) -> Acceptor:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.close()

        return cls(await asyncio.start_server(handle, host, 0))

    async def close(self) -> None:
        self.server.close()
        await self.server.wait_closed()


async def test_single_pair_timed_out_or_cancelled_at_any_moment_leaks_nothing() -> None:
    # A literal host has one pair and no race: the connected socket must not be dropped when
    # the timeout (or the caller) cancels between the kernel's answer and the caller's wake-up,
    # nor while the transport and streams are built on it.
    rng = random.Random(7)
    context = PairContext()
    servers = [await Acceptor.start("127.0.0.1"), await Acceptor.start("::1")]
    port4, port6 = servers[0].port, servers[1].port
    try:
        await settle()
        fds, tasks = open_fds(), len(asyncio.all_tasks())
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")

            async def one(i: int) -> None:
                server = servers[i % 2]
                host = "127.0.0.1" if server is servers[0] else "::1"
                kind = rng.randrange(3)
                try:
                    if i % 4 < 2:  # the timeout fires at varied tiny delays
                        timeout = (i % 20 + 1) * 5e-5
                        if kind == 0:
                            sock = await connect_socket(
                                host, server.port, timeout=timeout, context=context
                            )
                            sock.close()
                            return
                        _, w = await open_connection(
                            host, server.port, timeout=timeout, context=context
                        )
                        w.close()
                        return
                    # The caller cancels after a random number of loop turns, on the one-pair
                    # path or (one call in two) in a race of two pairs that both connect.
                    kwargs: dict[str, Any] = {"context": context}
                    if i % 8 >= 6:
                        both = (direct("::1", port6), direct("127.0.0.1", port4))
                        kwargs.update(pair_source=source_of(*both), happy_eyeballs_delay=0)
                    coro: Any = (
                        connect_socket(host, server.port, **kwargs)
                        if kind == 0
                        else open_connection(host, server.port, **kwargs)
                    )
                    task = asyncio.ensure_future(coro)
                    for _ in range(rng.randrange(8)):
                        await asyncio.sleep(0)
                    task.cancel()
                    try:
                        result = await task
                    except asyncio.CancelledError:
                        return
                    if isinstance(result, socket.socket):
                        result.close()
                    else:
                        result[1].close()
                except TimeoutError:
                    pass

            for start in range(0, 2000, 100):
                await asyncio.gather(*(one(i) for i in range(start, start + 100)))
            await settle()
            gc.collect()
        assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []
        assert open_fds() == fds
        assert len(asyncio.all_tasks()) == tasks
    finally:
        for server in servers:
            await server.close()
