"""Where the race's pairs come from: the package's ranking, one address family at a time as
its DNS answer arrives (or all at once when every answer is at hand)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable, Sequence

from apr_async.connect.race import wait_cancelled
from apr_async.connect.types import ConnectPair, PairSource, families_for
from apr_async.core.addresses import parse_address
from apr_async.core.ranking import AddrPair
from apr_async.core.reach import without_pointless
from apr_async.errors import parse_host
from apr_async.resolve import pairs
from apr_async.resolve.answers import FamilyAnswer, Resolution
from apr_async.resolve.pairs import PairContext

__all__ = ["filtered", "ranked_source", "refused_by"]


def refused_by(context: PairContext, port: int) -> Callable[[ConnectPair], bool]:
    """Whether a pair's recorded failure on ``port`` is a refusal (its destination answered:
    the port is closed there), for :func:`apr_async.core.reach.without_pointless`."""

    def refused(pair: ConnectPair) -> bool:
        source = pair.source
        if source is None:
            return False
        failure = context.failures.failure(parse_address(source[0])[0],
                                           parse_address(pair.destination[0])[0], port,
                                           context.clock())
        return failure is not None and failure.error == "ECONNREFUSED"

    return refused


def ranked_source(context: PairContext) -> PairSource:
    """The default pairs: ``apr_async.resolve.pairs`` ranking, one family at a time as answers come.

    With every answer at hand (a literal, the hosts file or a warm cache) the whole ranking
    comes at once, so the ranking alone decides which family goes first. Otherwise each
    family's pairs are yielded as its answer arrives, and once both are in, the re-ranking
    of all of them (from the now warm cache) so that later pairs join in rank order.
    """

    async def source(
        host: str, port: int, family: int
    ) -> AsyncIterator[tuple[int, Sequence[ConnectPair]]]:
        families = families_for(family)
        resolver = context.get_resolver()
        refused = refused_by(context, port)
        if resolver.cached(host, family) is not None:
            ranked = await pairs.get_addr_pairs(host, port, family=family, context=context)
            yield socket.AF_UNSPEC, without_pointless(ranked, refused)
            return
        # The lookups only resolve; ranking happens here, once per batch of answers. Both
        # answers usually land in the same loop turn (A and AAAA go out back to back), and
        # then one ranking of every address replaces two per-family rankings and a re-ranking:
        # in a fresh process each ranking builds its plan from scratch (0.4-0.6 ms each).
        spec = parse_host(host)
        loop = asyncio.get_running_loop()
        lookups = {loop.create_task(pairs.resolve_host(spec, fam, resolver)): fam
                   for fam in families}
        errors: list[OSError] = []
        answered: list[FamilyAnswer] = []  # the families with addresses, so far
        announced = False  # some family's answer was passed on already
        try:
            pending = set(lookups)
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                fresh: list[tuple[int, tuple[FamilyAnswer, ...]]] = []
                for task in sorted(done, key=lambda t: families.index(lookups[t])):
                    try:
                        fresh.append((lookups[task], task.result().answers))
                    except OSError as exc:  # gaierror: this family has no address
                        errors.append(exc)
                        fresh.append((lookups[task], ()))
                for _fam, answers in fresh:
                    answered.extend(answers)
                if not answered:
                    if pending:  # the schedule stops waiting for these families
                        for fam, _answers in fresh:
                            yield fam, []
                        announced = True
                    continue  # all in and nothing found: raise the name's error below
                if pending:
                    # Some family still to come: pass on each new family's own ranking.
                    for fam, answers in fresh:
                        yield fam, without_pointless(
                            _rank(Resolution(spec, answers), port, context), refused)
                    announced = True
                    continue
                # Every answer is in: the ranking of all of them, so that later pairs join
                # in rank order (the schedule takes it as the last family's answer).
                yield (fresh[-1][0] if announced else socket.AF_UNSPEC), without_pointless(
                    _rank(Resolution(spec, tuple(answered)), port, context), refused)
            if not answered:
                errors.sort(key=lambda e: e.errno != socket.EAI_NONAME)
                if errors:
                    raise errors[0]
        finally:
            await wait_cancelled(lookups)
            for task in lookups:
                if not task.cancelled():
                    task.exception()

    return source


def _rank(resolution: Resolution, port: int, context: PairContext) -> list[AddrPair]:
    return pairs.rank_addresses(resolution.addresses, port, context, resolution.host.text)


async def filtered(
    answers: AsyncIterator[tuple[int, Sequence[ConnectPair]]], families: tuple[int, ...]
) -> AsyncIterator[tuple[int, Sequence[ConnectPair]]]:
    """Drop pairs of families we cannot use (for instance with ``local_addr``)."""
    try:
        async for family, pairs in answers:
            if family in families or family == socket.AF_UNSPEC:
                yield family, [p for p in pairs if p.family in families]
    finally:
        aclose = getattr(answers, "aclose", None)
        if aclose is not None:
            await aclose()
