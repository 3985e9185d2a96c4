"""A synchronous, getapr-compatible front end: switch from the prototype by changing one import.

    from apr_async import compat as getapr

    getapr.init_getapr()
    for AF, SA, DA in getapr.get_addr_pairs("example.net", 443):
        ...
    getapr.status()["GUA_ok"]

The asynchronous probe service runs on a background event loop in a daemon thread, started
lazily on first use (by whichever thread comes first) and stopped at interpreter exit
(``atexit``: stop the service, stop and close the loop, join the thread); a call still waiting
then raises ``RuntimeError`` at once rather than holding the exit up.

Nothing here blocks for a probe round: the first ``get_addr_pairs`` answers at once from
RFC 6724 and the kernel's routes, and the background probes refine the order for later calls.
Return shapes are the prototype's: a list of
``(AF, SA, DA)`` tuples (``AddrPair`` named tuples, which also carry ``reason`` and ``rtt``),
``getaddrinfo`` entries like :func:`socket.getaddrinfo`, and ``status()`` a plain ``dict``
with ``GUA_ok, IPv4_ok, LLA_ok, NAT44, NPTv6, RFC1918, ULA_ok, ULA_present, def_gateway4,
def_gateway6``.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import ipaddress
import logging
import socket
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from apr_async.config import Config
from apr_async.core.ranking import AddrPair
from apr_async.errors import parse_host, validate_port
from apr_async.probe.default import ProbeService
from apr_async.resolve import addrinfo as _addrinfo
from apr_async.resolve import pairs as _pairs
from apr_async.resolve.explain import format_pairs

__all__ = [
    "get_addr_pairs",
    "getaddrinfo",
    "init_getapr",
    "shutdown",
    "status",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

#: How long a call waits for the background loop before giving up (DNS timeouts included).
CALL_TIMEOUT = 30.0
#: How long interpreter exit waits for the service to stop.
SHUTDOWN_TIMEOUT = 5.0
#: Destinations of one get_addr_pairs answer handed to the service for re-probing.
_NOTED_PER_CALL = 4


class _Background:
    """One daemon thread with its own event loop, hosting the probe service."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Held while the service starts: threads that arrive first at once share one service.
        # Separate from _lock, which call() needs meanwhile.
        self._start_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._service: ProbeService | None = None
        self._atexit = False

    def loop(self) -> asyncio.AbstractEventLoop:
        """The background loop, started on first use (takes milliseconds, not seconds)."""
        with self._lock:
            if self._loop is None or self._thread is None or not self._thread.is_alive():
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def run() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()

                thread = threading.Thread(target=run, name="apr_async-compat", daemon=True)
                thread.start()
                ready.wait()
                self._loop, self._thread = loop, thread
                if not self._atexit:
                    atexit.register(shutdown)
                    self._atexit = True
            return self._loop

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = CALL_TIMEOUT) -> T:
        """Run ``coro`` on the background loop and wait for its result."""
        loop = self.loop()
        if _running_loop_is(loop):
            coro.close()
            raise RuntimeError("apr_async.compat cannot be called from its own background loop")
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"apr_async.compat call did not finish in {timeout} s") from None
        except concurrent.futures.CancelledError:
            # shutdown() (or interpreter exit) cancelled what was still running on the loop.
            raise RuntimeError("apr_async.compat was shut down during this call") from None

    def service(self, config: Config | None = None) -> ProbeService:
        """The probe service, started on first use (its start reads the interfaces and
        schedules the first probe round; it does not wait for the network)."""
        with self._start_lock:
            with self._lock:
                service = self._service
            if service is not None and service.running:
                if config is None or config == service.config:
                    return service
                # A new configuration replaces the running service.
                self.call(service.aclose(), SHUTDOWN_TIMEOUT)

            async def start() -> ProbeService:
                # install=False: the process-wide default context stays the asyncio users'
                # own; this service's context is passed explicitly to every call below.
                settings = config if config is not None else Config.from_env()
                new = ProbeService(settings, install=False)
                await new.start()
                return new

            service = self.call(start())
            with self._lock:
                self._service = service
            return service

    def shutdown(self, timeout: float = SHUTDOWN_TIMEOUT) -> None:
        """Stop the service, stop and close the loop, join the thread. Idempotent."""
        with self._lock:
            loop, thread, service = self._loop, self._thread, self._service
            self._loop = self._thread = self._service = None
        if loop is None or thread is None:
            return
        if thread.is_alive():
            future = asyncio.run_coroutine_threadsafe(_stop_all(service), loop)
            try:
                future.result(timeout)
            except Exception as exc:  # exiting: report, never raise from atexit
                log.warning("apr_async.compat: stopping the probe service failed: %r", exc)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout)
        if not thread.is_alive():
            loop.close()


