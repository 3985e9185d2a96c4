"""aiohttp trace signals for :class:`apr_async.aiohttp.AprConnector` (imports aiohttp).

``TCPConnector`` fires the DNS signals from its own resolver, which ``AprConnector`` bypasses:
apr_async resolves inside the race. This module fires them the way ``TCPConnector`` with a
DNS cache does: ``on_dns_cache_hit`` when every answer is at hand (the resolver's cache or
hosts file), else ``on_dns_cache_miss`` and ``on_dns_resolvehost_start``, then
``on_dns_resolvehost_end`` once the race's answers are all in, or once the race no longer
needs them (it won before a slow family answered). IP literals fire nothing, as in aiohttp.
The connection signals (``on_connection_create_start/end``) are aiohttp's own and unchanged.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from apr_async.connect.source import ranked_source
from apr_async.connect.types import ConnectPair, PairSource
from apr_async.resolve.pairs import PairContext, default_context

if TYPE_CHECKING:
    from aiohttp.tracing import Trace

__all__ = ["dns_traces", "protocol_of", "share_winner", "trace_context"]


def trace_context(context: PairContext | None, service: object) -> PairContext:
    """The context whose resolver the race will use (as ``connect`` chooses it)."""
    if context is not None:
        return context
    from_service = getattr(service, "context", None)
    return from_service if isinstance(from_service, PairContext) else default_context()


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


async def dns_traces(
    traces: Sequence[Trace], host: str, name: str, context: PairContext, family: int
) -> PairSource | None:
    """Fire the DNS signals due before the race; return the pair source that fires
    ``on_dns_resolvehost_end`` (``None``: nothing to resolve, the default source is used)."""
    if _is_literal(name):
        return None
    if context.get_resolver().cached(name, family) is not None:
        for trace in traces:
            await trace.send_dns_cache_hit(host)
        return None
    for trace in traces:
        await trace.send_dns_cache_miss(host)
    for trace in traces:
        await trace.send_dns_resolvehost_start(host)
    inner = ranked_source(context)

    async def source(
        query: str, port: int, fam: int
    ) -> AsyncIterator[tuple[int, Sequence[ConnectPair]]]:
        failed = False
        try:
            async for answer in inner(query, port, fam):
                yield answer
        except BaseException as exc:
            # A failed resolution ends without the end signal, as in aiohttp; GeneratorExit
            # is the race closing the source once it no longer needs answers.
            failed = not isinstance(exc, GeneratorExit)
            raise
        finally:
            if not failed:
                for trace in traces:
                    await trace.send_dns_resolvehost_end(host)

    return source


def protocol_of(connection: Any) -> Any:
    """The protocol behind an aiohttp ``ClientResponse``, ``Connection`` or protocol."""
    inner = getattr(connection, "connection", None)  # a ClientResponse
    if inner is not None:
        connection = inner
    protocol = getattr(connection, "protocol", None)  # a Connection
    return protocol if protocol is not None else connection


def share_winner(traces: Sequence[Trace], pair: Any) -> None:
    """Put the winning pair on each trace's ``trace_config_ctx`` (as ``apr_pair``), where
    the ``on_connection_create_end`` handlers (and those after) find it."""
    for trace in traces:
        ctx = getattr(trace, "_trace_config_ctx", None)
        if ctx is not None:
            # a trace_config_ctx_factory object with __slots__ cannot take it
            with contextlib.suppress(AttributeError):
                ctx.apr_pair = pair
