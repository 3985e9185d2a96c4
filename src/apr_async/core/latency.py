"""Per-(source, destination) latency and failure memory (sans-IO: time is passed in as ``now``).

:class:`LatencyTable` keeps an EWMA of the round-trip time per (source, destination) and lets
an unmeasured destination inherit from measured neighbours: the destinations measured from
the same source are kept in a path-compressed binary trie (one per source and family), so the
longest matching known prefix is found by walking at most one node per bit of the address,
whatever the number of entries. Every trie node keeps aggregates of its subtree, which makes
the inherited estimate (mean EWMA of the destinations under the prefix, their minimum, ...)
an O(1) read once the node is found, and keeps updates O(depth).

:class:`FailureTable` remembers recent connection failures per (source, destination, port).
"""

from __future__ import annotations

import errno as errno_codes
import ipaddress
import itertools
import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from apr_async.core.addresses import IPAddress, address_key, parse_address

__all__ = ["Estimate", "Failure", "FailureTable", "LatencyTable", "record_outcome"]

_SNAPSHOT_VERSION: Final = 1


@dataclass(frozen=True, slots=True)
class Estimate:
    """What is known about the round-trip time from a source to a destination.

    Times are seconds. ``rtt`` is the EWMA (``None`` if no sample succeeded yet), ``last`` the
    latest RTT sample, ``min`` the smallest, ``samples`` the number of RTT samples, ``loss``
    the fraction of the recent probes (the loss window) that got no answer, ``updated`` the
    ``now`` of the latest record. When ``inherited`` is true the destination itself was never
    measured: the numbers summarise the ``destinations`` measured destinations that share the
    longest known prefix with it (``rtt`` is the mean of their EWMAs, ``min`` their minimum,
    ``samples`` their total, ``last`` the latest sample of the most recently updated one).
    """

    rtt: float | None
    last: float | None
    min: float | None
    samples: int
    loss: float
    updated: float
    inherited: bool = False
    prefix_len: int | None = None
    destinations: int = 1
    _prefix_value: int = field(default=0, repr=False, compare=False)
    _version: int = field(default=6, repr=False, compare=False)

    @property
    def prefix(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
        """The prefix the estimate was inherited from (``None`` for an exact estimate)."""
        if self.prefix_len is None:
            return None
        if self._version == 4:
            return ipaddress.IPv4Network((self._prefix_value, self.prefix_len))
        return ipaddress.IPv6Network((self._prefix_value, self.prefix_len))


class _Node:
    """A trie node: a leaf is one measured destination, an inner node a shared prefix.

    Inner nodes always have two children (path compression). ``agg_*`` summarise the subtree.
    """

    __slots__ = (
        "address",
        "agg_count",
        "agg_last",
        "agg_loss",
        "agg_min",
        "agg_rtt_count",
        "agg_rtt_sum",
        "agg_samples",
        "agg_updated",
        "children",
        "estimate",
        "ewma",
        "fill",
        "inherited",
        "key",
        "last",
        "lost_bits",
        "min",
        "parent",
        "plen",
        "samples",
        "updated",
    )

    def __init__(self, key: int, plen: int, address: IPAddress | None = None) -> None:
        self.key = key
        self.plen = plen
        self.address = address
        # Inherited estimates handed out from this subtree, by prefix length; dropped
        # whenever the aggregates change, so repeated lookups allocate nothing.
        self.inherited: dict[int, Estimate] | None = None
        self.parent: _Node | None = None
        self.children: list[_Node | None] = [None, None]
        # Leaf measurements.
        self.ewma: float | None = None
        self.last: float | None = None
        self.min: float | None = None
        self.samples = 0
        self.lost_bits = 0
        self.fill = 0
        self.updated = 0.0
        self.estimate: Estimate | None = None
        # Subtree aggregates.
        self.agg_count = 0
        self.agg_rtt_count = 0
        self.agg_rtt_sum = 0.0
        self.agg_min: float | None = None
        self.agg_samples = 0
        self.agg_loss = 0.0
        self.agg_updated = -math.inf
        self.agg_last: float | None = None

    def loss(self) -> float:
        return self.lost_bits.bit_count() / self.fill if self.fill else 0.0

    def refresh_leaf(self) -> None:
        self.inherited = None
        self.agg_count = 1
        self.agg_rtt_count = 0 if self.ewma is None else 1
        self.agg_rtt_sum = 0.0 if self.ewma is None else self.ewma
        self.agg_min = self.min
        self.agg_samples = self.samples
        self.agg_loss = self.loss()
        self.agg_updated = self.updated
        self.agg_last = self.last
        self.estimate = None  # built on the next lookup: most entries are never read

    def exact(self) -> Estimate:
        estimate = self.estimate
        if estimate is None:
            estimate = self.estimate = Estimate(
                rtt=self.ewma,
                last=self.last,
                min=self.min,
                samples=self.samples,
                loss=self.agg_loss,
                updated=self.updated,
            )
        return estimate

    def refresh_inner(self) -> None:
        a, b = self.children
        assert a is not None and b is not None
        self.inherited = None
        self.agg_count = a.agg_count + b.agg_count
        self.agg_rtt_count = a.agg_rtt_count + b.agg_rtt_count
        self.agg_rtt_sum = a.agg_rtt_sum + b.agg_rtt_sum
        if a.agg_min is None:
            self.agg_min = b.agg_min
        elif b.agg_min is None:
            self.agg_min = a.agg_min
        else:
            self.agg_min = min(a.agg_min, b.agg_min)
        self.agg_samples = a.agg_samples + b.agg_samples
        self.agg_loss = a.agg_loss + b.agg_loss
        newer = a if a.agg_updated >= b.agg_updated else b
        self.agg_updated = newer.agg_updated
        self.agg_last = newer.agg_last


def _check_ip(value: object, what: str) -> IPAddress:
    if not isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        raise TypeError(f"{what} must be an IPv4Address or IPv6Address, not {type(value).__name__}")
    if isinstance(value, ipaddress.IPv6Address) and value.scope_id is not None:
        return ipaddress.IPv6Address(int(value))
    return value


def _check_time(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, not {value!r}")
    return float(value)


class _SourceIndex:
    """Everything measured from one source: exact entries and one trie per family."""

    __slots__ = ("address", "leaves", "roots")

    def __init__(self, address: IPAddress) -> None:
        self.address = address
        self.leaves: dict[int, _Node] = {}  # by address_key of the destination
        self.roots: list[_Node | None] = [None, None]  # [IPv4, IPv6]


class LatencyTable:
    """EWMA round-trip time per (source, destination), with prefix inheritance and a size bound.

    ``prefix_v6`` / ``prefix_v4`` are the shortest prefixes an unmeasured destination may
    inherit from (a destination sharing less than that with every measured one gets no
    estimate). ``alpha`` is the EWMA weight of a new sample; ``loss_window`` the number of
    recent probes the loss fraction covers. Beyond ``max_entries`` the entry updated least
    recently is evicted: a lookup does not refresh an entry, because reading a measurement
    does not make it any fresher.

    Addresses are ``IPv4Address`` / ``IPv6Address`` objects; a zone is ignored. Memory is
    about 0.7 kB per entry (70 MB at the default bound, which real tables rarely approach).
    """

    def __init__(
        self,
        *,
        prefix_v6: int = 32,
        prefix_v4: int = 20,
        alpha: float = 0.3,
        max_entries: int = 100_000,
        loss_window: int = 16,
    ) -> None:
        for name, value, top in (("prefix_v6", prefix_v6, 128), ("prefix_v4", prefix_v4, 32)):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= top:
                raise ValueError(f"{name} must be an int in 0..{top}, not {value!r}")
        if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], not {alpha!r}")
        for name, count in (("max_entries", max_entries), ("loss_window", loss_window)):
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise ValueError(f"{name} must be a positive int, not {count!r}")
        self.prefix_v6 = prefix_v6
        self.prefix_v4 = prefix_v4
        self.alpha = float(alpha)
        self.max_entries = max_entries
        self.loss_window = loss_window
        self._window_mask = (1 << loss_window) - 1
        self._sources: dict[int, _SourceIndex] = {}  # by address_key of the source
        # Bumped by every change, so that callers can reuse what they derived from the table.
        self.version = 0
        self._lru: OrderedDict[tuple[int, int], _Node] = OrderedDict()

    def __len__(self) -> int:
        return len(self._lru)

    def clear(self) -> None:
        """Forget everything (for instance on a network change)."""
        self._sources.clear()
        self._lru.clear()
        self.version += 1

    # --- recording ------------------------------------------------------------------------

    def record(
        self, source: IPAddress, destination: IPAddress, rtt: float | None, now: float
    ) -> None:
        """Record one probe result from *source* to *destination*: *rtt* seconds, or ``None``
        for a probe that got no answer."""
        src = _check_ip(source, "source")
        dst = _check_ip(destination, "destination")
        if src.version != dst.version:
            raise ValueError(f"source {src} and destination {dst} are of different families")
        if rtt is not None:
            rtt = _check_time(rtt, "rtt")
            if rtt < 0:
                raise ValueError(f"rtt must not be negative, not {rtt!r}")
        now = _check_time(now, "now")
        leaf = self._leaf(src, dst)
        if rtt is None:
            leaf.lost_bits = ((leaf.lost_bits << 1) | 1) & self._window_mask
        else:
            leaf.lost_bits = (leaf.lost_bits << 1) & self._window_mask
            leaf.ewma = (
                rtt if leaf.ewma is None else self.alpha * rtt + (1 - self.alpha) * leaf.ewma
            )
            leaf.last = rtt
            leaf.min = rtt if leaf.min is None else min(leaf.min, rtt)
            leaf.samples += 1
        leaf.fill = min(leaf.fill + 1, self.loss_window)
        leaf.updated = now
        self._refresh_path(leaf)
        self.version += 1

    def _leaf(self, src: IPAddress, dst: IPAddress) -> _Node:
        lru = self._lru
        src_key = address_key(src)
        dst_key = address_key(dst)
        key = (src_key, dst_key)
        leaf = lru.get(key)
        if leaf is not None:
            lru.move_to_end(key)
            return leaf
        index = self._sources.get(src_key)
        if index is None:
            index = self._sources[src_key] = _SourceIndex(src)
        leaf = _Node(int(dst), dst.max_prefixlen, dst)
        self._insert(index, dst.version == 6, leaf)
        index.leaves[dst_key] = leaf
        lru[key] = leaf
        while len(lru) > self.max_entries:
            self._evict()
        return leaf

    def _evict(self) -> None:
        (src_key, dst_key), leaf = self._lru.popitem(last=False)
        index = self._sources[src_key]
        del index.leaves[dst_key]
        family = 1 if leaf.plen == 128 else 0
        parent = leaf.parent
        if parent is None:
            index.roots[family] = None
        else:
            sibling = parent.children[1] if parent.children[0] is leaf else parent.children[0]
            assert sibling is not None
            grand = parent.parent
            sibling.parent = grand
            if grand is None:
                index.roots[family] = sibling
            else:
                grand.children[0 if grand.children[0] is parent else 1] = sibling
                self._refresh_inner_path(grand)
        if not index.leaves:
            del self._sources[src_key]

    @staticmethod
    def _insert(index: _SourceIndex, v6: bool, leaf: _Node) -> None:
        family = 1 if v6 else 0
        bits = leaf.plen
        value = leaf.key
        node = index.roots[family]
        if node is None:
            index.roots[family] = leaf
            return
        while True:
            plen = node.plen
            common = plen - ((value ^ node.key) >> (bits - plen)).bit_length()
            if common < plen:
                # Split the edge above node: a new inner node holds the shared prefix.
                inner = _Node((value >> (bits - common)) << (bits - common), common)
                parent = node.parent
                inner.parent = parent
                if parent is None:
                    index.roots[family] = inner
                else:
                    parent.children[0 if parent.children[0] is node else 1] = inner
                new_bit = (value >> (bits - 1 - common)) & 1
                inner.children[new_bit] = leaf
                inner.children[1 - new_bit] = node
                node.parent = inner
                leaf.parent = inner
                return
            # Inner nodes always have two children and leaves are full length, so the walk
            # can only stop above by splitting.
            child = node.children[(value >> (bits - 1 - plen)) & 1]
            assert child is not None
            node = child

    @staticmethod
    def _refresh_path(leaf: _Node) -> None:
        leaf.refresh_leaf()
        if leaf.parent is not None:
            LatencyTable._refresh_inner_path(leaf.parent)

    @staticmethod
    def _refresh_inner_path(node: _Node | None) -> None:
        while node is not None:
            node.refresh_inner()
            node = node.parent

    # --- lookups --------------------------------------------------------------------------

    def estimate(self, source: IPAddress, destination: IPAddress) -> Estimate | None:
        """The estimate for *destination* from *source*.

        Exact if that pair was measured; otherwise inherited from the longest prefix that
        *destination* shares with destinations measured from the same *source*, if that
        prefix is at least ``prefix_v6`` / ``prefix_v4`` long; otherwise ``None``.
        Costs at most one step per bit of the address, however many entries there are.
        """
        index = self._sources.get(address_key(source))
        if index is None:
            return None
        return self._lookup(index, destination)

    def for_source(self, source: IPAddress) -> Callable[[IPAddress], Estimate | None] | None:
        """A lookup function bound to *source*, or ``None`` if nothing was measured from it.

        For callers that look up many destinations from the same source (ranking).
        """
        index = self._sources.get(address_key(source))
        if index is None:
            return None

        def lookup(destination: IPAddress) -> Estimate | None:
            return self._lookup(index, destination)

        return lookup

    def _lookup(self, index: _SourceIndex, destination: IPAddress) -> Estimate | None:
        value = int(destination)
        v6 = isinstance(destination, ipaddress.IPv6Address)
        return self.lookup_key(index, value if v6 else ~value, value, v6)

    def source_index(self, source_key: int) -> _SourceIndex | None:
        """Internal fast path for ranking: the index of a source by its ``address_key``."""
        return self._sources.get(source_key)

    def lookup_key(
        self, index: _SourceIndex, dst_key: int, value: int, v6: bool
    ) -> Estimate | None:
        """Internal fast path for ranking: look up a destination given as precomputed ints."""
        leaf = index.leaves.get(dst_key)
        if leaf is not None:
            return leaf.exact()
        node = index.roots[1 if v6 else 0]
        if node is None:
            return None
        bits = 128 if v6 else 32
        while True:
            plen = node.plen
            common = plen - ((value ^ node.key) >> (bits - plen)).bit_length()
            if common < plen or plen == bits:
                break
            child = node.children[(value >> (bits - 1 - plen)) & 1]
            if child is None:  # pragma: no cover - inner nodes always have two children
                break
            node = child
        if common < (self.prefix_v6 if v6 else self.prefix_v4):
            return None
        cache = node.inherited
        if cache is None:
            cache = node.inherited = {}
        else:
            found = cache.get(common)
            if found is not None:
                return found
        estimate = cache[common] = Estimate(
            rtt=node.agg_rtt_sum / node.agg_rtt_count if node.agg_rtt_count else None,
            last=node.agg_last,
            min=node.agg_min,
            samples=node.agg_samples,
            loss=node.agg_loss / node.agg_count,
            updated=node.agg_updated,
            inherited=True,
            prefix_len=common,
            destinations=node.agg_count,
            _prefix_value=(value >> (bits - common)) << (bits - common),
            _version=6 if v6 else 4,
        )
        return estimate

    # --- persistence ----------------------------------------------------------------------

    def snapshot(self, now: float) -> dict[str, Any]:
        """The table as plain JSON-able data; times are stored as ages relative to *now*."""
        now = _check_time(now, "now")
        entries = [
            [
                str(self._sources[src_key].address),
                str(leaf.address),
                leaf.ewma,
                leaf.last,
                leaf.min,
                leaf.samples,
                leaf.lost_bits,
                leaf.fill,
                now - leaf.updated,
            ]
            for (src_key, _), leaf in self._lru.items()
        ]
        return {"kind": "apr_async.latency", "version": _SNAPSHOT_VERSION, "entries": entries}

    def restore(self, data: dict[str, Any], now: float) -> None:
        """Replace the contents with a :meth:`snapshot`, rebasing ages onto *now*.

        Raises ``ValueError`` (and leaves the table unchanged) if *data* is malformed.
        """
        now = _check_time(now, "now")
        if not isinstance(data, dict) or data.get("kind") != "apr_async.latency":
            raise ValueError("not a latency table snapshot")
        if data.get("version") != _SNAPSHOT_VERSION:
            raise ValueError(f"unsupported latency snapshot version {data.get('version')!r}")
        parsed = []
        try:
            for row in data["entries"]:
                src_text, dst_text, ewma, last, minimum, samples, lost, fill, age = row
                src, src_zone = parse_address(src_text)
                dst, dst_zone = parse_address(dst_text)
                if src.version != dst.version or src_zone or dst_zone:
                    raise ValueError(f"bad addresses in {row!r}")
                for value in (ewma, last, minimum):
                    if value is not None and _check_time(value, "rtt") < 0:
                        raise ValueError(f"negative rtt in {row!r}")
                for count in (samples, lost, fill):
                    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                        raise ValueError(f"bad counter in {row!r}")
                age = _check_time(age, "age")
                parsed.append((src, dst, ewma, last, minimum, samples, lost, fill, age))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed latency snapshot: {exc}") from None
        self.clear()
        # Oldest first, so that the eviction order survives the round trip.
        parsed.sort(key=lambda row: -row[8])
        for src, dst, ewma, last, minimum, samples, lost, fill, age in parsed:
            leaf = self._leaf(src, dst)
            leaf.ewma = None if ewma is None else float(ewma)
            leaf.last = None if last is None else float(last)
            leaf.min = None if minimum is None else float(minimum)
            leaf.samples = samples
            leaf.lost_bits = lost & self._window_mask
            leaf.fill = min(fill, self.loss_window)
            leaf.updated = now - float(age)
            self._refresh_path(leaf)
        self.version += 1


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
        ttl = _check_time(ttl, "ttl")
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
        src = _check_ip(source, "source")
        dst = _check_ip(destination, "destination")
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
        now = _check_time(now, "now")
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
        now = _check_time(now, "now")
        entries = [
            [str(src), str(dst), key[2], now - f.last, f.count, f.error]
            for key, (f, src, dst) in self._entries.items()
            if now - f.last < self.ttl
        ]
        return {"kind": "apr_async.failures", "version": _SNAPSHOT_VERSION, "entries": entries}

    def restore(self, data: dict[str, Any], now: float) -> None:
        """Replace the contents with a :meth:`snapshot`, rebasing ages onto *now*.

        Raises ``ValueError`` (and leaves the table unchanged) if *data* is malformed.
        """
        now = _check_time(now, "now")
        if not isinstance(data, dict) or data.get("kind") != "apr_async.failures":
            raise ValueError("not a failure table snapshot")
        if data.get("version") != _SNAPSHOT_VERSION:
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
                age = _check_time(age, "age")
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


#: An attempt's RTT beyond this (seconds) cannot be right: the sample is dropped.
_MAX_ATTEMPT_RTT: Final = 3600.0


def record_outcome(
    latency: LatencyTable,
    failures: FailureTable,
    source: IPAddress,
    destination: IPAddress,
    port: int,
    *,
    ok: bool,
    rtt: float | None,
    errno: int | None,
    now: float,
) -> bool:
    """Record one connection attempt's outcome in both tables; ``False`` if it was dropped.

    A success clears the pair's failure; a failure is remembered under its errno name (such
    as ``"ECONNREFUSED"``). The RTT is recorded when there is one (a refusal measured the
    path too); a failure without one counts as a loss. A sample that cannot be right (families
    differ, *rtt* negative, not a number or over an hour, *port* outside 1..65535) is dropped
    whole and nothing changes: callers are connectors, which must not fail over bookkeeping.
    """
    valid_rtt = rtt is None or (
        isinstance(rtt, int | float) and not isinstance(rtt, bool) and 0 <= rtt < _MAX_ATTEMPT_RTT
    )
    valid_port = isinstance(port, int) and not isinstance(port, bool) and 0 < port < 65536
    if source.version != destination.version or not valid_rtt or not valid_port:
        return False
    if rtt is not None or not ok:
        latency.record(source, destination, rtt, now)
    if ok:
        failures.record_success(source, destination, port)
    else:
        name = errno_codes.errorcode.get(errno) if errno is not None else None
        failures.record_failure(source, destination, port, now, error=name or "failed")
    return True
