"""Argument checking for ``open_connection`` and friends: everything is validated before any
I/O, so bad arguments raise ``TypeError``/``ValueError`` with a clear message."""

from __future__ import annotations

import math
import socket
import ssl as ssl_module
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from apr_async.connect.recorders import ContextRecorder, ServiceRecorder
from apr_async.connect.types import AttemptRecorder, PairSource
from apr_async.errors import HostSpec, parse_host
from apr_async.resolve.pairs import PairContext, default_context

__all__ = [
    "Options",
    "TLSOptions",
    "check_literal_family",
    "check_port",
    "check_request",
    "check_seconds",
    "pop_compat_kwds",
    "tls_options",
]


@dataclass(slots=True)
class Options:
    """The checked arguments of one connection request."""

    host: str
    spec: HostSpec
    port: int
    family: int
    local_addr: tuple[str, int] | None
    happy_eyeballs_delay: float | None
    interleave: int
    timeout: float | None
    recorder: AttemptRecorder
    pair_source: PairSource | None
    context: PairContext
    #: The service outcomes go to (given, or the default one), ``None`` for the context's
    #: own tables: what the fast path's per-call-site cache checks a hit against.
    service: object = None


def check_port(port: object) -> int:
    """``port`` as an int in 0-65535 (a string of digits is accepted, as asyncio does)."""
    if isinstance(port, str) and port.isdigit():
        port = int(port)
    if isinstance(port, bool) or not isinstance(port, int):
        raise TypeError(f"port must be an int, not {type(port).__name__}")
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be in 0-65535, got {port}")
    return port


#: What glibc's getaddrinfo says of a literal of the other family (systems without
#: EAI_ADDRFAMILY answer EAI_NONAME, as their getaddrinfo does).
_ADDRFAMILY: int = getattr(socket, "EAI_ADDRFAMILY", socket.EAI_NONAME)


def check_literal_family(spec: HostSpec, family: int) -> None:
    """Raise ``socket.gaierror`` as ``getaddrinfo`` would for a literal of the other family.

    ``family=AF_INET`` with an IPv6 literal (or ``AF_INET6`` with an IPv4 one) cannot give
    any address, so asyncio raises the stdlib's ``gaierror`` (``EAI_ADDRFAMILY`` on Linux)
    from its resolution step; the same here, before any I/O. An IPv4-mapped IPv6 literal
    with ``AF_INET`` is left to the resolver (glibc answers it with the IPv4 address).
    """
    ip = spec.ip
    if ip is None or family == socket.AF_UNSPEC:
        return
    if ip.version == 6:
        ok = family == socket.AF_INET6 or ip.ipv4_mapped is not None
    else:
        ok = family == socket.AF_INET
    if not ok:
        raise socket.gaierror(_ADDRFAMILY, "Address family for hostname not supported")


