"""HTTPS records (RFC 9460) through the resolver: one query per name, aliases followed.

The wire values come from pycares 5 (``HTTPSRecordData``: priority, target and the raw
SvcParam values), the meaning from :mod:`apr_async.core.svcb` and
:mod:`apr_async.core.svcb_plan`. Nothing here raises for DNS trouble: a failed query, a
malformed record or an alias loop gives an :class:`HttpsAnswer` without endpoints and a
log line, and the connection goes on with A/AAAA as if no record existed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pycares

from apr_async.core.svcb import MAX_ALIAS_CHAIN, SvcbError, SvcbRecord, parse_record
from apr_async.core.svcb_plan import SvcbEndpoint, SvcbPlan, plan
from apr_async.resolve.pairs import PairContext, default_context
from apr_async.resolve.resolver import Resolver

__all__ = ["HttpsAnswer", "explain_https", "lookup_https", "svcb_endpoints"]

log = logging.getLogger(__name__)
_RTYPE_HTTPS = pycares.QUERY_TYPE_HTTPS


@dataclass(frozen=True, slots=True)
class HttpsAnswer:
    """What the HTTPS records of ``name`` say: the alias ``chain`` followed, the final
    ``plan`` (``None`` when no record set was usable) and ``error`` (why not)."""

    name: str
    chain: tuple[str, ...]
    plan: SvcbPlan | None
    error: str | None = None

    @property
    def endpoints(self) -> tuple[SvcbEndpoint, ...]:
        """The ServiceMode endpoints in SvcPriority order (empty: use A/AAAA of ``name``)."""
        return self.plan.endpoints if self.plan is not None else ()


def _records(owner: str, result: Any) -> tuple[list[SvcbRecord], list[tuple[str, str]]]:
    records: list[SvcbRecord] = []
    errors: list[tuple[str, str]] = []
    for rr in result.answer:
        if rr.type != _RTYPE_HTTPS:
            continue  # CNAMEs on the way (c-ares follows them)
        data = rr.data
        try:
            records.append(parse_record(int(data.priority), str(data.target),
                                        [(int(k), bytes(v)) for k, v in data.params],
                                        owner=owner))
        except SvcbError as exc:
            text = f"{data.priority} {data.target or '.'} ({len(data.params)} params)"
            log.warning("HTTPS record of %s ignored: %s: %s", owner, text, exc)
            errors.append((text, str(exc)))
    return records, errors


@dataclass(frozen=True, slots=True)
class _Fetched:
    """The decoded HTTPS answer of one name, as kept in the resolver's side cache."""

    records: tuple[SvcbRecord, ...]
    errors: tuple[tuple[str, str], ...]
    failure: str | None = None


async def _fetch(resolver: Resolver, name: str) -> _Fetched:
    """The HTTPS records of ``name``: from the cache, else one query (logged once)."""
    hit = resolver.side_cached(name, _RTYPE_HTTPS)
    if isinstance(hit, _Fetched):
        return hit
    try:
        result = await resolver.query_dns(name, _RTYPE_HTTPS)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # a DNS error means "no record", never a crash
        # NODATA/NXDOMAIN is the common case (no record published): not worth a warning.
        nodata = _is_nodata(exc)
        log.log(logging.DEBUG if nodata else logging.WARNING,
                "HTTPS query for %s failed: %r; using A/AAAA", name, exc)
        fetched = _Fetched((), (), f"query for {name}: {exc!r}")
        if not _is_cancelled(exc):
            resolver.side_cache(name, _RTYPE_HTTPS, fetched,
                                resolver.negative_ttl if nodata else resolver.failure_ttl)
        return fetched
    records, errors = _records(name, result)
    ttls = [rr.ttl for rr in result.answer if rr.type == _RTYPE_HTTPS]
    fetched = _Fetched(tuple(records), tuple(errors))
    resolver.side_cache(name, _RTYPE_HTTPS, fetched,
                        float(min(ttls)) if ttls else resolver.negative_ttl)
    return fetched


