"""What the connection race works with: the pair it connects over, the pair source that
supplies the ranked pairs, and the recorder that receives every attempt's outcome."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, NamedTuple, Protocol

from apr_async.core.schedule import SchedulablePair

__all__ = [
    "UNTRIED_PER_FAMILY",
    "AttemptRecorder",
    "ConnectPair",
    "DirectPair",
    "PairSource",
    "UntriedRecorder",
    "families_for",
]

#: How many untried pairs of each family other than the winner's a race reports
#: (:class:`UntriedRecorder`): the best one is what the next ranking needs to compare.
UNTRIED_PER_FAMILY = 1


class ConnectPair(SchedulablePair, Protocol):
    """What a connection attempt needs from a pair (``ranking.AddrPair`` provides it).

    ``source`` is the address to ``bind()`` (port 0), or ``None`` for the kernel's choice;
    ``destination`` is the address to ``connect()``.
    """

    @property
    def source(self) -> tuple[Any, ...] | None:
        """Address to bind the attempt's socket to."""

    @property
    def destination(self) -> tuple[Any, ...]:
        """Address to connect to."""


#: ``source(host, port, family)`` yields ``(family, ranked_pairs)`` once per address family
#: as each family's answer arrives (an empty list when that family has no address). It may
#: yield the caller's re-ranking of every pair known so far. ``(AF_UNSPEC, ranked_pairs)``
#: says every family's answer is in (a literal, a warm cache). It raises ``socket.gaierror``
#: when the name cannot be resolved at all.
PairSource = Callable[[str, int, int], AsyncIterator[tuple[int, Sequence[ConnectPair]]]]


class AttemptRecorder(Protocol):
    """Receives every attempt's outcome (the probe service implements it).

    ``ok`` is whether the TCP handshake completed; ``rtt`` the seconds from ``connect()`` to
    the answer (SYN-ACK or RST) when one came; ``errno`` the error number of a failure. A
    refusal proves the path works, so it comes with its RTT. An attempt cancelled because
    another won, or because the caller gave up, is reported as ``ETIMEDOUT`` only if it had
    already waited longer than its Connection Attempt Delay; otherwise nothing is known and
    nothing is reported.
    """

    def record_attempt(
        self, pair: Any, port: int, ok: bool, rtt: float | None, errno: int | None
    ) -> None:
        """Record one attempt's outcome."""


class UntriedRecorder(Protocol):
    """An :class:`AttemptRecorder` that also wants the pairs a race never tried.

    Optional: the connector looks the method up with ``getattr`` and calls it only when the
    recorder has it. A race that an IPv6 pair wins within its attempt delay never attempts
    IPv4, so nothing measures IPv4 and the ranking cannot learn that it is faster. When a race
    is won, ``record_untried`` receives the best pair not measured by the race of each family
    other than the winner's (at most :data:`UNTRIED_PER_FAMILY` per family), so that a probe
    service can measure them on ``port``. The plain ``ContextRecorder`` does not implement it:
    without a service nothing would probe them.
    """

    def record_attempt(
        self, pair: Any, port: int, ok: bool, rtt: float | None, errno: int | None
    ) -> None:
        """Record one attempt's outcome."""

    def record_untried(self, pairs: Sequence[Any], port: int) -> None:
        """Note pairs the race did not measure, best first (no outcome: nothing was sent)."""


class DirectPair(NamedTuple):
    """A pair without ranking knowledge (no RTT, not failing) for custom pair sources;
    ``source`` may be ``None`` (the kernel's choice)."""

    family: int
    source: tuple[Any, ...] | None
    destination: tuple[Any, ...]

    @property
    def rtt(self) -> float | None:
        """Always unknown."""
        return None

    @property
    def failing(self) -> bool:
        """Never known to fail."""
        return False

    @property
    def reason(self) -> str:
        """Why this pair is where it is."""
        return "given by a custom pair source; no ranking information"


def families_for(family: int) -> tuple[int, ...]:
    """The address families a request for ``family`` asks for, preferred first."""
    if family == socket.AF_UNSPEC:
        return (socket.AF_INET6, socket.AF_INET)
    return (family,)
