"""Dual-stack asyncio servers that learn the real client address (PROXY protocol, TOA).

:func:`start_server` is :func:`asyncio.start_server` that listens on IPv6 and IPv4 with one
call and, with ``proxy_protocol`` set, reads and validates the PROXY header (see
:mod:`.header_phase`) *before* the application's callback runs, accepting it only from
``trusted_proxies``. The callback then gets an ordinary reader/writer pair whose reader
starts exactly at the first byte after the header, and :func:`.real_peername` tells it who
the client really is.
"""

from __future__ import annotations

import asyncio
import errno
import inspect
import ipaddress
import logging
import math
import socket
import ssl as ssl_module
import sys
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final, Literal

from .header_phase import Handler, HeaderPolicy, HeaderProtocol, LogLimiter, Network
from .peers import ConnectionInfo, IPAddress, remember
from .proxy_header import DEFAULT_MAX_SIZE, ProxyHeader
from .proxy_protocol import HeaderParser

__all__ = [
    "DEFAULT_HEADER_TIMEOUT",
    "DEFAULT_MAX_PENDING",
    "ClientConnectedCallback",
    "start_server",
]

log = logging.getLogger("apr_async.server")

ClientConnectedCallback = Callable[
    [asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None] | None
]

#: Seconds a peer has to deliver its whole PROXY header.
DEFAULT_HEADER_TIMEOUT: Final = 5.0
#: Connections allowed to sit in the header phase at once (slow-header floods).
DEFAULT_MAX_PENDING: Final = 1024
#: asyncio's own default buffer limit of a StreamReader.
_STREAM_LIMIT: Final = 2**16
_BIND_ATTEMPTS: Final = 8


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


def _make_handler(
    client_connected_cb: ClientConnectedCallback, toa: bool
) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter, ProxyHeader | None], Awaitable[None]]:
    async def handle(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, header: ProxyHeader | None
    ) -> None:
        remember(writer, ConnectionInfo(header, toa))
        try:
            result = client_connected_cb(reader, writer)
            if inspect.isawaitable(result):
                await result
        except Exception:
            # Log with the peer and close the connection, rather than leave it open and
            # rely on the loop's generic "unhandled exception" report.
            log.exception("client_connected_cb failed for %s", writer.get_extra_info("peername"))
            writer.close()
        except asyncio.CancelledError:
            writer.close()
            if sys.version_info < (3, 12):
                # 3.11's StreamReaderProtocol calls task.exception() on this task when it is
                # done, which raises (and logs an error) if it ends cancelled. Nobody awaits
                # a connection's task, so ending it quietly loses nothing.
                return
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


Factory = Callable[[], asyncio.BaseProtocol]


async def _start_split_stack(factory: Factory, port: int, kwds: dict[str, Any]) -> asyncio.Server:
    """IPv6-only and IPv4 sockets on the same port (no dual-stack socket available)."""
    loop = asyncio.get_running_loop()
    if not _has_ipv6():
        return await loop.create_server(factory, "0.0.0.0", port, **kwds)
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
            return await loop.create_server(factory, hosts, chosen, **kwds)
        except OSError as exc:
            if port != 0 or exc.errno != errno.EADDRINUSE or attempt == _BIND_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


async def _listen(
    factory: Factory, host: str | None, port: int, dualstack: bool, kwds: dict[str, Any]
) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    if not (dualstack and _is_wildcard(host)) or "sock" in kwds or "family" in kwds:
        return await loop.create_server(factory, host, port, **kwds)
    if not socket.has_dualstack_ipv6():
        return await _start_split_stack(factory, port, kwds)
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
        return await loop.create_server(factory, sock=sock, **kwds)
    except BaseException:
        sock.close()
        raise