async def lookup_https(
    resolver: Resolver,
    name: str,
    *,
    port: int,
    spoken: Sequence[str],
    max_chain: int = MAX_ALIAS_CHAIN,
) -> HttpsAnswer:
    """The HTTPS records of ``name``, AliasMode followed (at most ``max_chain`` names).

    ``port`` and ``spoken`` are as in :func:`apr_async.core.svcb_plan.plan`. Answers are
    cached by the resolver for their TTL (failures for its ``negative_ttl``/``failure_ttl``).
    Cancelling cancels the query in flight.
    """
    origin = name.rstrip(".").lower()
    current = origin
    chain: list[str] = []
    for _ in range(max_chain):
        fetched = await _fetch(resolver, current)
        if fetched.failure is not None:
            return HttpsAnswer(origin, tuple(chain), None, fetched.failure)
        records, errors = fetched.records, fetched.errors
        decided = plan(current, records, port=port, spoken=spoken, errors=errors, chain=chain)
        for text, why in decided.skipped[len(errors):]:  # errors were logged already
            log.debug("HTTPS record of %s not used: %s: %s", current, text, why)
        if decided.alias is None:
            if not decided.endpoints and (records or errors):
                log.info("no usable HTTPS record for %s; using A/AAAA", origin)
            return HttpsAnswer(origin, tuple(chain), decided)
        chain.append(current)
        current = decided.alias
    log.warning("HTTPS alias chain of %s longer than %d; using A/AAAA", origin, max_chain)
    return HttpsAnswer(origin, tuple(chain), None, "alias chain too long")


def _is_cancelled(exc: BaseException) -> bool:
    code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
    return code in (pycares.errno.ARES_ECANCELLED, pycares.errno.ARES_EDESTRUCTION)


def _is_nodata(exc: BaseException) -> bool:
    code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
    return code in (pycares.errno.ARES_ENODATA, pycares.errno.ARES_ENOTFOUND)


async def svcb_endpoints(
    host: str,
    port: int = 443,
    *,
    alpn: Sequence[str] = ("http/1.1",),
    context: PairContext | None = None,
) -> HttpsAnswer:
    """The HTTPS-record endpoints of ``host`` (RFC 9460), as a connection would use them.

    ``alpn`` is what the application speaks over TLS; ``context`` gives the resolver
    (default: the package's). Each endpoint has its target, port, usable ALPN, hints, ECH
    config (exposed only: Python's ssl cannot do ECH) and the record it came from.
    """
    if not isinstance(host, str) or not host:
        raise TypeError("host must be a non-empty str")
    ctx = context if context is not None else default_context()
    return await lookup_https(ctx.get_resolver(), host, port=port, spoken=tuple(alpn))


def explain_https(answer: HttpsAnswer) -> list[str]:
    """Lines saying what the HTTPS records of a name mean and why (for ``explain``/CLI)."""
    lines: list[str] = []
    if answer.chain:
        lines.append("alias chain: " + " -> ".join([*answer.chain, _final(answer)]))
    if answer.plan is None:
        lines.append(f"no HTTPS record used for {answer.name}"
                     + (f" ({answer.error})" if answer.error else "") + ": A/AAAA only")
        return lines
    for e in answer.endpoints:
        extra = []
        if e.hints:
            extra.append("hints " + ",".join(map(str, e.hints)))
        if e.ech is not None:
            extra.append("ech kept, not used (no ECH in Python's ssl)")
        lines.append(f"#{e.rank + 1} {e.target}:{e.port} alpn={','.join(e.alpn)}"
                     f" [{e.record.describe()}] {e.reason}"
                     + ("; " + "; ".join(extra) if extra else ""))
    for text, why in answer.plan.skipped:
        lines.append(f"skipped [{text}]: {why}")
    if not answer.endpoints:
        lines.append(f"no usable endpoint: A/AAAA of {answer.name}")
    return lines


def _final(answer: HttpsAnswer) -> str:
    return answer.plan.name if answer.plan is not None else "?"
