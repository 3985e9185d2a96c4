"""Per-(source, destination) latency and failure memory (sans-IO: time is passed in).

Skeleton: the public API is fixed, implementations follow.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from apr_async.addresses import IPAddress

__all__ = ["Estimate", "Failure", "FailureTable", "LatencyTable"]


@dataclass(frozen=True, slots=True)
class Estimate:
    """What is known about the round-trip time from a source to a destination.

    ``rtt`` is the EWMA in seconds (``None`` if every recent sample was lost); when
    ``inherited`` is true the numbers summarise the measured destinations inside ``prefix``
    (``destinations`` of them) rather than the destination itself.
    """

    rtt: float | None
    last: float | None
    min: float | None
    samples: int
    loss: float
    updated: float
    inherited: bool = False
    prefix: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    destinations: int = 1


class LatencyTable:
    """EWMA latency per (source, destination) with prefix inheritance and LRU bound."""

    def __init__(
        self,
        *,
        prefix_v6: int = 32,
        prefix_v4: int = 20,
        alpha: float = 0.3,
        max_entries: int = 100_000,
        loss_window: int = 16,
    ) -> None:
        raise NotImplementedError

    def record(
        self, source: IPAddress, destination: IPAddress, rtt: float | None, now: float
    ) -> None:
        """Record one probe result: *rtt* seconds, or ``None`` for a loss."""
        raise NotImplementedError

    def estimate(self, source: IPAddress, destination: IPAddress) -> Estimate | None:
        """Exact estimate, else inherited from the longest matching known prefix, else None."""
        raise NotImplementedError

    def clear(self) -> None:
        """Forget everything (network change)."""
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError

    def snapshot(self, now: float) -> dict[str, Any]:
        """JSON-able state; times are stored as ages relative to *now*."""
        raise NotImplementedError

    def restore(self, data: dict[str, Any], now: float) -> None:
        """Load a :meth:`snapshot`, rebasing ages onto *now*."""
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class Failure:
    """A recent connection failure of one (source, destination, port)."""

    last: float
    count: int
    error: str | None


class FailureTable:
    """Recent failures keyed by (source, destination, port); expire ``ttl`` s after the last."""

    def __init__(self, ttl: float = 600.0, *, max_entries: int = 10_000) -> None:
        raise NotImplementedError

    def record_failure(
        self,
        source: IPAddress,
        destination: IPAddress,
        port: int,
        now: float,
        *,
        error: str | None = None,
    ) -> None:
        """Remember a failure (``error``: short text such as ``"ECONNREFUSED"``)."""
        raise NotImplementedError

    def record_success(self, source: IPAddress, destination: IPAddress, port: int) -> None:
        """A success clears the entry."""
        raise NotImplementedError

    def failing(self, source: IPAddress, destination: IPAddress, port: int, now: float) -> bool:
        """True if this triple failed less than ``ttl`` seconds ago."""
        raise NotImplementedError

    def failure(
        self, source: IPAddress, destination: IPAddress, port: int, now: float
    ) -> Failure | None:
        """The unexpired failure record, if any."""
        raise NotImplementedError

    def clear(self) -> None:
        """Forget everything (network change)."""
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError

    def snapshot(self, now: float) -> dict[str, Any]:
        """JSON-able state; times are stored as ages relative to *now*."""
        raise NotImplementedError

    def restore(self, data: dict[str, Any], now: float) -> None:
        """Load a :meth:`snapshot`, rebasing ages onto *now*."""
        raise NotImplementedError
