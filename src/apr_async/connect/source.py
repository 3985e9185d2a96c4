"""Where the race's pairs come from: the package's ranking, one address family at a time as
its DNS answer arrives (or all at once when every answer is at hand)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable, Sequence

from apr_async.connect.race import wait_cancelled
from apr_async.connect.types import ConnectPair, PairSource, families_for
from apr_async.core.addresses import parse_address
from apr_async.core.reach import without_pointless
from apr_async.resolve import pairs
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
        loop = asyncio.get_running_loop()
        lookups = {
            loop.create_task(pairs.get_addr_pairs(host, port, family=fam, context=context)): fam
            for fam in families
        }
        errors: list[OSError] = []
        found = False
        try:
            pending = set(lookups)
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                ready = sorted(done, key=lambda t: families.index(lookups[t]))
                for index, task in enumerate(ready):
                    fam = lookups[task]
                    last = not pending and index == len(ready) - 1
                    try:
                        ranked = task.result()
                    except OSError as exc:  # gaierror: this family has no address
                        errors.append(exc)
                        if last and not found:
                            break  # nothing at all: raise the name's error below
                        yield fam, []
                        continue
                    if last and found and resolver.cached(host, family) is not None:
                        ranked = await pairs.get_addr_pairs(
                            host, port, family=family, context=context
                        )
                    found = found or bool(ranked)
                    yield fam, without_pointless(ranked, refused)
            if not found:
                errors.sort(key=lambda e: e.errno != socket.EAI_NONAME)
                if errors:
                    raise errors[0]
        finally:
            await wait_cancelled(lookups)
            for task in lookups:
                if not task.cancelled():
                    task.exception()

    return source


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
