"""Rank (source, destination) address pairs: the four-level precedence, with reasons (sans-IO).

Skeleton: the public API is fixed, the implementation follows.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from enum import StrEnum
from typing import NamedTuple

from apr_async.addresses import IPAddress
from apr_async.latency import FailureTable, LatencyTable
from apr_async.rfc6724 import DEFAULT_POLICY_TABLE, PolicyTable, SourceAddress

__all__ = ["AddrPair", "Translator", "rank_pairs"]

SockAddr = tuple[str, int] | tuple[str, int, int, int]


class Translator(StrEnum):
    """Address translators seen on the path (they change which sources can work)."""

    NAT44 = "nat44"
    NAT64 = "nat64"
    NPTV6 = "nptv6"
    NAT66 = "nat66"


class _AddrPairFields(NamedTuple):
    family: int
    source: SockAddr
    destination: SockAddr


class AddrPair(_AddrPairFields):
    """``(family, source, destination)``; unpack as ``AF, SA, DA = pair``.

    Extra read-only attributes: ``reason`` (why it is at its place), ``rtt`` (seconds, measured
    or inherited, or None), ``failing`` (failed recently). Equality compares the 3 fields.
    """

    reason: str
    rtt: float | None
    failing: bool


def rank_pairs(
    destinations: Sequence[tuple[IPAddress, int | None]],
    sources: Sequence[SourceAddress],
    port: int,
    *,
    latency: LatencyTable | None = None,
    failures: FailureTable | None = None,
    now: float = 0.0,
    ipv6_bias_ms: float = 5.0,
    kernel_sources: Mapping[IPAddress, IPAddress | SourceAddress] | None = None,
    translators_seen: Collection[str] = frozenset(),
    policy: PolicyTable = DEFAULT_POLICY_TABLE,
) -> list[AddrPair]:
    """Return the usable pairs for *destinations* (``(ip, zone_index)``) best first."""
    raise NotImplementedError
