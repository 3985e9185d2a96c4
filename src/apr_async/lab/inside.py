"""Running code and programs inside a lab host: coroutines, sockets, commands, processes.

:class:`LabInside` is the part of :class:`~apr_async.lab.lab.Lab` that puts work into a
host's namespace; the lab itself owns the life cycle (what is running, what close() ends).
"""

from __future__ import annotations

import asyncio
import functools
import socket
import subprocess
import threading
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar, get_args

from apr_async.lab.netns import (
    ExecResult,
    NetnsError,
    run_coroutine_in_netns,
    run_ip,
    socket_in_netns,
)
from apr_async.tools import check_declared, resolve_tool

__all__ = ["HostName", "LabInside", "check_host"]

T = TypeVar("T")
HostName = Literal["client", "router", "server"]
_HOSTS: tuple[str, ...] = get_args(HostName)


def check_host(host: str) -> HostName:
    """``host`` if it names a lab host, else :class:`ValueError` (before any I/O)."""
    if host not in _HOSTS:
        raise ValueError(f"unknown lab host {host!r}; expected one of {', '.join(_HOSTS)}")
    return host  # type: ignore[return-value]


class LabInside:
    """Work inside a lab host's namespace; mixed into :class:`~apr_async.lab.lab.Lab`."""

    _state: Literal["new", "running", "closed"]
    _procs: list[asyncio.subprocess.Process]
    #: run_in workers and how to cancel each (close() ends calls it did not start)
    _run_threads: dict[threading.Thread, Callable[[], None]]

    def netns(self, host: HostName) -> str:  # pragma: no cover - Lab defines it
        """Namespace name of ``host``."""
        raise NotImplementedError

    def _require_running(self) -> None:
        if self._state != "running":
            raise RuntimeError(f"lab is {self._state}, not running")

    async def run_in(
        self,
        host: HostName,
        coro_fn: Callable[..., Coroutine[Any, Any, T]],
        *args: Any,
        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
        **kwargs: Any,
    ) -> T:
        """Await ``coro_fn(*args, **kwargs)`` run on a fresh event loop in a thread inside ``host``.

        Every socket, resolver and netlink query it opens lives in that namespace.
        Cancelling the caller cancels the coroutine and waits for the thread to end.
        """
        ns = self.netns(host)
        if not callable(coro_fn):
            raise TypeError("coro_fn must be a coroutine function")
        self._require_running()

        def track(thread: threading.Thread, cancel: Callable[[], None]) -> None:
            self._run_threads[thread] = cancel

        try:
            return await run_coroutine_in_netns(
                ns, functools.partial(coro_fn, *args, **kwargs), loop_factory=loop_factory,
                on_thread=track)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if self._state == "closed" and current is not None and not current.cancelling():
                # Nobody cancelled the caller: the lab was closed under the call.
                raise RuntimeError(f"lab closed while {coro_fn!r} ran in {host}") from None
            raise
        finally:
            self._run_threads = {t: c for t, c in self._run_threads.items() if t.is_alive()}

    def socket(
        self,
        host: HostName,
        family: int = socket.AF_INET6,
        type: int = socket.SOCK_STREAM,
        proto: int = 0,
    ) -> socket.socket:
        """A new socket living in ``host``'s namespace, usable from the caller's loop."""
        ns = self.netns(host)
        self._require_running()
        return socket_in_netns(ns, family, type, proto)

    async def exec(
        self, host: HostName, *argv: str, input: str | None = None, max_time: float = 30.0,
        check: bool = False,
    ) -> ExecResult:
        """Run a command inside ``host`` (``ip netns exec``) and collect its output.

        The program must be declared in :data:`apr_async.tools.DEBIAN_TOOLS` (a Python
        interpreter needs not be): else :class:`~apr_async.tools.ToolNotDeclaredError`.
        """
        if not argv:
            raise ValueError("no command given")
        check_declared(argv)
        ns = self.netns(host)
        self._require_running()
        try:
            result = await asyncio.wait_for(
                run_ip(["netns", "exec", ns, *argv], input, check=False), max_time)
        except TimeoutError:
            raise NetnsError(f"{' '.join(argv)} in {host} timed out after {max_time}s") from None
        return result.check() if check else result

    async def popen(self, host: HostName, *argv: str, **kwargs: Any) -> asyncio.subprocess.Process:
        """Start a long-running command inside ``host``; it is killed when the lab closes.

        Keyword arguments go to :func:`asyncio.create_subprocess_exec` (e.g. ``stdout``). The
        program must be declared, as for :meth:`exec`.
        """
        if not argv:
            raise ValueError("no command given")
        check_declared(argv)
        ns = self.netns(host)
        self._require_running()
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        proc = await asyncio.create_subprocess_exec(
            resolve_tool("ip"), "netns", "exec", ns, *argv, start_new_session=True, **kwargs)
        self._procs.append(proc)
        return proc
