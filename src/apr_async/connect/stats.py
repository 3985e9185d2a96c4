"""Counters of what the races did, for :mod:`apr_async.metrics`.

One call per finished race (:func:`race_finished`, from ``api``) reads the race's
:class:`~apr_async.connect.errors.AttemptLog` and adds a handful of integers: it does no I/O,
takes no lock (the event loop runs one race step at a time per thread; the counters are
approximate across threads, which is what a metric may be) and costs O(attempts) on a
failure, O(1) on a success, whatever the number of races before.
"""

from __future__ import annotations

import errno as errno_codes
import socket
from collections import Counter
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from apr_async.connect.errors import AttemptLog

__all__ = ["ConnectStats", "last_winner", "race_finished", "single_finished", "stats"]

_FAMILY_NAMES: dict[int, str] = {int(socket.AF_INET): "ipv4", int(socket.AF_INET6): "ipv6"}


def family_name(family: int) -> str:
    """``ipv4`` / ``ipv6`` (or the number, for anything else)."""
    return _FAMILY_NAMES.get(family, str(family))


def errno_name(number: int | None) -> str:
    """``ECONNREFUSED`` for 111; ``none`` for an error without errno (e.g. TLS)."""
    if number is None:
        return "none"
    return errno_codes.errorcode.get(number, str(number))


@dataclass
class ConnectStats:
    """Totals since the process started (or :meth:`reset`).

    ``connections``: races won, per winning family; ``failed``: races that raised (every
    attempt failed, the timeout expired, the name did not resolve) or were cancelled (a
    caller's own timeout); ``attempts``: how many
    races started exactly N attempts (key N); ``fallbacks``: races won by a family other than
    the family of their first attempt, per winning family; ``attempt_failures``: failed
    attempts by errno name (``ETIMEDOUT``, ``ECONNREFUSED``, ``none``).
    """

    connections: Counter[str] = field(default_factory=Counter)
    failed: int = 0
    attempts: Counter[int] = field(default_factory=Counter)
    fallbacks: Counter[str] = field(default_factory=Counter)
    attempt_failures: Counter[str] = field(default_factory=Counter)

    def reset(self) -> None:
        """Start every counter again from zero (tests, or a scrape-and-reset exporter)."""
        self.connections.clear()
        self.failed = 0
        self.attempts.clear()
        self.fallbacks.clear()
        self.attempt_failures.clear()


stats = ConnectStats()

#: The pair that won the last race finished in this context (task): an integration reads it
#: right after awaiting a connection, to tell which pair won and why (``pair.reason``),
#: without the connect API returning more than asyncio's does.
last_winner: ContextVar[Any] = ContextVar("apr_async_last_winner", default=None)


def race_finished(log: AttemptLog, error: BaseException | None) -> None:
    """Count one race: won when ``error`` is None (the log's one unfinished pair won)."""
    started = log.started_count
    if started:
        stats.attempts[started] += 1
    for _, exc in log.failures:
        number = getattr(exc, "errno", None)
        stats.attempt_failures[errno_name(number if isinstance(number, int) else None)] += 1
    if error is not None:
        stats.failed += 1
        return
    # After a win the race drops every other attempt, so the winner is the one left.
    unfinished = log.unfinished
    if not unfinished:
        return
    winner = unfinished[-1]
    last_winner.set(winner)
    family = int(getattr(winner, "family", 0))
    name = family_name(family)
    stats.connections[name] += 1
    first = log.first_family
    if first is not None and first != family:
        stats.fallbacks[name] += 1


def single_finished(pair: Any, error: BaseException | None) -> None:
    """Count one race of the one-pair fast path (:mod:`apr_async.connect.fast`): one attempt,
    no fallback possible. O(1) and no allocation on a success, like :func:`race_finished`."""
    stats.attempts[1] += 1
    if error is not None:
        if isinstance(error, OSError):  # a cancellation is no failed attempt, as in a race
            number = error.errno
            stats.attempt_failures[errno_name(number if isinstance(number, int) else None)] += 1
        stats.failed += 1
        return
    last_winner.set(pair)
    family = pair.family
    stats.connections[_FAMILY_NAMES.get(family) or family_name(int(family))] += 1
