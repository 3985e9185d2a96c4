"""Network-change notification: netlink events on Linux, polling elsewhere.

:class:`NetWatcher` calls a callback when the network *may* have changed: an interface went up
or down, an address or a route was added or removed. It does not decide whether anything that
matters changed (an IPv6 router advertisement refreshing a lifetime also emits an address
event); the caller compares its own snapshot, which keeps this module small and the
comparison in one place.

On Linux it subscribes a non-blocking ``NETLINK_ROUTE`` socket to RTMGRP_LINK,
RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR, RTMGRP_IPV4_ROUTE and RTMGRP_IPV6_ROUTE and lets the
event loop watch it (``add_reader``): no thread, no polling. Bursts (a link going down removes
many routes) are debounced into one callback. Elsewhere, or if the socket cannot be opened, a
task calls the callback every ``poll_interval`` seconds.

The socket is opened in the calling thread's network namespace, like every socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import struct
import sys
from collections.abc import Callable
from typing import Literal

__all__ = ["NetWatcher", "NetwatchBackend"]

log = logging.getLogger(__name__)

NetwatchBackend = Literal["netlink", "poll", "off"]

_RTMGRP_LINK = 0x1
_RTMGRP_IPV4_IFADDR = 0x10
_RTMGRP_IPV4_ROUTE = 0x40
_RTMGRP_IPV6_IFADDR = 0x100
_RTMGRP_IPV6_ROUTE = 0x400
_GROUPS = (
    _RTMGRP_LINK
    | _RTMGRP_IPV4_IFADDR
    | _RTMGRP_IPV4_ROUTE
    | _RTMGRP_IPV6_IFADDR
    | _RTMGRP_IPV6_ROUTE
)
# RTM_NEWLINK, DELLINK, NEWADDR, DELADDR, NEWROUTE, DELROUTE
_RELEVANT = frozenset({16, 17, 20, 21, 24, 25})
_NLMSG_HDR = struct.Struct("=LHHLL")
_NETLINK_ROUTE = 0


class NetWatcher:
    """Calls ``callback()`` (on the event loop) when addresses, routes or links may have changed.

    ``mode`` is ``auto`` (netlink on Linux, else polling), ``netlink``, ``poll`` or ``off``.
    Use as an async context manager or call :meth:`start` / :meth:`close`. ``events`` counts
    the callbacks made, for diagnostics.
    """

    def __init__(
        self,
        callback: Callable[[], None],
        *,
        mode: str = "auto",
        poll_interval: float = 10.0,
        debounce: float = 0.2,
    ) -> None:
        if not callable(callback):
            raise TypeError("callback must be callable")
        if mode not in ("auto", "netlink", "poll", "off"):
            raise ValueError(f"unknown netwatch mode {mode!r}")
        if not poll_interval > 0:
            raise ValueError("poll_interval must be > 0")
        if debounce < 0:
            raise ValueError("debounce must be >= 0")
        self._callback = callback
        self._mode = mode
        self._poll_interval = poll_interval
        self._debounce = debounce
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._poller: asyncio.Task[None] | None = None
        self.backend: NetwatchBackend | None = None
        self.events = 0

    async def __aenter__(self) -> NetWatcher:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def start(self) -> NetwatchBackend:
        """Start watching (needs a running loop); return the backend in use."""
        if self.backend is not None:
            raise RuntimeError("NetWatcher already started")
        self._loop = asyncio.get_running_loop()
        if self._mode == "off":
            self.backend = "off"
            return self.backend
        if self._mode in ("auto", "netlink") and sys.platform == "linux":
            try:
                self._open_netlink()
            except OSError as exc:
                if self._mode == "netlink":
                    raise
                log.info("netlink events unavailable (%s): polling for network changes", exc)
            else:
                self.backend = "netlink"
                return self.backend
        elif self._mode == "netlink":
            raise OSError(errno.EAFNOSUPPORT, "netlink needs Linux")
        self._poller = self._loop.create_task(self._poll(), name="apr_async-netwatch-poll")
        self.backend = "poll"
        return self.backend

    def _open_netlink(self) -> None:
        sock = socket.socket(
            socket.AF_NETLINK,
            socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
            _NETLINK_ROUTE,
        )
        try:
            sock.bind((0, _GROUPS))
            assert self._loop is not None
            self._loop.add_reader(sock.fileno(), self._on_readable)
        except BaseException:
            sock.close()
            raise
        self._sock = sock

    def _on_readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        relevant = False
        while True:
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                break
            except OSError as exc:
                # ENOBUFS: the kernel dropped events because we were slow; something
                # changed, we just do not know what, which is all the caller needs.
                relevant = relevant or exc.errno == errno.ENOBUFS
                if exc.errno != errno.ENOBUFS:
                    break
                continue
            if not data:
                break
            relevant = relevant or _has_relevant(data)
        if relevant:
            self._schedule()

    def _schedule(self) -> None:
        assert self._loop is not None
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(self._debounce, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self.events += 1
        try:
            self._callback()
        except Exception:
            log.exception("network change callback failed")

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._poll_interval)
            self._fire()

    async def aclose(self) -> None:
        """Stop watching and wait until the polling task (if any) has ended. Idempotent."""
        poller = self._poller
        self.close()
        if poller is not None:
            # wait() never raises, so a cancellation of our own caller is not swallowed
            await asyncio.wait({poller})

    def close(self) -> None:
        """Stop watching and release the socket; a polling task is cancelled. Idempotent."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._poller is not None:
            self._poller.cancel()
            self._poller = None
        if self._sock is not None:
            if self._loop is not None and not self._loop.is_closed():
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None


def _has_relevant(data: bytes) -> bool:
    offset = 0
    while offset + _NLMSG_HDR.size <= len(data):
        length, kind, _flags, _seq, _pid = _NLMSG_HDR.unpack_from(data, offset)
        if length < _NLMSG_HDR.size:
            return False
        if kind in _RELEVANT:
            return True
        offset += (length + 3) & ~3
    return False
