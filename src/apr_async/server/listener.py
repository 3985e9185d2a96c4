"""Dual-stack asyncio servers that learn the real client address (PROXY protocol, TOA).

:func:`start_server` wraps :func:`asyncio.start_server`. It listens on IPv6 and IPv4 with one
call, and with ``proxy_protocol`` set it reads and validates the PROXY header *before* the
application's callback runs, accepting it only from ``trusted_proxies``. The callback then
gets an ordinary reader/writer pair whose reader starts exactly at the first byte after the
header, and :func:`real_peername` tells it who the client really is.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import inspect
import ipaddress
import logging
import math
import socket
import weakref
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final, Literal

from .proxy_protocol import DEFAULT_MAX_SIZE, HeaderParser, ProxyHeader, ProxyProtocolError
from .toa import get_toa

__all__ = [
    "DEFAULT_HEADER_TIMEOUT",
    "ClientConnectedCallback",
    "proxy_header",
    "real_peername",
    "start_server",
]

log = logging.getLogger("apr_async.server")

ClientConnectedCallback = Callable[
    [asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None] | None
]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Seconds a peer has to deliver its whole PROXY header.
DEFAULT_HEADER_TIMEOUT: Final = 5.0
#: Connections allowed to sit in the header phase at once (slow-header floods).
DEFAULT_MAX_PENDING: Final = 1024
_BIND_ATTEMPTS: Final = 8


@dataclass(slots=True)
class _ConnectionInfo:
    header: ProxyHeader | None
    toa: bool


# Keyed by the writer the callback receives; entries vanish with the connection's objects.
_connections: weakref.WeakKeyDictionary[asyncio.StreamWriter, _ConnectionInfo] = (
    weakref.WeakKeyDictionary()
)


def _unmap(ip: IPAddress) -> IPAddress:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _peer_ip(peer: object) -> IPAddress | None:
    if not isinstance(peer, tuple) or not peer or not isinstance(peer[0], str):
        return None
    try:
        return _unmap(ipaddress.ip_address(peer[0].split("%", 1)[0]))
    except ValueError:
        return None


def _normalize(host: str, port: int) -> tuple[str, int]:
    """``(host, port)`` with IPv4-mapped IPv6 shown as plain IPv4 (zone ids kept)."""
    bare, sep, zone = host.partition("%")
    try:
        ip = _unmap(ipaddress.ip_address(bare))
    except ValueError:
        return (host, port)
    return (f"{ip}{sep}{zone}" if ip.version == 6 else str(ip), port)


def _parse_networks(
    trusted: Iterable[str | Network | IPAddress] | str,
) -> tuple[Network, ...]:
    if isinstance(trusted, str):
        trusted = (trusted,)
    networks = []
    for entry in trusted:
        if isinstance(entry, Network):
            networks.append(entry)
            continue
        if not isinstance(entry, str | IPAddress):
            raise TypeError(f"trusted_proxies entries must be networks or addresses: {entry!r}")
        try:
            net = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ValueError(f"not a network or address in trusted_proxies: {entry!r}") from None
        networks.append(net)
    return tuple(networks)


def _is_trusted(peer: object, networks: tuple[Network, ...]) -> bool:
    ip = _peer_ip(peer)
    # An IPv4 client of a dual-stack socket appears as ::ffff:a.b.c.d; _peer_ip unmaps it,
    # so IPv4 networks match it and ::ffff:0:0/96 entries are not needed (nor honoured).
    return ip is not None and any(ip in net for net in networks)


def proxy_header(writer: asyncio.StreamWriter) -> ProxyHeader | None:
    """The PROXY header received on this connection (with its TLVs), or None."""
    info = _connections.get(writer)
    return None if info is None else info.header


def real_peername(writer: asyncio.StreamWriter, *, toa: bool | None = None) -> tuple[str, int]:
    """The real client ``(address, port)`` of a connection.

    In order: the source of the PROXY header (when the server read one that carries an
    address), else the TOA kernel module's answer (when ``toa`` is true; it defaults to the
    ``toa`` argument given to :func:`start_server`), else the socket's peer. IPv4 clients of
    a dual-stack socket are returned as plain IPv4 (``"192.0.2.1"``, not ``"::ffff:..."``).
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


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError, asyncio.CancelledError):
        await writer.wait_closed()


