"""FailureTable: recent connection failures per (source, destination, port) (sans-IO).

Time is passed in as ``now``. Ranking puts a pair with a recent failure behind the others
until the failure expires or a success clears it.
"""

from __future__ import annotations

import ipaddress
import itertools
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from apr_async.core.addresses import IPAddress, address_key, parse_address
from apr_async.core.table_inputs import SNAPSHOT_VERSION, check_ip, check_time

__all__ = ["Failure", "FailureTable"]

_ADDRESS_TYPES = (ipaddress.IPv4Address, ipaddress.IPv6Address)


@dataclass(frozen=True, slots=True)
class Failure:
    """A recent connection failure of one (source, destination, port).

    ``last`` is the ``now`` of the latest failure, ``count`` the failures since the entry was
    created, ``error`` a short description of the latest one (e.g. ``"ECONNREFUSED"``).
    """

    last: float
    count: int
    error: str | None


class FailureTable:
    """Recent connection failures keyed by (source, destination, port).

    An entry expires ``ttl`` seconds after its latest failure; a success clears it; ``clear()``
    drops everything (network change). Beyond ``max_entries`` the oldest failure is dropped.
    A zone on an IPv6 address is ignored.

    ``version`` is bumped by every change of the contents (a failure recorded, an entry
    cleared, dropped or expired), so that callers can reuse what they derived from the table
    while it stays the same; :meth:`generation` also drops the entries that expired by
    ``now`` first, which makes it the number to compare. ``next_expiry`` says when the
    earliest entry expires.
    """

    def __init__(self, ttl: float = 600.0, *, max_entries: int = 10_000) -> None:
        ttl = check_time(ttl, "ttl")
        if ttl <= 0:
            raise ValueError(f"ttl must be positive, not {ttl!r}")
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise ValueError(f"max_entries must be a positive int, not {max_entries!r}")
        self.ttl = ttl
        self.max_entries = max_entries
        # (address_key(src), address_key(dst), port) -> (failure, src, dst); ordered oldest
        # failure first so that the size bound drops the stalest entry.
        self._entries: OrderedDict[tuple[int, int, int], tuple[Failure, IPAddress, IPAddress]]
        self._entries = OrderedDict()
        self.version = 0
        # True while the entries' failure times never decrease in dict order (the usual
        # case: a monotonic clock), so the first entry is the one that expires first.
        self._ordered = True
        # The earliest failure time among the entries, valid while version is unchanged.
        self._earliest = math.inf
        self._earliest_version = 0

    def __len__(self) -> int:
        return len(self._entries)

    def _earliest_last(self) -> float:
        if self._earliest_version != self.version:
            entries = self._entries
            if not entries:
                earliest = math.inf
            elif self._ordered:
                earliest = next(iter(entries.values()))[0].last
            else:
                earliest = min(value[0].last for value in entries.values())
            self._earliest = earliest
            self._earliest_version = self.version
        return self._earliest

    @property
    def next_expiry(self) -> float:
        """When the entry with the earliest failure expires (``inf`` for an empty table).

        Until then, and while ``version`` stays the same, every answer of the table stands.
        """
        return self._earliest_last() + self.ttl

    def generation(self, now: float) -> int:
        """``version`` once the entries expired by *now* are dropped.

        Equal numbers from two calls mean that the table gives the same answers at the
        second call's *now* as at the first's (for a *now* that does not go back): nothing
        was recorded, cleared or dropped, and no entry expired in between. Costs a comparison
        unless an entry did expire.
        """
        if self._entries and now - self._earliest_last() >= self.ttl:
            self.prune(now)
        return self.version

    @staticmethod
    def _checked(
        source: IPAddress, destination: IPAddress, port: int
    ) -> tuple[tuple[int, int, int], IPAddress, IPAddress]:
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"port must be an int in 0..65535, not {port!r}")
        src = check_ip(source, "source")
        dst = check_ip(destination, "destination")
        return (address_key(src), address_key(dst), port), src, dst

    def record_failure(
        self,
        source: IPAddress,
        destination: IPAddress,
        port: int,
        now: float,
        *,
        error: str | None = None,
    ) -> None:
        """Remember that connecting from *source* to *destination*:*port* failed at *now*.

        *error* is a short description for explanations, such as ``"ECONNREFUSED"``.
        """
        key, src, dst = self._checked(source, destination, port)
        now = check_time(now, "now")
        if error is not None and not isinstance(error, str):
            raise TypeError("error must be a str or None")
        entries = self._entries
        previous = entries.pop(key, None)
        count = 1
        if previous is not None and now - previous[0].last < self.ttl:
            count = previous[0].count + 1
        if self._ordered and entries and next(reversed(entries.values()))[0].last > now:
            self._ordered = False
        entries[key] = (Failure(now, count, error), src, dst)
        while len(entries) > self.max_entries:
            entries.popitem(last=False)
        self.version += 1

    def record_success(self, source: IPAddress, destination: IPAddress, port: int) -> None:
        """A successful connection clears the entry."""
        if (
            not self._entries
            and type(port) is int
            and 0 <= port <= 65535
            and isinstance(source, _ADDRESS_TYPES)
            and isinstance(destination, _ADDRESS_TYPES)
        ):
            return  # nothing to clear: the checks alone (no keys computed)
        if self._entries.pop(self._checked(source, destination, port)[0], None) is not None:
            self.version += 1

    def failure(
        self, source: IPAddress, destination: IPAddress, port: int, now: float
    ) -> Failure | None:
        """The unexpired failure for this triple, or ``None``."""
        if not self._entries:
            return None
        return self.failure_key((address_key(source), address_key(destination), port), now)

    def failure_key(self, key: tuple[int, int, int], now: float) -> Failure | None:
        """Internal fast path for ranking: :meth:`failure` with a precomputed key."""
        found = self._entries.get(key)
        if found is None:
            return None
        if now - found[0].last >= self.ttl:
            del self._entries[key]
            self.version += 1
            return None
        return found[0]

    def failing(self, source: IPAddress, destination: IPAddress, port: int, now: float) -> bool:
        """True if this triple failed less than ``ttl`` seconds before *now*."""
        return self.failure(source, destination, port, now) is not None

    def prune(self, now: float) -> int:
        """Drop expired entries; return how many were dropped."""
        entries = self._entries
        ttl = self.ttl
        if self._ordered:
            # Oldest first: the expired entries are a prefix.
            dropped = 0
            while entries and now - next(iter(entries.values()))[0].last >= ttl:
                entries.popitem(last=False)
                dropped += 1
        else:
            expired = [k for k, v in entries.items() if now - v[0].last >= ttl]
            for key in expired:
                del entries[key]
            dropped = len(expired)
        if dropped:
            self.version += 1
        if not entries:
            self._ordered = True
        return dropped

    def clear(self) -> None:
        """Forget everything (network change)."""
        self._entries.clear()
        self._ordered = True
        self.version += 1

    def snapshot(self, now: float) -> dict[str, Any]:
        """Unexpired entries as plain JSON-able data; times are ages relative to *now*."""
        now = check_time(now, "now")
        entries = [
            [str(src), str(dst), key[2], now - f.last, f.count, f.error]
            for key, (f, src, dst) in self._entries.items()
            if now - f.last < self.ttl
        ]
        return {"kind": "apr_async.failures", "version": SNAPSHOT_VERSION, "entries": entries}

    def restore(self, data: dict[str, Any], now: float) -> None:
        """Replace the contents with a :meth:`snapshot`, rebasing ages onto *now*.

        Raises ``ValueError`` (and leaves the table unchanged) if *data* is malformed.
        """
        now = check_time(now, "now")
        if not isinstance(data, dict) or data.get("kind") != "apr_async.failures":
            raise ValueError("not a failure table snapshot")
        if data.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"unsupported failure snapshot version {data.get('version')!r}")
        parsed = []
        try:
            for row in data["entries"]:
                src_text, dst_text, port, age, count, error = row
                src, src_zone = parse_address(src_text)
                dst, dst_zone = parse_address(dst_text)
                if src_zone or dst_zone:
                    raise ValueError(f"zones are not stored: {row!r}")
                key, src, dst = self._checked(src, dst, port)
                age = check_time(age, "age")
                if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                    raise ValueError(f"bad count in {row!r}")
                if error is not None and not isinstance(error, str):
                    raise ValueError(f"bad error in {row!r}")
                parsed.append((key, (Failure(now - age, count, error), src, dst)))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed failure snapshot: {exc}") from None
        self._entries.clear()
        for key, value in sorted(parsed, key=lambda item: item[1][0].last):
            self._entries[key] = value
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        # Sorted, unless a malformed snapshot repeated a triple (the first place is kept).
        lasts = [value[0].last for value in self._entries.values()]
        self._ordered = all(a <= b for a, b in itertools.pairwise(lasts))
        self.version += 1