def check_seconds(name: str, value: object, *, allow_zero: bool) -> float | None:
    """``value`` as finite seconds (``None`` passes); ``name`` is for the message."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    bad = value < 0 or (value == 0 and not allow_zero)
    if bad or not math.isfinite(value):
        low = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number of seconds {low}, got {value!r}")
    return float(value)


def check_request(
    host: object,
    port: object,
    *,
    family: object,
    local_addr: object,
    happy_eyeballs_delay: object,
    interleave: object,
    timeout: object,
    service: object,
    pair_source: object,
    context: object,
    default_service: Callable[[], object | None],
) -> Options:
    """Check every argument (raising on the first bad one) and pick where outcomes go.

    Without ``service`` and ``context``, ``default_service()`` names the probe service to
    feed (``None``: the context's own tables are fed).
    """
    spec = parse_host(host)
    checked_port = check_port(port)
    if family not in (socket.AF_UNSPEC, socket.AF_INET, socket.AF_INET6):
        raise ValueError(f"family must be 0, AF_INET or AF_INET6, got {family!r}")
    check_literal_family(spec, cast(int, family))
    checked_local: tuple[str, int] | None = None
    if local_addr is not None:
        if not isinstance(local_addr, tuple | list) or len(local_addr) != 2:
            raise TypeError("local_addr must be a (host, port) tuple")
        local_host = local_addr[0]
        if not isinstance(local_host, str) or not local_host:
            raise TypeError("local_addr host must be a non-empty str")
        checked_local = (local_host, check_port(local_addr[1]))
    delay = check_seconds("happy_eyeballs_delay", happy_eyeballs_delay, allow_zero=True)
    if interleave is None:
        interleave = 1
    if isinstance(interleave, bool) or not isinstance(interleave, int):
        raise TypeError(f"interleave must be an int, not {type(interleave).__name__}")
    if interleave < 1:
        raise ValueError(f"interleave must be at least 1, got {interleave}")
    checked_timeout = check_seconds("timeout", timeout, allow_zero=False)
    if service is not None and not callable(getattr(service, "record_attempt", None)):
        raise TypeError("service must have a record_attempt(pair, port, ok, rtt, errno) method")
    if pair_source is not None and not callable(pair_source):
        raise TypeError("pair_source must be callable")
    if service is None and context is None:
        service = default_service()
    ctx = _context_of(context, service)
    recorder: AttemptRecorder
    if service is None:
        recorder = ContextRecorder(ctx)
    else:
        recorder = ServiceRecorder(cast(AttemptRecorder, service), ctx)
    return Options(
        host=spec.text,
        spec=spec,
        port=checked_port,
        family=cast(int, family),
        local_addr=checked_local,
        happy_eyeballs_delay=delay,
        interleave=interleave,
        timeout=checked_timeout,
        pair_source=cast(PairSource | None, pair_source),
        recorder=recorder,
        context=ctx,
        service=service,
    )


def _context_of(context: object, service: object) -> PairContext:
    if context is None:
        context = getattr(service, "context", None)
    if context is None:
        return default_context()
    if not isinstance(context, PairContext):
        raise TypeError(f"context must be a PairContext, not {type(context).__name__}")
    return context


@dataclass(frozen=True, slots=True)
class TLSOptions:
    """The checked TLS arguments."""

    context: ssl_module.SSLContext | None
    server_hostname: str | None
    handshake_timeout: float | None
    shutdown_timeout: float | None


def tls_options(
    host: str,
    ssl: object,
    server_hostname: object,
    ssl_handshake_timeout: object,
    ssl_shutdown_timeout: object,
) -> TLSOptions | None:
    """Check the TLS arguments (``None`` when ``ssl`` is off); the server name defaults to
    ``host`` without its zone, and ``""`` means no server name, as in asyncio."""
    if ssl is None or ssl is False:
        if server_hostname is not None:
            raise ValueError("server_hostname is only meaningful with ssl")
        if ssl_handshake_timeout is not None:
            raise ValueError("ssl_handshake_timeout is only meaningful with ssl")
        if ssl_shutdown_timeout is not None:
            raise ValueError("ssl_shutdown_timeout is only meaningful with ssl")
        return None
    if ssl is True:
        context = ssl_module.create_default_context()
    elif isinstance(ssl, ssl_module.SSLContext):
        context = ssl
    else:
        raise TypeError(f"ssl must be None, a bool or an SSLContext, not {type(ssl).__name__}")
    if server_hostname is None:
        server_hostname = host.split("%", 1)[0]
    elif not isinstance(server_hostname, str):
        raise TypeError("server_hostname must be a str")
    return TLSOptions(
        context=context,
        server_hostname=server_hostname,
        handshake_timeout=check_seconds(
            "ssl_handshake_timeout", ssl_handshake_timeout, allow_zero=False
        ),
        shutdown_timeout=check_seconds(
            "ssl_shutdown_timeout", ssl_shutdown_timeout, allow_zero=False
        ),
    )


def pop_compat_kwds(kwds: dict[str, Any]) -> tuple[object, bool]:
    """Accept ``asyncio.loop.create_connection`` keywords that make sense here."""
    proto = kwds.pop("proto", 0)
    if proto not in (0, socket.IPPROTO_TCP):
        raise ValueError(f"proto must be 0 or IPPROTO_TCP, got {proto!r}")
    flags = kwds.pop("flags", 0)
    if isinstance(flags, bool) or not isinstance(flags, int):
        raise TypeError("flags must be an int")
    all_errors = kwds.pop("all_errors", False)
    if kwds.get("sock") is not None:
        raise ValueError("sock= is not supported: use asyncio's create_connection for it")
    kwds.pop("sock", None)
    shutdown = kwds.pop("ssl_shutdown_timeout", None)
    if kwds:
        raise TypeError(f"unexpected keyword argument(s): {', '.join(sorted(kwds))}")
    return shutdown, bool(all_errors)