@dataclass(slots=True)
class _HeaderPolicy:
    version: Literal["v1", "v2", "auto"]
    networks: tuple[Network, ...]
    timeout: float
    max_size: int
    max_pending: int | None
    pending: set[asyncio.StreamWriter]


async def _read_header(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, policy: _HeaderPolicy
) -> ProxyHeader | None:
    """Read the header; on any failure close the connection, log, and return None."""
    peer = writer.get_extra_info("peername")
    if not _is_trusted(peer, policy.networks):
        log.warning("closing connection from untrusted peer %s: not in trusted_proxies", peer)
        await _close(writer)
        return None
    if policy.max_pending is not None and len(policy.pending) >= policy.max_pending:
        log.warning("closing connection from %s: %d headers pending", peer, len(policy.pending))
        await _close(writer)
        return None
    parser = HeaderParser(policy.version, max_size=policy.max_size)
    policy.pending.add(writer)
    problem: str | None = "cancelled"
    try:
        async with asyncio.timeout(policy.timeout):
            # Read exactly what the parser still needs, so no application byte is consumed.
            while (needed := parser.bytes_needed()) > 0:
                parser.feed(await reader.readexactly(needed))
        problem = None
        return parser.header
    except TimeoutError:
        problem = f"no complete PROXY header within {policy.timeout:g} s"
    except asyncio.IncompleteReadError as exc:
        problem = f"truncated PROXY header ({len(exc.partial)} bytes, then EOF)"
    except ProxyProtocolError as exc:
        problem = f"invalid PROXY header: {exc}"
    except OSError as exc:
        problem = f"error reading the PROXY header: {exc}"
    finally:
        policy.pending.discard(writer)
        if problem == "cancelled":
            writer.close()
        elif problem is not None:
            log.info("closing connection from %s: %s", peer, problem)
            await _close(writer)
    return None


def _make_handler(
    client_connected_cb: ClientConnectedCallback, policy: _HeaderPolicy | None, toa: bool
) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        header = None
        if policy is not None:
            header = await _read_header(reader, writer, policy)
            if header is None:
                return
        _connections[writer] = _ConnectionInfo(header, toa)
        try:
            result = client_connected_cb(reader, writer)
            if inspect.isawaitable(result):
                await result
        except Exception:
            # asyncio 3.11 would only report this when the task is garbage collected, and
            # leave the connection open; do what 3.12 does: log it and close.
            log.exception("client_connected_cb failed for %s", writer.get_extra_info("peername"))
            await _close(writer)
        except asyncio.CancelledError:
            writer.close()
            raise

    return handle


def _is_wildcard(host: object) -> bool:
    return host is None or host in ("", "::")


def _has_ipv6() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::", 0))
    except OSError:
        return False
    return True


async def _start_split_stack(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    port: int,
    kwds: dict[str, Any],
) -> asyncio.Server:
    """IPv6-only and IPv4 sockets on the same port (no dual-stack socket available)."""
    if not _has_ipv6():
        return await asyncio.start_server(handler, "0.0.0.0", port, **kwds)
    hosts = ["::", "0.0.0.0"]
    for attempt in range(_BIND_ATTEMPTS):
        chosen = port
        if port == 0:
            # Two sockets must share one port: borrow a free one from the kernel first.
            with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                probe.bind(("::", 0))
                chosen = probe.getsockname()[1]
        try:
            return await asyncio.start_server(handler, hosts, chosen, **kwds)
        except OSError as exc:
            if port != 0 or exc.errno != errno.EADDRINUSE or attempt == _BIND_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


