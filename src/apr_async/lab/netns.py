"""Network-namespace plumbing: enter a namespace from a thread, run code and commands there.

Python 3.11 has no ``os.setns``, so ``setns(2)`` is called through ``ctypes``. Namespace
membership is per *thread*: a thread that entered a namespace creates every socket, netlink
query and ``/proc/sys/net`` write inside it, while the rest of the process stays where it was.
A socket keeps the namespace it was created in, so a socket made in a worker thread can be
used from the main event loop afterwards.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import ctypes.util
import os
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

__all__ = [
    "NETNS_DIR",
    "ExecResult",
    "LoopThread",
    "NetnsError",
    "call_in_netns",
    "enter_netns",
    "kill_process_groups",
    "lab_unavailable_reason",
    "run_coroutine_in_netns",
    "run_ip",
    "run_ip_sync",
    "socket_in_netns",
    "wait_uncancellable",
    "write_sysctls",
]

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/run/netns")

_libc: ctypes.CDLL | None = None


class NetnsError(RuntimeError):
    """A namespace operation or a lab command failed."""


def _get_libc() -> ctypes.CDLL:
    global _libc  # noqa: PLW0603 - loaded once, lazily, so importing never touches libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    return _libc


def enter_netns(name: str) -> None:
    """Move the *calling thread* into the named network namespace (``/run/netns/<name>``).

    Only call this from a thread created for the purpose: the thread never comes back.
    """
    fd = os.open(NETNS_DIR / name, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _get_libc().setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({name}): {os.strerror(err)}")
    finally:
        os.close(fd)


def call_in_netns(name: str, fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn(*args)`` synchronously in a short-lived thread inside namespace ``name``."""
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            enter_netns(name)
            result.append(fn(*args))
        except BaseException as exc:  # re-raised in the caller's thread
            error.append(exc)

    thread = threading.Thread(target=target, name=f"netns-call-{name}", daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def socket_in_netns(
    name: str, family: int = socket.AF_INET6, type: int = socket.SOCK_STREAM, proto: int = 0
) -> socket.socket:
    """Create a socket that lives in namespace ``name`` (usable from any thread afterwards)."""
    return call_in_netns(name, socket.socket, family, type, proto)


def write_sysctls(name: str, values: dict[str, str]) -> None:
    """Write ``net.*`` sysctls of namespace ``name`` (keys in dotted form) without a subprocess.

    ``/proc/sys/net`` resolves against the opening thread's namespace, so a thread that entered
    ``name`` writes that namespace's values; this is much faster than ``ip netns exec sysctl``.
    """

    def write() -> None:
        for key, value in values.items():
            path = Path("/proc/sys", *key.split("."))
            path.write_text(value)

    call_in_netns(name, write)


@dataclass(frozen=True)
class ExecResult:
    """Outcome of a command run inside a namespace."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    def check(self) -> ExecResult:
        """Raise :class:`NetnsError` when the command failed; return ``self`` otherwise."""
        if self.returncode != 0:
            raise NetnsError(
                f"{' '.join(self.argv)} exited {self.returncode}: {self.stderr.strip()}"
            )
        return self


async def run_ip(
    args: Sequence[str], stdin: str | None = None, *, check: bool = True
) -> ExecResult:
    """Run ``ip ARGS`` (or any command when ``args[0]`` is absolute) and collect its output.

    The child is killed and reaped if the caller is cancelled, so nothing is left behind.
    """
    argv = tuple(args) if args[0].startswith("/") else (_ip_binary(), *args)
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        out, err = await proc.communicate(stdin.encode() if stdin is not None else None)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        # Reaping is quick after SIGKILL; shield it so a second cancel cannot leak a zombie.
        await asyncio.shield(proc.wait())
        raise
    result = ExecResult(argv, proc.returncode or 0, out.decode(errors="replace"),
                        err.decode(errors="replace"))
    return result.check() if check else result


def run_ip_sync(args: Sequence[str], stdin: str | None = None) -> ExecResult:
    """Blocking twin of :func:`run_ip`, used by teardown (which must survive cancellation)."""
    argv = tuple(args) if args[0].startswith("/") else (_ip_binary(), *args)
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    return ExecResult(argv, proc.returncode, proc.stdout, proc.stderr)


def _ip_binary() -> str:
    return shutil.which("ip") or "/usr/sbin/ip"


async def run_coroutine_in_netns(
    name: str,
    coro_fn: Callable[..., Coroutine[Any, Any, T]],
    *args: Any,
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
    on_thread: Callable[[threading.Thread, Callable[[], None]], None] | None = None,
) -> T:
    """Await ``coro_fn(*args)`` run on a fresh event loop in a fresh thread inside ``name``.

    Cancelling the caller cancels the inner task and waits for the thread to finish, so no
    thread, loop or socket outlives the call. ``on_thread(thread, cancel)`` is told about the
    worker; ``cancel()`` (callable from any thread, at any time) cancels the inner task, which
    is how an owner shuts down calls it did not start itself.
    """
    outer = asyncio.get_running_loop()
    done: asyncio.Future[T] = outer.create_future()
    cancel_requested = threading.Event()
    inner: dict[str, Any] = {}

    def cancel() -> None:
        # Set the flag first: a worker that has not made its task yet checks it right after.
        cancel_requested.set()
        loop, task = inner.get("loop"), inner.get("task")
        if loop is not None and task is not None:
            with contextlib.suppress(RuntimeError):  # the inner loop is already closed
                loop.call_soon_threadsafe(task.cancel)

    def settle(fut: asyncio.Future[T], value: T | None, exc: BaseException | None) -> None:
        if fut.done():
            return
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(value)  # type: ignore[arg-type]

    def target() -> None:
        value: T | None = None
        exc: BaseException | None = None
        try:
            enter_netns(name)
            loop = loop_factory() if loop_factory is not None else asyncio.new_event_loop()
            try:
                task = loop.create_task(coro_fn(*args))
                inner["loop"], inner["task"] = loop, task
                if cancel_requested.is_set():
                    task.cancel()
                value = loop.run_until_complete(task)
            finally:
                _close_loop(loop)
        except BaseException as err:
            exc = err
        finally:
            with contextlib.suppress(RuntimeError):  # outer loop closed: nobody is waiting
                outer.call_soon_threadsafe(settle, done, value, exc)

    thread = threading.Thread(target=target, name=f"netns-run-{name}", daemon=True)
    thread.start()
    if on_thread is not None:
        on_thread(thread, cancel)
    try:
        return await asyncio.shield(done)
    except asyncio.CancelledError:
        if not done.done():
            cancel()
            # Wait for the worker even if cancelled again: leaking it would leak its sockets.
            with contextlib.suppress(BaseException):
                await wait_uncancellable(done)
        raise
    finally:
        if done.done():
            # The worker settles ``done`` as its very last step, so this join is immediate.
            thread.join()


async def wait_uncancellable(fut: Awaitable[T]) -> T:
    """Await ``fut`` to the end even if the caller is cancelled meanwhile (those cancellations
    are absorbed: use it only for short clean-up work that must not be cut in half)."""
    task = asyncio.ensure_future(fut)
    while not task.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(task)
    return task.result()


def _close_loop(loop: asyncio.AbstractEventLoop) -> None:
    try:
        # Cancelling a task can start others (a server accepting, a transport closing), so
        # repeat until nothing is left, then give pending close callbacks a last turn.
        for _ in range(20):
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            if not pending:
                break
            for t in pending:
                t.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        for _ in range(3):
            loop.run_until_complete(asyncio.sleep(0))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        loop.close()


class LoopThread:
    """A daemon thread running its own event loop inside a namespace, for lab services.

    Lab services (DNS server, delay line, echo servers) run here rather than on the caller's
    loop so they keep answering even when a test blocks its own loop with a plain socket call.
    """

    def __init__(self, netns: str, name: str) -> None:
        self.netns = netns
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)

    @property
    def thread(self) -> threading.Thread:
        """The underlying thread (exposed for leak checks)."""
        return self._thread

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The service loop (only valid between :meth:`start` and :meth:`stop`)."""
        if self._loop is None:
            raise NetnsError("loop thread is not running")
        return self._loop

    def start(self) -> None:
        """Start the thread and wait until its loop runs inside the namespace."""
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._thread.join()
            raise self._error

    def _main(self) -> None:
        try:
            enter_netns(self.netns)
            loop = asyncio.new_event_loop()
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._loop = loop
        loop.call_soon(self._ready.set)
        try:
            loop.run_forever()
        finally:
            _close_loop(loop)

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` on the service loop; return a thread-safe future."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the service loop and await its result from the caller's loop."""
        return await asyncio.wrap_future(self.submit(coro))

    def call(self, fn: Callable[..., T], *args: Any, timeout: float = 10.0) -> T:
        """Run a plain callable on the service loop and block until it returns.

        Raises :class:`TimeoutError` after ``timeout`` seconds: a wedged service loop must
        not hang the teardown that is trying to stop it.
        """

        async def wrapper() -> T:
            return fn(*args)

        return self.submit(wrapper()).result(timeout)

    def stop(self) -> None:
        """Cancel everything on the loop, close it and join the thread (idempotent)."""
        if self._loop is not None and self._thread.is_alive():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread.ident is not None:
            self._thread.join()


_CAPABILITIES = {"CAP_NET_ADMIN": 12, "CAP_SYS_ADMIN": 21}


def _missing_capabilities() -> list[str]:
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return []
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            effective = int(line.split()[1], 16)
            return [name for name, bit in _CAPABILITIES.items() if not effective >> bit & 1]
    return []


def lab_unavailable_reason() -> str | None:
    """Why a lab cannot be built here (``None`` when it can): root, ``ip``, netns support."""
    if not hasattr(os, "geteuid"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "building a lab needs root (network namespaces, veth, nftables)"
    missing = _missing_capabilities()
    if missing:
        return f"running as root but without {' and '.join(missing)} (a restricted container?)"
    if shutil.which("ip") is None and not Path("/usr/sbin/ip").exists():
        return "iproute2 ('ip') is not installed"
    if not Path("/proc/self/ns/net").exists():
        return "this kernel has no network namespace support"
    return None


def kill_process_groups(procs: Sequence[asyncio.subprocess.Process]) -> None:
    """SIGKILL the process group of each of *procs* still running."""
    for proc in procs:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
