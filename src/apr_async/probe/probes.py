"""Single probes, each bound to one source address: ICMP echo (icmplib) and TCP connect.

A probe answers one question: does the path from *this* source to *that* destination work,
and how long is its round trip? Both probes are plain coroutines with no threads and no
blocking calls on the event loop: sockets are non-blocking and awaited through the loop.

ICMP uses icmplib's socket classes rather than ``icmplib.async_ping`` because ``async_ping``
binds its source with a 2-tuple, which the kernel rejects for a link-local IPv6 source (it needs
the scope id), and it times with the wall clock; here the socket is bound with a full sockaddr
and the RTT comes from the monotonic clock.

A TCP refusal (RST) proves the path as well as an accepted connection does, so it counts as
reachable with its RTT.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
import struct
import sys
import time
from dataclasses import dataclass
from typing import Any, Literal

from icmplib import (
    AsyncSocket,
    ICMPLibError,
    ICMPRequest,
    ICMPv4Socket,
    ICMPv6Socket,
    SocketPermissionError,
)

__all__ = [
    "IcmpMode",
    "IcmpUnavailableError",
    "ProbeResult",
    "detect_icmp_mode",
    "icmp_probe",
    "sockaddr_for",
    "tcp_probe",
]

log = logging.getLogger(__name__)

ProbeMethod = Literal["icmp", "tcp"]
IcmpMode = Literal["privileged", "unprivileged"]

# Linux lets connect() pick the ephemeral port after bind() to a source address, so probes
# bound to one source do not exhaust the bind()-time port range; Python 3.11 lacks the name.
_IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
_ICMP_ID = [0]


class IcmpUnavailableError(OSError):
    """ICMP sockets of the requested kind cannot be opened here (no privilege, no ping group)."""


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """The outcome of one probe from ``source`` to ``destination``.

    ``ok`` means the path was proven: an echo reply, an accepted connection or a refusal (then
    ``refused`` is true). ``rtt`` is in seconds and set whenever ``ok`` is. ``error`` is the
    errno of a failure (``ETIMEDOUT`` for no answer), ``detail`` says it in words.
    """

    method: ProbeMethod
    source: str
    destination: str
    port: int | None
    ok: bool
    rtt: float | None
    refused: bool = False
    error: int | None = None
    detail: str = ""


def _scope_id(zone: str) -> int:
    if zone.isdigit():
        return int(zone)
    try:
        return socket.if_nametoindex(zone)
    except OSError:
        raise ValueError(f"unknown interface {zone!r} in address zone") from None


def sockaddr_for(
    address: str | ipaddress.IPv4Address | ipaddress.IPv6Address,
    port: int,
    *,
    scope_id: int | None = None,
) -> tuple[socket.AddressFamily, tuple[Any, ...]]:
    """Return ``(family, sockaddr)`` for an IP literal, ready for ``bind``/``connect``.

    ``"fe80::1%eth0"`` (or ``%3``) gives a 4-tuple with the scope id; so does a link-local
    address with ``scope_id``. Host names are refused: a probe never resolves anything.
    Raises ``ValueError`` / ``TypeError`` for bad input.
    """
    if isinstance(port, bool) or not isinstance(port, int):
        raise TypeError(f"port must be an int, not {type(port).__name__}")
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is outside 0-65535")
    zone: str | None = None
    if isinstance(address, str):
        text, _, zone_text = address.partition("%")
        zone = zone_text or None
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            raise ValueError(f"{address!r} is not an IP address literal") from None
    elif isinstance(address, ipaddress.IPv4Address | ipaddress.IPv6Address):
        ip = address
    else:
        raise TypeError(f"address must be str or ipaddress, not {type(address).__name__}")
    if ip.version == 4:
        if zone is not None or scope_id:
            raise ValueError(f"IPv4 address {address!r} cannot carry a zone")
        return socket.AF_INET, (str(ip), port)
    scope = _scope_id(zone) if zone is not None else (scope_id or 0)
    if ip.is_link_local and not scope:
        raise ValueError(f"link-local address {address!r} needs a zone (scope id)")
    return socket.AF_INET6, (str(ip), port, 0, scope)


def _pair_sockaddrs(
    source: str, destination: str, port: int
) -> tuple[socket.AddressFamily, tuple[Any, ...], tuple[Any, ...]]:
    sfam, src = sockaddr_for(source, 0)
    dfam, dst = sockaddr_for(destination, port)
    if sfam != dfam:
        raise ValueError(f"source {source!r} and destination {destination!r} differ in family")
    if dfam == socket.AF_INET6 and dst[3] == 0 and src[3] != 0:
        # a link-local source reaches a destination on the same link: share the zone
        dst = (dst[0], dst[1], 0, src[3])
    return dfam, src, dst


def _text(addr: object) -> str:
    if isinstance(addr, str):
        return addr
    if isinstance(addr, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return str(addr)
    raise TypeError(f"address must be str or ipaddress, not {type(addr).__name__}")


async def tcp_probe(
    source: str | ipaddress.IPv4Address | ipaddress.IPv6Address,
    destination: str | ipaddress.IPv4Address | ipaddress.IPv6Address,
    port: int,
    *,
    max_wait: float = 2.0,
) -> ProbeResult:
    """Connect from ``source`` to ``destination:port`` and report the result.

    An accepted connection is reset at once (no TIME_WAIT left behind); a refusal counts as
    reachable; no answer within ``max_wait`` seconds is a failure. Never raises for a network
    outcome; raises ``ValueError``/``TypeError`` for bad arguments before any I/O.
    """
    src_text, dst_text = _text(source), _text(destination)
    if not 0 < port <= 65535:
        raise ValueError(f"TCP probe port {port} is outside 1-65535")
    if not max_wait > 0:
        raise ValueError(f"max_wait must be > 0, got {max_wait!r}")
    family, src, dst = _pair_sockaddrs(src_text, dst_text, port)
    loop = asyncio.get_running_loop()
    sock = socket.socket(family, socket.SOCK_STREAM)
    connected = False
    try:
        sock.setblocking(False)
        if sys.platform == "linux":
            sock.setsockopt(socket.IPPROTO_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
        try:
            sock.bind(src)
        except OSError as exc:
            return ProbeResult(
                "tcp",
                src_text,
                dst_text,
                port,
                False,
                None,
                error=exc.errno,
                detail=f"cannot bind source: {exc.strerror}",
            )
        start = time.monotonic()
        try:
            async with asyncio.timeout(max_wait):
                await loop.sock_connect(sock, dst)
        except TimeoutError:
            return ProbeResult(
                "tcp",
                src_text,
                dst_text,
                port,
                False,
                None,
                error=errno.ETIMEDOUT,
                detail=f"no answer within {max_wait:g} s",
            )
        except ConnectionRefusedError:
            return ProbeResult(
                "tcp",
                src_text,
                dst_text,
                port,
                True,
                time.monotonic() - start,
                refused=True,
                detail="refused (RST): path works",
            )
        except OSError as exc:
            return ProbeResult(
                "tcp",
                src_text,
                dst_text,
                port,
                False,
                None,
                error=exc.errno,
                detail=exc.strerror or str(exc),
            )
        connected = True
        return ProbeResult(
            "tcp", src_text, dst_text, port, True, time.monotonic() - start, detail="connected"
        )
    finally:
        if connected:
            # abortive close: the probe's peer sees a reset and we keep no TIME_WAIT socket
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()


def _next_icmp_id() -> int:
    # distinct identifiers keep concurrent echoes apart: a raw socket sees every reply
    # addressed to its source, whichever probe it belongs to
    _ICMP_ID[0] = (_ICMP_ID[0] + 1) & 0xFFFF or 1
    return _ICMP_ID[0]


def _open_icmp(family: socket.AddressFamily, privileged: bool) -> Any:
    cls = ICMPv4Socket if family == socket.AF_INET else ICMPv6Socket
    try:
        return cls(None, privileged)
    except SocketPermissionError:
        kind = "raw (privileged)" if privileged else "ping (unprivileged)"
        raise IcmpUnavailableError(errno.EPERM, f"ICMP {kind} sockets not permitted") from None
    except ICMPLibError as exc:
        raise IcmpUnavailableError(errno.EAFNOSUPPORT, str(exc)) from None


async def icmp_probe(
    source: str | ipaddress.IPv4Address | ipaddress.IPv6Address,
    destination: str | ipaddress.IPv4Address | ipaddress.IPv6Address,
    *,
    max_wait: float = 2.0,
    privileged: bool = True,
) -> ProbeResult:
    """Send one ICMP echo from ``source`` to ``destination`` and wait for the reply.

    Raises :class:`IcmpUnavailableError` when the ICMP socket cannot be opened (the caller then
    switches ICMP off); other failures (no reply, unreachable, bind error) are reported in the
    result.
    """
    src_text, dst_text = _text(source), _text(destination)
    if not max_wait > 0:
        raise ValueError(f"max_wait must be > 0, got {max_wait!r}")
    family, src, dst = _pair_sockaddrs(src_text, dst_text, 0)
    icmp_sock = _open_icmp(family, privileged)
    wrapper: Any = None
    try:
        try:
            icmp_sock.sock.bind(src)
        except OSError as exc:
            return ProbeResult(
                "icmp",
                src_text,
                dst_text,
                None,
                False,
                None,
                error=exc.errno,
                detail=f"cannot bind source: {exc.strerror}",
            )
        wrapper = AsyncSocket(icmp_sock)
        # icmplib resolves the request's destination with getaddrinfo: hand it the numeric
        # form (with a numeric zone) so nothing ever consults a resolver
        target = dst[0] if family == socket.AF_INET or not dst[3] else f"{dst[0]}%{dst[3]}"
        request = ICMPRequest(destination=target, id=_next_icmp_id(), sequence=0)
        start = time.monotonic()
        try:
            wrapper.send(request)
            reply = await wrapper.receive(request, max_wait)
            reply.raise_for_status()
        except ICMPLibError as exc:
            name = type(exc).__name__
            code = errno.ETIMEDOUT if name == "TimeoutExceeded" else errno.EHOSTUNREACH
            return ProbeResult(
                "icmp",
                src_text,
                dst_text,
                None,
                False,
                None,
                error=code,
                detail=f"{name}: {exc}",
            )
        return ProbeResult(
            "icmp", src_text, dst_text, None, True, time.monotonic() - start, detail="echo reply"
        )
    finally:
        if wrapper is not None:
            wrapper.close()
        else:
            icmp_sock.close()


def detect_icmp_mode(requested: str = "auto") -> IcmpMode | None:
    """Return the ICMP socket kind usable here, or ``None`` when ICMP must be off.

    ``auto`` tries raw sockets (CAP_NET_RAW), then unprivileged ping sockets (allowed by
    ``net.ipv4.ping_group_range``); ``privileged``/``unprivileged`` try only that kind; ``off``
    gives ``None``. Opening a socket sends nothing.
    """
    if requested not in ("auto", "privileged", "unprivileged", "off"):
        raise ValueError(f"unknown ICMP mode {requested!r}")
    if requested == "off":
        return None
    kinds: list[IcmpMode] = (
        ["privileged", "unprivileged"] if requested == "auto" else [requested]  # type: ignore[list-item]
    )
    for kind in kinds:
        for family in (socket.AF_INET, socket.AF_INET6):
            try:
                _open_icmp(family, kind == "privileged").close()
            except IcmpUnavailableError:
                continue
            return kind
    return None
