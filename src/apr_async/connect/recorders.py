"""Where attempt outcomes go: a pair context's own tables (no probe service), or a probe
service; either way a failure retires the memoised rankings of that context. A probe service
also hears of the pairs a won race never tried (:func:`report_untried`), so it measures them."""

from __future__ import annotations

import functools
import ipaddress
import logging
from collections.abc import Sequence
from typing import Any

from apr_async.connect.rank_memo import rank_memo
from apr_async.connect.types import AttemptRecorder
from apr_async.core.addresses import IPAddress
from apr_async.core.outcomes import MAX_ATTEMPT_RTT, record_outcome
from apr_async.resolve.pairs import PairContext

__all__ = ["ContextRecorder", "ServiceRecorder", "report_untried"]

log = logging.getLogger("apr_async.connect")


@functools.lru_cache(maxsize=4096)
def _parse_ip(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None


def _ip_of(address: tuple[Any, ...] | None) -> IPAddress | None:
    return _parse_ip(str(address[0])) if address else None


class ContextRecorder:
    """An :class:`AttemptRecorder` feeding a ``PairContext``'s tables (the default when no
    ``service`` is given): failed pairs rank last for a while, a success clears that, and
    every measured RTT (a refusal's too) shapes the next ranking and attempt delay.

    It has no ``record_untried``: without a service nothing would measure untried pairs."""

    def __init__(self, context: PairContext) -> None:
        self._context = context
        # The last pair's parsed addresses: a client connecting to one place over and over
        # (the fast path's memoised pair is the same object each time) parses them once.
        self._last: tuple[Any, IPAddress | None, IPAddress | None] = (None, None, None)
        # The pair and port of the last success record_outcome accepted: the same pair object
        # to the same port passes its family and port checks again, so a repeated success
        # (the fast path's steady state) goes to the tables without them.
        self._ok_pair: Any = None
        self._ok_port = 0

    def record_attempt(
        self, pair: Any, port: int, ok: bool, rtt: float | None, errno: int | None
    ) -> None:
        """Record one attempt's outcome in the context's latency and failure tables."""
        last, src, dst = self._last
        if pair is not last:
            src = _ip_of(getattr(pair, "source", None))
            dst = _ip_of(getattr(pair, "destination", None))
            self._last = (pair, src, dst)
        if src is None or dst is None:
            return
        ctx = self._context
        if (
            ok
            and pair is self._ok_pair
            and port == self._ok_port
            and type(rtt) is float
            and 0.0 <= rtt < MAX_ATTEMPT_RTT
        ):
            # What record_outcome does for a success with an RTT, its checks passed already.
            ctx.latency.record(src, dst, rtt, ctx.clock())
            ctx.failures.record_success(src, dst, port)
            return
        recorded = record_outcome(
            ctx.latency, ctx.failures, src, dst, port, ok=ok, rtt=rtt, errno=errno, now=ctx.clock()
        )
        if recorded and ok:
            self._ok_pair, self._ok_port = pair, port
        elif recorded:
            rank_memo.failure(ctx)


class ServiceRecorder:
    """Forwards outcomes to a service; a failure also retires the memoised rankings."""

    def __init__(self, service: AttemptRecorder, context: PairContext) -> None:
        self._service = service
        self._context = context

    def record_attempt(
        self, pair: Any, port: int, ok: bool, rtt: float | None, errno: int | None
    ) -> None:
        """Forward one attempt's outcome."""
        self._service.record_attempt(pair, port, ok, rtt, errno)
        if not ok:
            rank_memo.failure(self._context)

    def record_untried(self, pairs: Sequence[Any], port: int) -> None:
        """Forward the pairs a race did not measure, if the service takes them
        (:class:`~apr_async.connect.types.UntriedRecorder`); else drop them."""
        forward = getattr(self._service, "record_untried", None)
        if callable(forward):
            forward(pairs, port)


def report_untried(recorder: AttemptRecorder | None, pairs: Sequence[Any], port: int) -> None:
    """Give ``pairs`` to ``recorder.record_untried`` when it has one; a failing recorder is
    logged, never raised into the application's connection."""
    report = getattr(recorder, "record_untried", None)
    if not pairs or not callable(report):
        return
    try:
        report(pairs, port)
    except Exception:
        log.exception("record_untried failed for %r", list(pairs))
