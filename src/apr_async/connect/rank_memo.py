"""A short-lived memo of ranked pairs, so a client connecting to the same place in a loop
does not re-rank every time."""

from __future__ import annotations

import weakref

from apr_async.connect.types import ConnectPair
from apr_async.core.failures import FailureTable
from apr_async.resolve.pairs import PairContext

__all__ = ["RankMemo", "rank_memo"]


class RankMemo:
    """Ranked pairs reused for a moment, per context, host, port and family.

    Ranking costs tens of microseconds, as much as a loopback connect itself; a client that
    connects to the same place in a loop should not pay it every time. An entry lives for
    ``TTL`` seconds and dies at once when a connection attempt's failure is recorded (a path
    just broke: re-rank now), and when the context's failure table changes in any way (its
    ``version``: a failure recorded or cleared by anyone, the probe service included).
    Latency measurements arriving from elsewhere are seen within ``TTL``; the interface
    snapshot itself is cached longer than that.
    """

    TTL = 1.0
    MAX = 1024

    def __init__(self) -> None:
        # Contexts are mutable dataclasses (unhashable): key by id, check identity by weakref.
        # The failure table is kept with its version: a context may be given a new table.
        self._entries: dict[
            tuple[int, str, int, int],
            tuple[
                weakref.ref[PairContext], float, int, tuple[FailureTable, int], list[ConnectPair]
            ],
        ] = {}
        self._epochs: dict[int, tuple[weakref.ref[PairContext], int]] = {}

    def _epoch(self, context: PairContext) -> int:
        hit = self._epochs.get(id(context))
        return hit[1] if hit is not None and hit[0]() is context else 0

    def get(
        self, context: PairContext, host: str, port: int, family: int, now: float
    ) -> list[ConnectPair] | None:
        """The ranking stored for this place, if still good."""
        hit = self._entries.get((id(context), host, port, family))
        if hit is None:
            return None
        ref, expires, epoch, (failures, version), ranked = hit
        current = self._epochs.get(id(context))  # self._epoch(context), inline
        if (
            ref() is not context
            or now >= expires
            or epoch != (current[1] if current is not None and current[0]() is context else 0)
            or context.failures is not failures
            or failures.version != version
        ):
            return None
        return ranked

    def put(
        self, context: PairContext, key: tuple[str, int, int], ranked: list[ConnectPair], now: float
    ) -> None:
        """Store a fresh ranking."""
        if len(self._entries) >= self.MAX:
            self._entries.clear()
        failures = context.failures
        entry = (
            weakref.ref(context),
            now + self.TTL,
            self._epoch(context),
            (failures, failures.version),
            ranked,
        )
        self._entries[(id(context), *key)] = entry

    def failure(self, context: PairContext) -> None:
        """A failure was recorded in ``context``: its stored rankings are stale."""
        if len(self._epochs) >= self.MAX:
            self._epochs = {k: v for k, v in self._epochs.items() if v[0]() is not None}
        self._epochs[id(context)] = (weakref.ref(context), self._epoch(context) + 1)


#: The memo shared by every connection in the process.
rank_memo = RankMemo()