async def start_server(
    client_connected_cb: ClientConnectedCallback,
    host: str | None = None,
    port: int = 0,
    *,
    proxy_protocol: Literal["v1", "v2", "auto"] | None = None,
    trusted_proxies: Iterable[str | Network | IPAddress] | str = (),
    dualstack: bool = True,
    header_timeout: float = DEFAULT_HEADER_TIMEOUT,
    max_header_size: int = DEFAULT_MAX_SIZE,
    max_pending_headers: int | None = DEFAULT_MAX_PENDING,
    toa: bool = False,
    **kwds: Any,
) -> asyncio.Server:
    """Start a TCP server like :func:`asyncio.start_server`, dual-stack and PROXY-aware.

    ``host`` ``None``, ``""`` or ``"::"`` with ``dualstack=True`` listens on all IPv6 *and*
    IPv4 addresses: one ``IPV6_V6ONLY=0`` socket where the system supports it, else an IPv6
    and an IPv4 socket on the same port. Any other ``host`` (or ``dualstack=False``) is passed
    to :func:`asyncio.start_server` unchanged. Extra keyword arguments (``ssl``, ``limit``,
    ``backlog``, ``reuse_port``, ``start_serving``...) are passed on too.

    With ``proxy_protocol`` (``"v1"``, ``"v2"`` or ``"auto"``) every connection must start
    with a PROXY header, sent by a peer inside ``trusted_proxies`` (networks or addresses;
    IPv4 clients of a dual-stack socket match IPv4 networks). Connections from other peers,
    and headers that are malformed, larger than ``max_header_size``, cut short, or not
    complete within ``header_timeout`` seconds, are closed and logged (logger
    ``apr_async.server``) without calling ``client_connected_cb``. At most
    ``max_pending_headers`` connections may be waiting for their header; more are closed at
    once. ``toa=True`` makes :func:`real_peername` ask the TOA kernel module.

    ``ssl`` cannot be combined with ``proxy_protocol``: the header comes before the TLS
    handshake. Bad arguments raise ``ValueError``/``TypeError`` before any socket is opened.
    """
    if proxy_protocol not in (None, "v1", "v2", "auto"):
        raise ValueError(f"proxy_protocol must be None, 'v1', 'v2' or 'auto': {proxy_protocol!r}")
    networks = _parse_networks(trusted_proxies)
    if proxy_protocol is not None and not networks:
        raise ValueError("proxy_protocol needs trusted_proxies: headers from anyone else are lies")
    if proxy_protocol is None and networks:
        raise ValueError("trusted_proxies is only meaningful with proxy_protocol")
    if isinstance(header_timeout, bool) or not isinstance(header_timeout, int | float):
        raise TypeError("header_timeout must be a number of seconds")
    if not (math.isfinite(header_timeout) and header_timeout > 0):
        raise ValueError("header_timeout must be a positive finite number of seconds")
    if max_pending_headers is not None and (
        isinstance(max_pending_headers, bool)
        or not isinstance(max_pending_headers, int)
        or max_pending_headers < 1
    ):
        raise ValueError("max_pending_headers must be a positive int or None")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 0xFFFF:
        raise ValueError(f"port must be an int in 0..65535, not {port!r}")
    if proxy_protocol is not None and kwds.get("ssl") is not None:
        # The header precedes the TLS handshake on the wire, but asyncio would start TLS on
        # the raw bytes: terminate TLS at the proxy, or in the callback after the header.
        raise ValueError("proxy_protocol cannot be combined with ssl= (the header precedes TLS)")
    policy = None
    if proxy_protocol is not None:
        HeaderParser(proxy_protocol, max_size=max_header_size)  # validates max_header_size
        policy = _HeaderPolicy(
            proxy_protocol, networks, float(header_timeout), max_header_size,
            max_pending_headers, set(),
        )  # fmt: skip
    handler = _make_handler(client_connected_cb, policy, toa)

    if not (dualstack and _is_wildcard(host)) or "sock" in kwds or "family" in kwds:
        return await asyncio.start_server(handler, host, port, **kwds)
    if not socket.has_dualstack_ipv6():
        return await _start_split_stack(handler, port, kwds)
    sock = socket.create_server(
        ("::", port),
        family=socket.AF_INET6,
        backlog=kwds.get("backlog", 100),
        reuse_port=bool(kwds.pop("reuse_port", False)),
        dualstack_ipv6=True,
    )
    # socket.create_server sets SO_REUSEADDR itself on POSIX, as asyncio does by default.
    kwds.pop("reuse_address", None)
    try:
        return await asyncio.start_server(handler, sock=sock, **kwds)
    except BaseException:
        sock.close()
        raise
