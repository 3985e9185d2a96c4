"""The fast path of a healthy connection: checked arguments reused, one ranked pair, no race.

Most connections a service makes go to a place it connected to a moment ago, with default
arguments, and that place has one usable pair (a numeric host, a name with one address) or
the ranking memo says so. For those, the general path's work is pure overhead next to
``asyncio.open_connection``: checking every argument again, building a schedule, an attempt
log and a race. Here the checked :class:`Options` of a call site are reused (keyed on the
exact host, port, family, service and context), the memoised ranking is consulted, and the
single pair is connected directly with the same :class:`Connecting` attempt the race uses, so
the socket binding, the outcome recording, the leak freedom and the error shapes are those of
the general path. Anything else (a memo miss, several pairs, a name not in the cache) returns
``None`` before any I/O and the caller takes the general path.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Sequence

from apr_async.connect.attempt import Connecting, dispose
from apr_async.connect.errors import AllAttemptsFailedError
from apr_async.connect.lead import connect_lead
from apr_async.connect.options import Options, check_request
from apr_async.connect.rank_memo import rank_memo
from apr_async.connect.stats import single_finished
from apr_async.connect.tls import ProtocolT
from apr_async.connect.types import ConnectPair
from apr_async.resolve.pairs import PairContext, default_context

__all__ = ["fast_options", "fast_request", "open_single"]

#: Call sites remembered per context (a service connecting to many places re-checks the
#: arguments of the others; the cache is cleared when full).
_MAX = 256


# A family is an int or the socket module's own AddressFamily (socket.AF_INET): both hash
# and compare as the number, so they share one cache entry.
_FAMILY_TYPES = (int, socket.AddressFamily)


def fast_options(
    host: object,
    port: object,
    family: object,
    service: object,
    context: object,
    *,
    default_service: Callable[[str, object], object | None],
) -> Options | None:
    """The checked options of a default-argument request, reused across calls; ``None`` when
    the arguments are of a kind the cache does not take (the general path checks them)."""
    if type(host) is not str or type(port) is not int or type(family) not in _FAMILY_TYPES:
        return None  # bool ports, str ports, other int subclasses: check_request judges them
    if service is None and context is None:
        # May change between calls (started, stopped). Given the request, a service
        # created now sends its DNS queries before its start-up work.
        service = default_service(host, family)
    # The context check_request would pick (inline: this runs on every connection); a bad
    # one goes to the general path, which raises the error.
    ctx = context if context is not None else getattr(service, "context", None)
    if ctx is None:
        ctx = default_context()
    elif not isinstance(ctx, PairContext):
        return None
    sites = ctx.call_sites
    key = (host, port, family, id(service))
    hit = sites.get(key)
    # The options hold their service: the identity check makes an id reused by a new
    # service miss. A hit needs no other check: every other argument is at its default.
    # (type() narrows for mypy without typing.cast, which is a call per connection)
    if type(hit) is Options and hit.service is service:
        return hit
    opts = check_request(
        host,
        port,
        family=family,
        local_addr=None,
        happy_eyeballs_delay=None,
        interleave=None,
        timeout=None,
        service=service,
        pair_source=None,
        context=context,
        default_service=lambda: None,  # already asked above
    )
    if opts.context is ctx and (service is None or getattr(service, "context", None) is ctx):
        # Only when the context is the service's own: a context must not keep a foreign
        # service alive (a context and its own service die together, cycle or not).
        if len(sites) >= _MAX:
            sites.clear()
        sites[key] = opts
    return opts


def fast_request(
    host: object,
    port: object,
    family: object,
    service: object,
    context: object,
    *,
    default_service: Callable[[str, object], object | None],
) -> tuple[Options, Sequence[ConnectPair]] | None:
    """The reused options and the memoised ranking of a default-argument request that needs
    no race up front, or ``None``: take the general path. That is a ranking of one pair, or
    of several whose first is not failing (:mod:`apr_async.connect.lead`), and only when
    every answer is at hand (a literal, or a name still in the resolver's cache)."""
    opts = fast_options(host, port, family, service, context, default_service=default_service)
    if opts is None:
        return None
    ctx = opts.context
    if opts.spec.ip is None and not ctx.get_resolver().is_cached(opts.spec, opts.family):
        return None
    ranked = rank_memo.get(ctx, opts.host, opts.port, opts.family, ctx.clock())
    # Several pairs take the lead path unless the first is failing: the schedule skips a
    # failing pair, so the lead would not be the first attempt (the general path then).
    if ranked is None or (len(ranked) != 1 and (not ranked or ranked[0].failing)):
        return None
    return opts, ranked


def _abandon(pair: ConnectPair, attempt: Connecting, exc: BaseException) -> None:
    """claim()'s ownership rule, inline (one coroutine less per connection): a cancellation
    that arrives after the attempt completed closes the socket nobody will take."""
    single_finished(pair, exc)
    dispose(attempt, socket.socket.close)


async def open_single(
    opts: Options,
    ranked: Sequence[ConnectPair],
    protocol_factory: Callable[[], ProtocolT],
    loop: asyncio.AbstractEventLoop,
) -> tuple[asyncio.Transport, ProtocolT]:
    """Connect to the ranking's one pair as a one-pair race would (the same attempt, bound to
    the pair's source, outcome recorded, and the same error, an
    :class:`AllAttemptsFailedError`), or to its lead pair (:func:`connect_lead`) when it has
    several, then ``loop.create_connection(sock=...)``, closing the socket if no transport
    took it (as :func:`apr_async.connect.tls.wrap_socket` does without TLS). One coroutine
    for both: each coroutine layer is a frame, a wake-up and a ``StopIteration`` per
    connection. ``loop`` is the running loop, passed in: in Python 3.11 every
    ``asyncio.get_running_loop()`` is a ``getpid()`` system call."""
    # The success is counted once the transport exists, not when connect() is answered: the
    # count sets the last-winner ContextVar, and a transport made after that would copy the
    # changed context into its reader callback, holding ~100 bytes per open connection that
    # asyncio does not (the general path counts after its transport too, in with_timeout).
    if len(ranked) != 1:
        sock, won = await connect_lead(opts, ranked, loop)
    else:
        won = ranked[0]
        attempt = Connecting(
            loop,
            won,
            port=opts.port,
            bind_to=won.source,
            recorder=opts.recorder,
            delay_override=None,
        )
        try:
            sock = await attempt
        except OSError as exc:
            single_finished(won, exc)
            raise AllAttemptsFailedError.from_attempts(
                opts.host, opts.port, [(won, exc)]) from None
        except BaseException as exc:
            _abandon(won, attempt, exc)
            raise
    taken = False

    def factory() -> ProtocolT:
        nonlocal taken
        taken = True
        return protocol_factory()

    try:
        made = await loop.create_connection(factory, sock=sock)
    except BaseException as exc:
        # Once the protocol exists the loop's transport owns the socket (see wrap_socket).
        if not taken:
            sock.close()
        if won is not None:
            single_finished(won, exc)
        raise
    if won is not None:
        single_finished(won, None)
    return made
