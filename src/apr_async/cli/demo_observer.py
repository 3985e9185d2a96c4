"""Plain ``asyncio.open_connection``, unchanged, with its attempts noted for the demo.

The demo sets it next to apr_async: what an unmodified asyncio program does on the same
broken network, attempt by attempt, in :class:`~apr_async.cli.timeline.Timeline`'s format.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import errno as errno_codes
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from apr_async.cli.common import family_name, sockaddr_text
from apr_async.resolve.addrinfo import system_order
from apr_async.resolve.resolver import Resolver

__all__ = ["HE_DELAY", "PLAIN_CAP", "AsyncioObserver", "oserror_text"]

#: Seconds plain asyncio may take before the demo gives up on it (it would wait for the
#: kernel's SYN retries, about two minutes, on a blackhole).
PLAIN_CAP = 2.0
#: The ``happy_eyeballs_delay`` of the asyncio reference client (RFC 8305's 250 ms).
HE_DELAY = 0.25


_observer: contextvars.ContextVar[AsyncioObserver | None] = contextvars.ContextVar(
    "apr_async_demo_observer", default=None)


class AsyncioObserver:
    """Runs ``asyncio.open_connection`` unchanged while noting its attempts.

    While :meth:`installed`, the loop's ``getaddrinfo`` answers from ``resolver`` (the lab
    DNS, never the host's) in the system's order, and the loop's ``sock_connect`` (what
    asyncio's own connect awaits for every attempt) notes each attempt in :class:`Timeline`'s
    format. Only calls made under :meth:`open_connection` are observed (a context variable,
    inherited by the tasks of asyncio's Happy Eyeballs race); the probe service's own probes
    on the same loop pass through untouched.
    """

    def __init__(self, resolver: Resolver) -> None:
        self._resolver = resolver
        self.t0 = time.monotonic()
        self.events: list[dict[str, Any]] = []

    def elapsed(self) -> float:
        """Seconds since this observer was made."""
        return time.monotonic() - self.t0

    async def open_connection(
        self, host: str, port: int, **kwargs: Any
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """``asyncio.open_connection(host, port, **kwargs)``, observed."""
        self.t0 = time.monotonic()
        _observer.set(self)  # this task's context only
        return await asyncio.open_connection(host, port, **kwargs)

    async def _getaddrinfo(
        self, host: Any, port: Any, *, family: int = 0, type: int = 0, proto: int = 0,
        flags: int = 0,
    ) -> list[tuple[Any, ...]]:
        found = await self._resolver.resolve(host, family)
        ips = system_order([ip for ip, _zone in found])
        for fam in (socket.AF_INET6, socket.AF_INET):
            count = sum(1 for ip in ips if (ip.version == 6) == (fam == socket.AF_INET6))
            if count:
                self.events.append(
                    {"t": self.elapsed(), "kind": "answer", "family": family_name(fam),
                     "addresses": count})
        return [
            (socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "",
             (str(ip), int(port), 0, 0))
            if ip.version == 6
            else (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (str(ip), int(port)))
            for ip in ips
        ]

    async def _sock_connect(
        self, original: Callable[[socket.socket, Any], Awaitable[None]], sock: socket.socket,
        address: Any,
    ) -> None:
        start = self.elapsed()
        outcome, ok, rtt = "failed", False, None
        try:
            await original(sock, address)
            outcome, ok, rtt = "connected", True, self.elapsed() - start
        except asyncio.CancelledError:
            outcome = "no answer, abandoned"
            raise
        except OSError as exc:
            outcome = oserror_text(exc)
            raise
        finally:
            self.events.append(
                {"t": self.elapsed(), "kind": "attempt", "family": family_name(sock.family),
                 "source": _sockname(sock), "destination": sockaddr_text(address),
                 "ok": ok, "outcome": outcome, "rtt": rtt})

    @staticmethod
    @contextlib.contextmanager
    def installed(loop: asyncio.AbstractEventLoop) -> Iterator[None]:
        """Route ``loop``'s getaddrinfo and sock_connect through the observers (``with``)."""
        getaddrinfo, sock_connect = loop.getaddrinfo, loop.sock_connect

        async def observed_getaddrinfo(host: Any, port: Any, **kwargs: Any) -> Any:
            observer = _observer.get()
            if observer is None:
                return await getaddrinfo(host, port, **kwargs)
            return await observer._getaddrinfo(host, port, **kwargs)

        async def observed_sock_connect(sock: socket.socket, address: Any) -> None:
            observer = _observer.get()
            if observer is None:
                return await sock_connect(sock, address)
            return await observer._sock_connect(sock_connect, sock, address)

        try:
            attrs = vars(loop)
        except TypeError:  # a loop without instance attributes (uvloop): nothing observed
            yield
            return
        attrs["getaddrinfo"] = observed_getaddrinfo
        attrs["sock_connect"] = observed_sock_connect
        try:
            yield
        finally:
            attrs.pop("getaddrinfo", None)
            attrs.pop("sock_connect", None)


def _sockname(sock: socket.socket) -> str:
    try:
        return sockaddr_text(sock.getsockname(), port=False)
    except OSError:
        return "-"


def oserror_text(exc: OSError) -> str:
    """A connect error in a word or two (``refused``) for the demo's tables."""
    if exc.errno == errno_codes.ECONNREFUSED:
        return "refused"
    return (exc.strerror or str(exc)).lower()
