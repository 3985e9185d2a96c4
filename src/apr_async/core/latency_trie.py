"""Estimate, and the per-source prefix trie of measured destinations behind LatencyTable.

The destinations measured from one source are kept in a path-compressed binary trie (one per
source and family), so the longest matching known prefix is found by walking at most one node
per bit of the address, whatever the number of entries. Every node keeps aggregates of its
subtree, which makes the inherited estimate (mean EWMA of the destinations under the prefix,
their minimum, ...) an O(1) read once the node is found, and keeps updates O(depth).
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass, field

from apr_async.core.addresses import IPAddress

__all__ = ["Estimate", "SourceIndex", "TrieNode"]


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


class TrieNode:
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
        self.parent: TrieNode | None = None
        self.children: list[TrieNode | None] = [None, None]
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
        fill = self.fill
        self.agg_loss = self.lost_bits.bit_count() / fill if fill else 0.0  # self.loss()
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


class SourceIndex:
    """Everything measured from one source: exact entries and one trie per family."""

    __slots__ = ("address", "leaves", "roots")

    def __init__(self, address: IPAddress) -> None:
        self.address = address
        self.leaves: dict[int, TrieNode] = {}  # by address_key of the destination
        self.roots: list[TrieNode | None] = [None, None]  # [IPv4, IPv6]
