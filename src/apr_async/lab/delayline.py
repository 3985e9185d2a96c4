"""A delay line: a TUN device whose packets are written back after a per-family delay.

The kernel here has no ``netem`` qdisc, so the router steers the packets to slow down into a
TUN device (policy routing); this reader holds each packet for the configured time and writes it
back into the same device, from where the router forwards it on. Runs on a lab service loop
(its own thread) so a test blocking its own loop cannot stall the network.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import struct

__all__ = ["DelayLine", "open_tun"]

_TUNSETIFF = 0x400454CA
_IFF_TUN = 0x0001
_IFF_NO_PI = 0x1000
_MAX_PACKET = 65535


def open_tun(ifname: str) -> int:
    """Create TUN device ``ifname`` in the calling thread's namespace; return its fd.

    The device is not persistent: it disappears when the fd is closed.
    """
    if not 0 < len(ifname.encode()) < 16:
        raise ValueError(f"invalid interface name {ifname!r}")
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH", ifname.encode(), _IFF_TUN | _IFF_NO_PI))
    except BaseException:
        os.close(fd)
        raise
    return fd


class DelayLine:
    """Holds packets read from a TUN fd for ``delay(version)`` seconds, then writes them back.

    Create it on the loop that will drive it (``start`` registers a reader on that loop).
    Delays are plain attributes: set them from any thread (a float store is atomic).
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: set[asyncio.TimerHandle] = set()
        self.delay_v4 = 0.0
        self.delay_v6 = 0.0
        self.forwarded = 0

    def start(self) -> None:
        """Begin forwarding (call on the owning loop)."""
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._fd, self._on_readable)

    def set_delays(self, v4: float, v6: float) -> None:
        """Change both delays (seconds); packets already held keep their original delay."""
        self.delay_v4, self.delay_v6 = v4, v6

    def _on_readable(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        # Drain what is queued so a burst costs one wake-up. A burst is released by one timer
        # per delay, in arrival order: the loop's timer heap does not keep equal deadlines in
        # order, and a line that reordered segments would make TCP retransmit spuriously.
        held: dict[float, list[bytes]] = {}
        for _ in range(64):
            try:
                packet = os.read(self._fd, _MAX_PACKET)
            except OSError:  # EAGAIN: drained; anything else: the device is going away
                break
            if not packet:
                break
            delay = self.delay_v6 if packet[0] >> 4 == 6 else self.delay_v4
            if delay <= 0:
                self._write(packet)
            else:
                held.setdefault(delay, []).append(packet)
        for delay, packets in held.items():
            holder: list[asyncio.TimerHandle] = []

            def release(
                batch: list[bytes] = packets, holder: list[asyncio.TimerHandle] = holder
            ) -> None:
                self._pending.difference_update(holder)
                for pkt in batch:
                    self._write(pkt)

            holder.append(self._loop.call_at(now + delay, release))
            self._pending.update(holder)

    def _write(self, packet: bytes) -> None:
        # A full tun queue or a packet the stack rejects is a lost packet, like on a real link.
        with contextlib.suppress(OSError):
            os.write(self._fd, packet)
            self.forwarded += 1

    def close(self) -> None:
        """Stop forwarding, drop held packets and close the device (on the owning loop).

        Idempotent.
        """
        if self._fd < 0:
            return
        if self._loop is not None:
            self._loop.remove_reader(self._fd)
        for handle in self._pending:
            handle.cancel()
        self._pending.clear()
        os.close(self._fd)
        self._fd = -1