async def _stop_all(service: ProbeService | None) -> None:
    if service is not None:
        await service.aclose()
    # Whatever else is left on the loop (a call abandoned after its timeout).
    current = asyncio.current_task()
    others = [t for t in asyncio.all_tasks() if t is not current]
    for task in others:
        task.cancel()
    if others:
        await asyncio.gather(*others, return_exceptions=True)


def _running_loop_is(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


_background = _Background()


def init_getapr(printing: bool = False, *, config: Config | None = None) -> dict[str, Any]:
    """Start the background probe service (at once; probes run behind) and return ``status()``.

    ``config`` defaults to ``Config.from_env()`` (``APR_ASYNC_*`` variables); passing a
    different one restarts the service with it. With ``printing`` the status is printed, as
    the prototype did.
    """
    if config is not None and not isinstance(config, Config):
        raise TypeError(f"config must be an apr_async Config, not {type(config).__name__}")
    _background.service(config)
    result = status()
    if printing:
        for name, value in result.items():
            print(f"{name:>13}: {value}")
    return result


def status(wait: float = 0.0) -> dict[str, Any]:
    """The connectivity status as the prototype's dict (flags stay false until probes answer).

    ``wait``: seconds to wait at most for the service's first probe round.
    """
    if isinstance(wait, bool) or not isinstance(wait, int | float) or not 0 <= wait < 3600:
        raise ValueError("wait must be a number of seconds, 0 <= wait < 3600")
    service = _background.service()

    async def read() -> dict[str, Any]:
        if wait:
            await service.wait_ready(wait)
        return service.status().as_dict()

    return _background.call(read(), timeout=CALL_TIMEOUT + wait)


def get_addr_pairs(target: str, port: int | str | None, printing: bool = False) -> list[AddrPair]:
    """Ranked ``(AF, SA, DA)`` pairs for ``target``/``port``, best first.

    ``SA`` is ready for ``bind()``, ``DA`` for ``connect()``. With ``printing`` the pairs and
    the reason for each place are printed. Raises ``socket.gaierror`` when the name does not
    resolve and ``ValueError``/``TypeError`` for bad input (before any I/O).
    """
    # Checked in the caller's thread: bad input fails before anything starts.
    parse_host(target)
    validate_port(port)
    service = _background.service()

    async def ranked() -> list[AddrPair]:
        result = await _pairs.get_addr_pairs(target, port, context=service.context)
        _note(service, result)
        return result

    result = _background.call(ranked())
    if printing:
        print(format_pairs(result))
    return result


def getaddrinfo(  # noqa: PLR0917 - the stdlib's signature
    host: str | bytes | None,
    port: int | str | None,
    family: int = 0,
    type: int = 0,
    proto: int = 0,
    flags: int = 0,
) -> list[tuple[socket.AddressFamily, socket.SocketKind, int, str, tuple[Any, ...]]]:
    """Like :func:`socket.getaddrinfo`, with the entries in apr_async's ranked order."""
    service = _background.service()
    result = _background.call(
        _addrinfo.getaddrinfo(host, port, family, type, proto, flags, context=service.context)
    )
    return [(f, t, p, c, tuple(a)) for f, t, p, c, a in result]


def _note(service: ProbeService, result: list[AddrPair]) -> None:
    """Sync callers connect by themselves, so the service cannot see their attempts: have it
    probe the destinations they asked for (on their port) to refine the next ranking."""
    seen: set[tuple[Any, ...]] = set()
    for pair in result[:_NOTED_PER_CALL]:
        dest: tuple[Any, ...] = tuple(pair.destination)
        if dest in seen or not dest[1]:
            continue
        seen.add(dest)
        ip = ipaddress.ip_address(str(dest[0]).split("%", 1)[0])
        scope = int(dest[3]) if len(dest) >= 4 and dest[3] else None
        service.note_destination(ip, int(dest[1]), ifindex=scope)


def shutdown() -> None:
    """Stop the background service and loop now (also done automatically at exit)."""
    _background.shutdown()