def _check_positive(name: str, value: object, *, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, not {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number of seconds, not {value!r}")
    return float(value)


def _check_arguments(
    proxy_protocol: object,
    *,
    trusted_proxies: Iterable[str | Network | IPAddress] | str,
    header_timeout: object,
    max_pending_headers: object,
    port: object,
    limit: object,
) -> tuple[tuple[Network, ...], float]:
    """start_server's checks before any socket: the trusted networks and the header timeout."""
    if proxy_protocol not in (None, "v1", "v2", "auto"):
        raise ValueError(f"proxy_protocol must be None, 'v1', 'v2' or 'auto': {proxy_protocol!r}")
    networks = _parse_networks(trusted_proxies)
    if proxy_protocol is not None and not networks:
        raise ValueError("proxy_protocol needs trusted_proxies: headers from anyone else are lies")
    if proxy_protocol is None and networks:
        raise ValueError("trusted_proxies is only meaningful with proxy_protocol")
    timeout = _check_positive("header_timeout", header_timeout)
    assert timeout is not None
    if max_pending_headers is not None and (
        isinstance(max_pending_headers, bool)
        or not isinstance(max_pending_headers, int)
        or max_pending_headers < 1
    ):
        raise ValueError("max_pending_headers must be a positive int or None")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 0xFFFF:
        raise ValueError(f"port must be an int in 0..65535, not {port!r}")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be a positive int, not {limit!r}")
    return networks, timeout


def _header_policy(
    proxy_protocol: Literal["v1", "v2", "auto"],
    *,
    networks: tuple[Network, ...],
    timeout: float,
    max_header_size: int,
    max_pending_headers: int | None,
    handler: Handler,
    limit: int,
    loop: asyncio.AbstractEventLoop,
    kwds: dict[str, Any],
) -> HeaderPolicy:
    """What the header phase of each connection needs; takes the TLS options out of *kwds*.

    TLS runs after the header, on the same connection, so the listening socket itself gets
    no ``ssl``.
    """
    HeaderParser(proxy_protocol, max_size=max_header_size)  # validates max_header_size
    context = kwds.pop("ssl", None)
    if context is not None and not isinstance(context, ssl_module.SSLContext):
        raise TypeError(f"ssl must be an ssl.SSLContext with proxy_protocol, not {context!r}")
    tls_timeouts = {
        name: _check_positive(name, kwds.pop(name, None), optional=True)
        for name in ("ssl_handshake_timeout", "ssl_shutdown_timeout")
    }
    if context is None and any(v is not None for v in tls_timeouts.values()):
        raise ValueError("ssl_handshake_timeout/ssl_shutdown_timeout need ssl")
    return HeaderPolicy(
        proxy_protocol,
        networks,
        timeout,
        max_header_size,
        max_pending_headers,
        handler,
        limit,
        LogLimiter(log, loop.time),
        context,
        tls_timeouts["ssl_handshake_timeout"],
        tls_timeouts["ssl_shutdown_timeout"],
    )


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
    limit: int = _STREAM_LIMIT,
    **kwds: Any,
) -> asyncio.Server:
    """Start a TCP server like :func:`asyncio.start_server`, dual-stack and PROXY-aware.

    ``host`` ``None``, ``""`` or ``"::"`` with ``dualstack=True`` listens on all IPv6 *and*
    IPv4 addresses: one ``IPV6_V6ONLY=0`` socket where the system supports it, else an IPv6
    and an IPv4 socket on the same port. Any other ``host`` (or ``dualstack=False``) is passed
    to :meth:`asyncio.loop.create_server` unchanged. ``limit`` and the other keyword
    arguments (``ssl``, ``ssl_handshake_timeout``, ``backlog``, ``reuse_port``,
    ``start_serving``...) mean what they mean for :func:`asyncio.start_server`.

    With ``proxy_protocol`` (``"v1"``, ``"v2"`` or ``"auto"``) every connection must start
    with a PROXY header, sent by a peer inside ``trusted_proxies`` (networks or addresses;
    IPv4 clients of a dual-stack socket match IPv4 networks). Connections from other peers
    are closed before a byte is read; headers that are malformed, larger than
    ``max_header_size``, cut short, or not complete within ``header_timeout`` seconds close
    the connection too. Neither calls ``client_connected_cb``; both are logged (logger
    ``apr_async.server``, at most 10 records per 10 s per server, so that a flood does not
    flood the log). At most ``max_pending_headers`` connections may be waiting for their
    header; more are closed at once.

    With ``ssl`` as well, the server terminates TLS behind a proxy that passes TLS through
    (HAProxy ``mode tcp`` with ``send-proxy``): the header is read from the raw connection,
    then the TLS handshake runs on the same connection, and the callback gets the decrypted
    stream. ``toa=True`` makes :func:`.real_peername` ask the TOA kernel module.

    Bad arguments raise ``ValueError``/``TypeError`` before any socket is opened.
    """
    networks, timeout = _check_arguments(
        proxy_protocol,
        trusted_proxies=trusted_proxies,
        header_timeout=header_timeout,
        max_pending_headers=max_pending_headers,
        port=port,
        limit=limit,
    )
    handler = _make_handler(client_connected_cb, toa)
    loop = asyncio.get_running_loop()
    factory: Factory
    if proxy_protocol is None:

        def factory() -> asyncio.BaseProtocol:
            reader = asyncio.StreamReader(limit=limit, loop=loop)
            return asyncio.StreamReaderProtocol(reader, lambda r, w: handler(r, w, None), loop=loop)

    else:
        policy = _header_policy(
            proxy_protocol,
            networks=networks,
            timeout=timeout,
            max_header_size=max_header_size,
            max_pending_headers=max_pending_headers,
            handler=handler,
            limit=limit,
            loop=loop,
            kwds=kwds,
        )

        def factory() -> asyncio.BaseProtocol:
            return HeaderProtocol(policy)

    return await _listen(factory, host, port, dualstack, kwds)
