"""HTTPS records (RFC 9460) in a connection: the Happy Eyeballs v3 resolution step.

When asked (``svcb=True``, or by default for TLS to port 443), :func:`connect_via_svcb`
sends the HTTPS query beside the A/AAAA queries of the origin (one more query in flight, no
extra round trip), waits for the HTTPS answer at most ``SvcbOptions.wait`` seconds after
the origin's first address answer (so a resolver that drops type 65 costs at most that),
then tries the
ServiceMode endpoints in SvcPriority order, each with its port, its ALPN and its address
hints, and falls back to the origin's A/AAAA when none worked or none was usable (HTTPS
clients are "SVCB-optional", RFC 9460 section 3).

TLS: the server name and the certificate check stay the origin's (for HTTPS the
TargetName only says where to connect, not whom to authenticate). On a context the library
built (``ssl=True``) the offered ALPN ids are the endpoint's usable ones; a caller's
``SSLContext`` is never changed (Python cannot read its ALPN list back, so
``SvcbOptions.alpn`` must say what it offers: endpoints outside it are skipped). ECH configs
are exposed on the endpoints, not used: Python's ssl has no ECH.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import socket
import ssl as ssl_module
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from apr_async.connect.options import Options, TLSOptions
from apr_async.connect.source import ranked_source
from apr_async.connect.types import ConnectPair, PairSource
from apr_async.core.svcb import MAX_ALIAS_CHAIN
from apr_async.core.svcb_plan import SvcbEndpoint
from apr_async.errors import parse_host
from apr_async.resolve import pairs
from apr_async.resolve.https import HttpsAnswer, lookup_https
from apr_async.resolve.pairs import PairContext

__all__ = ["SvcbOptions", "check_svcb", "connect_via_svcb"]

log = logging.getLogger("apr_async.connect")

T = TypeVar("T")
HTTPS_PORT = 443


@dataclass(frozen=True, slots=True)
class SvcbOptions:
    """How HTTPS records are used (``svcb=SvcbOptions(...)``; ``svcb=True`` is the default).

    ``wait``: seconds the HTTPS answer is waited for once the origin's first address
    answer is in (the HEv3 draft's short bound; 50 ms, like RFC 8305's Resolution Delay).
    ``alpn``: the ALPN ids the application speaks over TLS, in its preference order
    (``http/1.1`` by default; ``h3`` is never usable: no QUIC here).
    ``max_chain``: how many AliasMode records are followed.
    """

    wait: float = 0.05
    alpn: tuple[str, ...] = ("http/1.1",)
    max_chain: int = MAX_ALIAS_CHAIN

    def __post_init__(self) -> None:
        if (isinstance(self.wait, bool) or not isinstance(self.wait, int | float)
                or not math.isfinite(self.wait) or not 0 <= self.wait <= 2.0):
            raise ValueError(f"SvcbOptions.wait must be seconds in [0, 2]: {self.wait!r}")
        if isinstance(self.alpn, str) or not all(
                isinstance(a, str) and 0 < len(a) < 256 for a in self.alpn) or not self.alpn:
            raise ValueError(f"SvcbOptions.alpn must be a non-empty tuple of ids: {self.alpn!r}")
        object.__setattr__(self, "alpn", tuple(self.alpn))
        if (isinstance(self.max_chain, bool) or not isinstance(self.max_chain, int)
                or not 1 <= self.max_chain <= 16):
            raise ValueError(f"SvcbOptions.max_chain must be in 1-16: {self.max_chain!r}")


def check_svcb(svcb: object, opts: Options, tls: TLSOptions | None) -> SvcbOptions | None:
    """The HTTPS-record settings of one request, ``None`` when records are not used.

    ``svcb=None`` (default) uses them for TLS to port 443; ``True``/``SvcbOptions`` always
    (a name, not a literal, and no custom ``pair_source``); ``False`` never.
    """
    if svcb is None:
        use = tls is not None and opts.port == HTTPS_PORT
        settings = SvcbOptions()
    elif isinstance(svcb, bool):
        use, settings = svcb, SvcbOptions()
    elif isinstance(svcb, SvcbOptions):
        use, settings = True, svcb
    else:
        raise TypeError(f"svcb must be None, a bool or SvcbOptions, not {type(svcb).__name__}")
    if not use or opts.spec.ip is not None or opts.pair_source is not None:
        return None
    if opts.spec.name is None or opts.spec.name == "localhost" or opts.spec.name.endswith(
            (".localhost", ".invalid")) or opts.spec.name == "invalid":
        return None  # answered locally, never by DNS (RFC 6761)
    return settings


async def _first_address(opts: Options) -> None:
    """Return once the origin has its first address (or every family answered without)."""
    async for answer in opts.context.get_resolver().answers(opts.spec, opts.family):
        if answer.addresses:
            return  # the other family's query goes on and fills the cache for the race


async def _https_answer(opts: Options, settings: SvcbOptions) -> HttpsAnswer | None:
    """Query HTTPS beside A/AAAA; the answer if it came within the bound, else None.

    The bound counts from the first address answer (HEv3: the HTTPS answer is waited for a
    short time once an address is known), so a dropped type-65 query costs at most
    ``settings.wait`` on top of what the race would have taken.
    """
    resolver = opts.context.get_resolver()
    loop = asyncio.get_running_loop()
    https = loop.create_task(lookup_https(resolver, opts.host, port=opts.port,
                                          spoken=settings.alpn, max_chain=settings.max_chain))
    addresses = loop.create_task(_first_address(opts))
    try:
        await asyncio.wait({https, addresses}, return_when=asyncio.FIRST_COMPLETED)
        if not https.done() or not https.result().endpoints:
            # No endpoint yet: an address first, then the HTTPS answer only within the bound.
            await asyncio.wait({addresses})
            if not https.done():
                await asyncio.wait({https}, timeout=settings.wait)
        if not https.done():
            log.info("HTTPS answer for %s not in %.0f ms after its first address; not waiting",
                     opts.host, settings.wait * 1000)
            return None
        return https.result()
    finally:
        for task in (https, addresses):
            if not task.done():
                task.cancel()
        await asyncio.wait({https, addresses})
        if not addresses.cancelled():
            addresses.exception()  # DNS errors come as values; a bug would show in the race


def hinted_source(context: PairContext, endpoint: SvcbEndpoint) -> PairSource:
    """The target's ranked pairs, led by the record's address hints.

    HEv3: hints count as answers until A/AAAA arrive; each family's hints are given as that
    family's answer, and the real answer then merges into the schedule (a pair already
    known is not tried twice). Attempts already started on a hint the real answer drops are
    left to finish (not cancelled): the difference is one attempt.
    """
    real = ranked_source(context)

    async def source(host: str, port: int,
                     family: int) -> AsyncIterator[tuple[int, Sequence[ConnectPair]]]:
        for fam, hints in ((socket.AF_INET6, endpoint.record.ipv6hint),
                           (socket.AF_INET, endpoint.record.ipv4hint)):
            if hints and family in (socket.AF_UNSPEC, fam):
                ranked: list[ConnectPair] = []
                for ip in hints:
                    ranked.extend(await pairs.get_addr_pairs(str(ip), port, family=fam,
                                                             context=context))
                yield fam, ranked
        async for answer in real(host, port, family):
            yield answer

    return source


def _endpoint_request(
    opts: Options, tls: TLSOptions | None, endpoint: SvcbEndpoint, library_context: bool,
    *, hints: bool,
) -> tuple[Options, TLSOptions | None]:
    spec = parse_host(endpoint.target)
    source: PairSource | None = None
    if hints and endpoint.hints and opts.context.get_resolver().cached(spec, opts.family) is None:
        source = hinted_source(opts.context, endpoint)
    new = dataclasses.replace(opts, host=endpoint.target, spec=spec, port=endpoint.port,
                              pair_source=source)
    if tls is None:
        return new, None
    context = tls.context
    if library_context:
        # Our own context, so ours to shape: offer what the endpoint and we both speak.
        context = ssl_module.create_default_context()
        context.set_alpn_protocols(list(endpoint.alpn))
    return new, dataclasses.replace(tls, context=context)


async def connect_via_svcb(
    opts: Options,
    tls: TLSOptions | None,
    settings: SvcbOptions,
    create: Callable[[Options, TLSOptions | None], Awaitable[T]],
    *,
    library_context: bool,
) -> T:
    """Connect through the HTTPS records of ``opts.host``, else to the origin as asked.

    ``create`` makes one connection for a request (the ordinary race). An endpoint failing
    with an ``OSError`` (refused, unreachable, TLS) moves on to the next one.
    """
    answer = await _https_answer(opts, settings)
    for endpoint in answer.endpoints if answer is not None else ():
        request, request_tls = _endpoint_request(opts, tls, endpoint, library_context,
                                                 hints=True)
        log.debug("%s: trying HTTPS endpoint %s:%d (%s)", opts.host, endpoint.target,
                  endpoint.port, endpoint.reason)
        try:
            return await create(request, request_tls)
        except OSError as exc:
            log.info("%s: HTTPS endpoint %s:%d (%s) failed: %s", opts.host, endpoint.target,
                     endpoint.port, endpoint.record.describe(), exc)
        if request.pair_source is not None:
            # Stale hints can all fail before A/AAAA arrive, which ends that race early:
            # the endpoint gets one more race on its real addresses alone.
            request, request_tls = _endpoint_request(opts, tls, endpoint, library_context,
                                                     hints=False)
            try:
                return await create(request, request_tls)
            except OSError as exc:
                log.info("%s: HTTPS endpoint %s:%d failed without hints too: %s", opts.host,
                         endpoint.target, endpoint.port, exc)
    if answer is not None and answer.endpoints:
        log.info("%s: every HTTPS endpoint failed; trying %s:%d with A/AAAA",
                 opts.host, opts.host, opts.port)
    return await create(opts, tls)
