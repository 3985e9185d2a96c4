"""Who is really on the other end of a server connection: PROXY header, TOA, or the socket.

:func:`start_server` records what it learnt about each connection (the PROXY header, whether
to ask the TOA module) against the :class:`asyncio.StreamWriter` the callback receives;
:func:`real_peername` and :func:`proxy_header` read it back.
"""

from __future__ import annotations

import asyncio
import ipaddress
import weakref
from dataclasses import dataclass

from .proxy_header import ProxyHeader
from .toa import get_toa

__all__ = ["ConnectionInfo", "peer_ip", "proxy_header", "real_peername", "remember"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(slots=True)
class ConnectionInfo:
    """What the server learnt about one connection before its callback ran."""

    header: ProxyHeader | None
    toa: bool


# Weak keys: an entry goes away with the connection's writer, with no close hook to forget.
_connections: weakref.WeakKeyDictionary[asyncio.StreamWriter, ConnectionInfo] = (
    weakref.WeakKeyDictionary()
)


def remember(writer: asyncio.StreamWriter, info: ConnectionInfo) -> None:
    """Attach ``info`` to the connection of ``writer`` (done by :func:`start_server`)."""
    _connections[writer] = info


def _unmap(ip: IPAddress) -> IPAddress:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def peer_ip(peer: object) -> IPAddress | None:
    """The IP of a ``peername`` tuple, IPv4-mapped IPv6 unmapped, zone dropped; else None."""
    if not isinstance(peer, tuple) or not peer or not isinstance(peer[0], str):
        return None
    try:
        return _unmap(ipaddress.ip_address(peer[0].split("%", 1)[0]))
    except ValueError:
        return None


def _normalize(host: str, port: int) -> tuple[str, int]:
    bare, sep, zone = host.partition("%")
    try:
        ip = _unmap(ipaddress.ip_address(bare))
    except ValueError:
        return (host, port)
    return (f"{ip}{sep}{zone}" if ip.version == 6 else str(ip), port)


def proxy_header(writer: asyncio.StreamWriter) -> ProxyHeader | None:
    """The PROXY header received on this connection (with its TLVs), or None."""
    info = _connections.get(writer)
    return None if info is None else info.header


def real_peername(writer: asyncio.StreamWriter, *, toa: bool | None = None) -> tuple[str, int]:
    """The real client of a connection, as an ``(address, port)`` pair.

    The answer comes from, in order: the source of the PROXY header (when the server read
    one that carries an address; ``LOCAL``/``UNKNOWN`` headers do not), the TOA kernel
    module (when ``toa`` is true; it defaults to the ``toa`` argument of
    :func:`start_server`), and the socket's peer.

    The shape is always a 2-tuple ``(address: str, port: int)``, for IPv6 too (never the
    4-tuple of an ``AF_INET6`` ``getpeername``): IPv4 as dotted quad, IPv6 in compressed
    lower-case form with ``%zone`` kept for scoped addresses (``"fe80::1%eth0"``), and IPv4
    clients of a dual-stack socket as plain IPv4 (``"192.0.2.1"``, not
    ``"::ffff:192.0.2.1"``). Raises :class:`ValueError` if the connection has no IP peer
    (a UNIX socket without a PROXY header).
    """
    info = _connections.get(writer)
    if info is not None and info.header is not None and info.header.source is not None:
        return _normalize(*info.header.source)
    use_toa = (info is not None and info.toa) if toa is None else toa
    if use_toa:
        sock = writer.get_extra_info("socket")
        found = get_toa(sock) if sock is not None else None
        if found is not None:
            return _normalize(*found)
    peer = writer.get_extra_info("peername")
    if not isinstance(peer, tuple) or len(peer) < 2:
        raise ValueError(f"the connection has no IP peer address: {peer!r}")
    return _normalize(peer[0], peer[1])
