"""The delay line on a datagram socketpair (no root): order, per-family delay, clean close.

A datagram socket hands ``os.read``/``os.write`` one packet each, like a TUN device, so the
line's own logic is tested here without a lab; the lab tests prove the RTT it adds.
"""

from __future__ import annotations

import asyncio
import socket
import time

from apr_async.lab.delayline import DelayLine

V4 = bytes([0x45]) + b"\0" * 19  # version nibble 4
V6 = bytes([0x60]) + b"\0" * 39  # version nibble 6


async def collect(sock: socket.socket, count: int, limit: float = 2.0) -> list[bytes]:
    loop = asyncio.get_running_loop()
    out: list[bytes] = []
    async with asyncio.timeout(limit):
        while len(out) < count:
            out.append(await loop.sock_recv(sock, 2048))
    return out


def pair() -> tuple[socket.socket, DelayLine]:
    ours, line_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    ours.setblocking(False)
    line_end.setblocking(False)
    line = DelayLine(line_end.detach())
    line.start()
    return ours, line


async def test_a_burst_comes_back_in_order_after_its_delay() -> None:
    ours, line = pair()
    try:
        line.set_delays(0.0, 0.05)
        packets = [V6 + i.to_bytes(2, "big") for i in range(200)]
        start = time.monotonic()
        for packet in packets:  # more than one read burst, all queued before the line reads
            ours.send(packet)
        back = await collect(ours, len(packets))
        assert time.monotonic() - start >= 0.05
        assert back == packets  # not reordered (equal deadlines on the timer heap would be)
        assert line.forwarded == len(packets)
    finally:
        line.close()
        ours.close()


async def test_each_family_gets_its_own_delay() -> None:
    ours, line = pair()
    try:
        line.set_delays(0.0, 0.1)
        ours.send(V6 + b"slow")
        ours.send(V4 + b"fast")
        first, second = await collect(ours, 2)
        assert (first, second) == (V4 + b"fast", V6 + b"slow")  # IPv4 overtook the held IPv6
    finally:
        line.close()
        ours.close()


async def test_close_drops_held_packets_and_the_device() -> None:
    ours, line = pair()
    try:
        line.set_delays(0.05, 0.05)
        ours.send(V4)
        await asyncio.sleep(0.01)  # read and held
        line.close()
        await asyncio.sleep(0.1)  # past the deadline: a timer left behind would fire now
        assert line.forwarded == 0
        try:
            ours.send(V4)
        except ConnectionRefusedError:
            pass  # the line's end is closed
        else:
            raise AssertionError("the delay line's fd is still open")
        line.close()  # idempotent
    finally:
        ours.close()
