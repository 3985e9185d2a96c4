"""One TCP connection attempt as a future: a non-blocking socket bound to the pair's source,
completed by a writability callback, its outcome reported to an :class:`AttemptRecorder`.

An attempt owns its socket until it succeeds, and closes it synchronously on failure or
cancellation (a cancelled attempt unregisters its callback and closes at once, not a loop turn
later). It costs no task: the race wakes up one loop turn after the kernel answers, as plain
asyncio does, which keeps a loopback connect within a few tens of microseconds of asyncio's.
"""

from __future__ import annotations

import asyncio
import errno as errno_codes
import logging
import socket
from collections.abc import Callable
from typing import Any, TypeVar

from apr_async.connect.types import AttemptRecorder, ConnectPair
from apr_async.core.schedule import attempt_delay

__all__ = ["Connecting", "claim", "dispose", "record_outcome"]

log = logging.getLogger("apr_async.connect")

#: Linux value of IP_BIND_ADDRESS_NO_PORT (include/uapi/linux/in.h) for Pythons lacking it.
_IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
#: Where the platform has it, the socket is created non-blocking: no setblocking() syscall
#: per attempt (Python's socket object knows it is non-blocking then; its ``type`` hides it).
_SOCK_NONBLOCK: int = getattr(socket, "SOCK_NONBLOCK", 0)
_STREAM = socket.SOCK_STREAM | _SOCK_NONBLOCK

ResultT = TypeVar("ResultT")

def record_outcome(
    recorder: AttemptRecorder | None,
    pair: Any,
    port: int,
    outcome: tuple[bool, float | None, int | None],
) -> None:
    """Give ``recorder`` one attempt's ``(ok, rtt, errno)``; a failing recorder is logged."""
    if recorder is None:
        return
    try:
        recorder.record_attempt(pair, port, *outcome)
    except Exception:
        # The service's bookkeeping must never break the application's connection.
        log.exception("record_attempt failed for %r", pair)


class Connecting(asyncio.Future[socket.socket]):
    """One TCP connection attempt as a future, driven by a writability callback.

    It costs no task: the attempt wakes the race itself the moment ``connect()`` is answered.
    Cancelling it unregisters the callback and closes the socket at once (not a loop turn
    later), so a race that ends and a loop that stops right after leave nothing open.
    """

    # Slots, not an instance dict: a subclass of the C Future keeps its attributes in a real
    # dict, whose stores and loads the interpreter cannot specialise; one attempt per
    # connection makes them show up in the instruction count.
    __slots__ = ("_delay_override", "_fd", "_loop_ref", "_notify", "_pair", "_port",
                 "_recorder", "_sock", "_started")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        pair: ConnectPair,
        *,
        port: int,
        bind_to: tuple[Any, ...] | None,
        recorder: AttemptRecorder | None,
        delay_override: float | None,
        notify: Callable[[], None] | None = None,
    ) -> None:
        asyncio.Future.__init__(self, loop=loop)  # not super(): no proxy object per attempt
        self._loop_ref = loop
        self._pair = pair
        self._port = port
        self._recorder = recorder
        self._delay_override = delay_override
        self._notify = notify
        self._fd = -1
        self._started = 0.0  # set right before connect(), so the RTT is the connect's alone
        self._sock: socket.socket | None = None
        try:
            sock = socket.socket(pair.family, _STREAM, socket.IPPROTO_TCP)
        except OSError as exc:
            # No descriptor left (EMFILE, ENFILE) or no such family here: a local failure that
            # says nothing about the path, so the attempt fails without a record.
            self.set_exception(exc)
            if notify is not None:
                notify()
            return
        self._sock = sock
        try:
            if not _SOCK_NONBLOCK:
                sock.setblocking(False)
            if bind_to is not None:
                if bind_to[1] == 0:
                    # Let connect() pick the port with the full 4-tuple in mind, so many
                    # concurrent attempts from one source do not exhaust its ephemeral ports.
                    # (try/except, not contextlib.suppress: this runs on every attempt)
                    try:  # noqa: SIM105
                        sock.setsockopt(socket.IPPROTO_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
                    except OSError:
                        pass
                sock.bind(bind_to)
            self._started = loop.time()
            sock.connect(pair.destination)
        except (BlockingIOError, InterruptedError):
            try:
                loop.add_writer(sock.fileno(), self._on_writable)
            except BaseException:
                self._release()
                raise
            self._fd = sock.fileno()
        except OSError as exc:
            self._fail(exc)
        except BaseException:
            self._release()
            raise
        else:
            self._succeed()

    def _release(self) -> None:
        if self._fd != -1:
            self._loop_ref.remove_writer(self._fd)
            self._fd = -1
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _fail(self, exc: OSError) -> None:
        self._release()
        number = exc.errno
        # A refusal is an answer from the far end: the path itself works.
        rtt = self._loop_ref.time() - self._started if number == errno_codes.ECONNREFUSED else None
        record_outcome(self._recorder, self._pair, self._port, (False, rtt, number))
        self.set_exception(exc)
        if self._notify is not None:
            self._notify()

    def _succeed(self) -> None:
        sock = self._sock
        assert sock is not None
        if self._fd != -1:
            self._loop_ref.remove_writer(self._fd)
            self._fd = -1
        self._sock = None
        rtt = self._loop_ref.time() - self._started
        self.set_result(sock)
        if self._notify is not None:
            self._notify()
        # Recorded now, not a loop turn later: the waiter's wake-up is already scheduled, and a
        # deferred record (a call_soon, a queue, a flush before every ranking) cost ~2 % of
        # the instructions of a loopback connection for a few microseconds of its latency.
        recorder = self._recorder
        if recorder is not None:
            try:
                recorder.record_attempt(self._pair, self._port, True, rtt, None)
            except Exception:
                # The service's bookkeeping must never break the application's connection.
                log.exception("record_attempt failed for %r", self._pair)

    def _on_writable(self) -> None:
        if self.done() or self._sock is None:
            return
        err = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err == 0:
            self._succeed()
        elif err not in (errno_codes.EINPROGRESS, errno_codes.EALREADY):
            self._fail(OSError(err, f"Connect call failed {self._pair.destination}"))

    def cancel(self, msg: Any | None = None) -> bool:
        """Stop the attempt: unregister, close the socket, cancel the future."""
        if self.done():
            return False
        self._release()
        waited = self._loop_ref.time() - self._started
        if waited > attempt_delay(self._pair, self._delay_override):
            record_outcome(
                self._recorder, self._pair, self._port, (False, None, errno_codes.ETIMEDOUT)
            )
        return super().cancel(msg)


async def claim(attempt: asyncio.Future[ResultT], discard: Callable[[ResultT], object]) -> ResultT:
    """Await ``attempt`` and take ownership of its result, or dispose of it if we cannot.

    A cancellation (the caller's, or a timeout's) can arrive after the attempt completed but
    before this task woke up to take the result: the result then belongs to no one, and
    ``discard`` closes it instead of leaving a connected socket to the garbage collector.
    """
    try:
        return await attempt
    except BaseException:
        dispose(attempt, discard)
        raise


def dispose(attempt: asyncio.Future[ResultT], discard: Callable[[ResultT], object]) -> None:
    """Nobody will take ``attempt``'s result: cancel it if it still runs, else ``discard``
    what it produced (close the socket)."""
    if not attempt.done():
        attempt.cancel()
    elif not attempt.cancelled() and attempt.exception() is None:
        discard(attempt.result())
