"""Per-(source, destination) latency memory (sans-IO: time is passed in as ``now``).

:class:`LatencyTable` keeps an EWMA of the round-trip time per (source, destination) and lets
an unmeasured destination inherit from measured neighbours through a per-source prefix trie
(:mod:`apr_async.core.latency_trie`). Failures are kept apart in
:mod:`apr_async.core.failures`; :func:`apr_async.core.outcomes.record_outcome` feeds both.
"""

from __future__ import annotations

import ipaddress
import math
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from apr_async.core.addresses import IPAddress, address_key, parse_address
from apr_async.core.latency_trie import Estimate, SourceIndex, TrieNode
from apr_async.core.table_inputs import SNAPSHOT_VERSION, check_ip, check_time

__all__ = ["LatencyTable"]

_INF = math.inf
#: Pairs remembered for record()'s fast path (the memory is dropped whole when full).
_HOT_MAX = 64


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
        self._sources: dict[int, SourceIndex] = {}  # by address_key of the source
        # Bumped by every change, so that callers can reuse what they derived from the table.
        self.version = 0
        self._lru: OrderedDict[tuple[int, int], TrieNode] = OrderedDict()
        # (id(source), id(destination)) of recent record() calls -> (source, destination,
        # key, leaf): see record().
        self._hot: dict[
            tuple[int, int], tuple[IPAddress, IPAddress, tuple[int, int], TrieNode]
        ] = {}

    def __len__(self) -> int:
        return len(self._lru)

    def clear(self) -> None:
        """Forget everything (for instance on a network change)."""
        self._sources.clear()
        self._lru.clear()
        self._hot.clear()
        self.version += 1

    # --- recording ------------------------------------------------------------------------

    def record(
        self, source: IPAddress, destination: IPAddress, rtt: float | None, now: float
    ) -> None:
        """Record one probe result from *source* to *destination*: *rtt* seconds, or ``None``
        for a probe that got no answer."""
        # Fast path: the same address objects as a recent call (a client connecting to one
        # place in a loop passes the very same objects), float times: the checks, the keys
        # and the trie walk were done then, and the entry is updated in place.
        hot = self._hot.get((id(source), id(destination)))
        if (
            hot is not None
            and hot[0] is source
            and hot[1] is destination
            and type(now) is float
            and -_INF < now < _INF
            and (rtt is None or (type(rtt) is float and 0.0 <= rtt < _INF))
        ):
            key, leaf = hot[2], hot[3]
            lru = self._lru
            if lru.get(key) is leaf:  # not evicted (nor cleared) since
                lru.move_to_end(key)
                self._update(leaf, rtt, now)
                return
        src = check_ip(source, "source")
        dst = check_ip(destination, "destination")
        if src.version != dst.version:
            raise ValueError(f"source {src} and destination {dst} are of different families")
        if rtt is not None:
            rtt = check_time(rtt, "rtt")
            if rtt < 0:
                raise ValueError(f"rtt must not be negative, not {rtt!r}")
        now = check_time(now, "now")
        key = (address_key(src), address_key(dst))
        leaf = self._leaf(src, dst, key)
        hot_pairs = self._hot
        if len(hot_pairs) >= _HOT_MAX:
            hot_pairs.clear()
        # The caller's objects are kept with the entry: their ids cannot be reused meanwhile.
        hot_pairs[(id(source), id(destination))] = (source, destination, key, leaf)
        self._update(leaf, rtt, now)

    def _update(self, leaf: TrieNode, rtt: float | None, now: float) -> None:
        """One checked sample into ``leaf``, and the aggregates above it."""
        if rtt is None:
            leaf.lost_bits = ((leaf.lost_bits << 1) | 1) & self._window_mask
        else:
            leaf.lost_bits = (leaf.lost_bits << 1) & self._window_mask
            ewma = leaf.ewma
            leaf.ewma = rtt if ewma is None else self.alpha * rtt + (1 - self.alpha) * ewma
            leaf.last = rtt
            low = leaf.min
            leaf.min = rtt if low is None or rtt < low else low
            leaf.samples += 1
        fill = leaf.fill + 1
        leaf.fill = fill if fill < self.loss_window else self.loss_window
        leaf.updated = now
        leaf.refresh_leaf()
        node = leaf.parent
        while node is not None:
            node.refresh_inner()
            node = node.parent
        self.version += 1

    def _leaf(self, src: IPAddress, dst: IPAddress, key: tuple[int, int]) -> TrieNode:
        lru = self._lru
        src_key, dst_key = key
        leaf = lru.get(key)
        if leaf is not None:
            lru.move_to_end(key)
            return leaf
        index = self._sources.get(src_key)
        if index is None:
            index = self._sources[src_key] = SourceIndex(src)
        leaf = TrieNode(int(dst), dst.max_prefixlen, dst)
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
    def _insert(index: SourceIndex, v6: bool, leaf: TrieNode) -> None:
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
                inner = TrieNode((value >> (bits - common)) << (bits - common), common)
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
    def _refresh_path(leaf: TrieNode) -> None:
        leaf.refresh_leaf()
        if leaf.parent is not None:
            LatencyTable._refresh_inner_path(leaf.parent)

    @staticmethod
    def _refresh_inner_path(node: TrieNode | None) -> None:
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

    def _lookup(self, index: SourceIndex, destination: IPAddress) -> Estimate | None:
        value = int(destination)
        v6 = isinstance(destination, ipaddress.IPv6Address)
        return self.lookup_key(index, value if v6 else ~value, value, v6)

    def source_index(self, source_key: int) -> SourceIndex | None:
        """Internal fast path for ranking: the index of a source by its ``address_key``."""
        return self._sources.get(source_key)

    def lookup_key(
        self, index: SourceIndex, dst_key: int, value: int, v6: bool
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
        now = check_time(now, "now")
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
        return {"kind": "apr_async.latency", "version": SNAPSHOT_VERSION, "entries": entries}

    def restore(self, data: dict[str, Any], now: float) -> None:
        """Replace the contents with a :meth:`snapshot`, rebasing ages onto *now*.

        Raises ``ValueError`` (and leaves the table unchanged) if *data* is malformed.
        """
        now = check_time(now, "now")
        if not isinstance(data, dict) or data.get("kind") != "apr_async.latency":
            raise ValueError("not a latency table snapshot")
        if data.get("version") != SNAPSHOT_VERSION:
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
                    if value is not None and check_time(value, "rtt") < 0:
                        raise ValueError(f"negative rtt in {row!r}")
                for count in (samples, lost, fill):
                    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                        raise ValueError(f"bad counter in {row!r}")
                age = check_time(age, "age")
                parsed.append((src, dst, ewma, last, minimum, samples, lost, fill, age))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed latency snapshot: {exc}") from None
        self.load(parsed, now)

    def load(self, rows: list[tuple[Any, ...]], now: float) -> None:
        """Replace the contents with already checked rows ``(source, destination, ewma,
        last, min, samples, lost bits, fill, age)`` of one address family each (a shared
        table's, decoded and checked by its codec): :meth:`restore` without the parsing."""
        self.clear()
        # Oldest first, so that the eviction order survives the round trip.
        rows.sort(key=lambda row: -row[8])
        for src, dst, ewma, last, minimum, samples, lost, fill, age in rows:
            leaf = self._leaf(src, dst, (address_key(src), address_key(dst)))
            leaf.ewma = None if ewma is None else float(ewma)
            leaf.last = None if last is None else float(last)
            leaf.min = None if minimum is None else float(minimum)
            leaf.samples = samples
            leaf.lost_bits = lost & self._window_mask
            leaf.fill = min(fill, self.loss_window)
            leaf.updated = now - float(age)
            self._refresh_path(leaf)
        self.version += 1
