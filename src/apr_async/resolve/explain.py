"""Why pairs rank where they do, for people: ``explain``, ``explain_text``, ``format_pairs``."""

from __future__ import annotations

import socket
from collections.abc import Sequence

from apr_async.core.ranking import AddrPair
from apr_async.resolve.pairs import (
    PairContext,
    SockAddr,
    default_context,
    get_addr_pairs,
    service_port,
)
from apr_async.resolve.resolver import Resolver

__all__ = ["explain", "explain_text", "format_pairs"]


async def explain(
    host: str | bytes,
    port: int | str | None,
    *,
    type: int = socket.SOCK_STREAM,
    family: int = socket.AF_UNSPEC,
    resolver: Resolver | None = None,
    context: PairContext | None = None,
) -> list[AddrPair]:
    """Same as :func:`get_addr_pairs`; read each pair's ``reason`` (or use :func:`explain_text`)."""
    return await get_addr_pairs(
        host, port, type=type, family=family, resolver=resolver, context=context
    )


def format_pairs(pairs: Sequence[AddrPair]) -> str:
    """A table of ranked pairs for people: rank, source, destination, RTT, failing, reason."""
    rows = [("#", "source", "destination", "rtt", "reason")]
    for rank, pair in enumerate(pairs, 1):
        rtt = "-" if pair.rtt is None else f"{pair.rtt * 1000:.1f} ms"
        if pair.failing:
            rtt += " (failed recently)"
        rows.append(
            (
                str(rank),
                _sockaddr_text(pair.source),
                _sockaddr_text(pair.destination),
                rtt,
                pair.reason,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = []
    for row in rows:
        cells = [row[i].ljust(widths[i]) for i in range(4)]
        lines.append("  ".join([*cells, row[4]]).rstrip())
    return "\n".join(lines)


async def explain_text(
    host: str | bytes,
    port: int | str | None,
    *,
    type: int = socket.SOCK_STREAM,
    family: int = socket.AF_UNSPEC,
    resolver: Resolver | None = None,
    context: PairContext | None = None,
    svcb: bool = False,
) -> str:
    """:func:`explain` formatted as a table (see :func:`format_pairs`).

    ``svcb=True`` also asks for the name's HTTPS records (RFC 9460) and explains them first:
    each endpoint (target, port, ALPN, the record it came from, why it ranks where it does),
    what was skipped and why, then the ranked pairs of every endpoint, as a connection with
    ``svcb=True`` would try them, and last the name's own pairs (the fallback).
    """
    if not isinstance(svcb, bool):
        raise TypeError(f"svcb must be a bool, not {svcb!r}")
    pairs = await get_addr_pairs(
        host, port, type=type, family=family, resolver=resolver, context=context
    )
    if not svcb:
        return format_pairs(pairs)
    # Lazy: resolve.https builds on this module (its lookups take a PairContext).
    from apr_async.resolve.https import explain_https, svcb_endpoints  # noqa: PLC0415

    ctx = context if context is not None else default_context()
    if resolver is not None:
        ctx = PairContext(resolver=resolver)
    name = host.decode() if isinstance(host, bytes) else host
    svc_port = 443 if port is None else service_port(port, type)
    answer = await svcb_endpoints(name, svc_port, context=ctx)
    parts = ["HTTPS records of " + name + ":", *("  " + line for line in explain_https(answer))]
    for endpoint in answer.endpoints:
        target_pairs = await get_addr_pairs(endpoint.target, endpoint.port, type=type,
                                            family=family, context=ctx)
        parts += ["", f"endpoint #{endpoint.rank + 1} {endpoint.target}:{endpoint.port}:",
                  format_pairs(target_pairs)]
    parts += ["", f"{name} itself (A/AAAA, the fallback):", format_pairs(pairs)]
    return "\n".join(parts)


def _sockaddr_text(addr: SockAddr) -> str:
    if len(addr) == 4:
        ip, port, _flow, scope = addr
        ip_text = f"{ip}%{scope}" if scope else ip
        return f"[{ip_text}]:{port}"
    return f"{addr[0]}:{addr[1]}"
