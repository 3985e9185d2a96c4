"""The Happy Eyeballs (RFC 8305) schedule over ranked address pairs, as a sans-IO state machine.

The schedule decides *when* to start a connection attempt on *which* (source, destination)
pair; it opens no socket and reads no clock. The driver (``apr_async.connect.api``) feeds it
events, each stamped with the caller's monotonic time ``now``:

* :meth:`Schedule.answers` -- the pairs for one address family arrived (AAAA or A results,
  possibly empty, possibly late);
* :meth:`Schedule.attempt_failed` / :meth:`Schedule.attempt_succeeded` -- an attempt ended;
* :meth:`Schedule.timer` -- the timer the schedule asked for fired;

and each call returns the actions to carry out, in order: :class:`StartAttempt`,
:class:`SetTimer`, :class:`Succeeded` or :class:`GiveUp`.

Rules (RFC 8305, improved by what the ranking knows):

* AAAA and A are asked concurrently. If an IPv4 answer arrives while IPv6 is still pending,
  the first attempt waits up to the Resolution Delay (50 ms) for it; an IPv6 answer with a
  usable pair starts at once.
* The first attempt goes to the best pair known. Later answers join the untried pairs in
  rank order.
* Attempts interleave address families: ``interleave`` (the First Address Family Count,
  default 1) attempts of the first attempt's family, then one of the other, alternating.
* Pairs known to be failing (``pair.failing``) are tried only when no other untried pair is
  left. If every pair known so far is failing and a family is still pending, the schedule
  waits the Resolution Delay for it rather than spend an attempt on a path known to fail,
  and an attempt on a failing pair does not hold back a usable pair that arrives later.
* The Connection Attempt Delay is derived per pair by :func:`attempt_delay`; a failed
  attempt starts the next one at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from apr_async.core.families import AF_INET, AF_INET6

__all__ = [
    "DEFAULT_ATTEMPT_DELAY",
    "MAX_ATTEMPT_DELAY",
    "MIN_ATTEMPT_DELAY",
    "RESOLUTION_DELAY",
    "RTT_MARGIN",
    "Action",
    "GiveUp",
    "SchedulablePair",
    "Schedule",
    "SetTimer",
    "StartAttempt",
    "Succeeded",
    "attempt_delay",
]

#: RFC 8305 section 3: how long an IPv4 answer waits for a pending IPv6 one.
RESOLUTION_DELAY = 0.050
#: RFC 8305 section 5: the Connection Attempt Delay when nothing is known about the path.
DEFAULT_ATTEMPT_DELAY = 0.250
#: RFC 8305 section 5: the delay must never be below 10 ms ...
MIN_ATTEMPT_DELAY = 0.010
#: ... and should not exceed 2 s.
MAX_ATTEMPT_DELAY = 2.0
#: Added to twice the RTT so that scheduling noise and the server's accept path on very short
#: paths (loopback, LAN) do not trigger a needless second attempt.
RTT_MARGIN = 0.010


class SchedulablePair(Hashable, Protocol):
    """What the schedule needs from a pair (``ranking.AddrPair`` provides it)."""

    @property
    def family(self) -> int:
        """Address family (``socket.AF_INET6`` or ``socket.AF_INET``)."""

    @property
    def rtt(self) -> float | None:
        """Measured round-trip time of this path in seconds, ``None`` when unknown."""

    @property
    def failing(self) -> bool:
        """Whether this pair is known to fail (probes or recent attempts)."""


P = TypeVar("P", bound=SchedulablePair)


@dataclass(frozen=True, slots=True)
class StartAttempt(Generic[P]):
    """Start a connection attempt on ``pair`` now."""

    pair: P


@dataclass(frozen=True, slots=True)
class SetTimer:
    """Call :meth:`Schedule.timer` at time ``at`` (replacing any earlier timer); ``None``
    cancels the timer."""

    at: float | None


@dataclass(frozen=True, slots=True)
class Succeeded(Generic[P]):
    """``pair`` won: cancel every other attempt still in flight and close its socket."""

    pair: P


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Every attempt failed and no pair is left to try."""

    attempted: int


Action = StartAttempt[P] | SetTimer | Succeeded[P] | GiveUp


def attempt_delay(pair: SchedulablePair, override: float | None = None) -> float:
    """The Connection Attempt Delay after starting an attempt on ``pair``.

    ``override`` (the caller's ``happy_eyeballs_delay``) wins when given. Otherwise, with
    nothing known about the path, RFC 8305's recommended 250 ms. With a measured RTT the
    delay is ``2 * rtt + 10 ms`` clamped to [10 ms, 2 s]. The reasoning: the SYN-ACK is due
    one RTT after the SYN; Linux's initial retransmission timeout is 1 s, so a lost SYN is not
    retried before then, and waiting longer than a few RTTs past the expected answer buys
    nothing but delay. If no answer came within twice the usual RTT (plus a margin for
    scheduling noise on very short paths), the path is likely broken and the next pair is
    worth one extra SYN. The clamp keeps RFC 8305's bounds: never below 10 ms (to not flood
    the network with attempts) and never above 2 s (a stale or huge RTT must not stall the
    race).
    """
    if override is not None:
        return override
    rtt = pair.rtt
    if rtt is None or not math.isfinite(rtt) or rtt < 0:
        return DEFAULT_ATTEMPT_DELAY
    return min(MAX_ATTEMPT_DELAY, max(MIN_ATTEMPT_DELAY, 2.0 * rtt + RTT_MARGIN))


class Schedule(Generic[P]):
    """RFC 8305 connection-attempt schedule over ranked pairs (sans-IO).

    ``families`` are the address families whose answers will be delivered through
    :meth:`answers` (for example both ``AF_INET6`` and ``AF_INET`` when AAAA and A are asked
    concurrently, one of them when the caller restricts the family). ``happy_eyeballs_delay``
    fixes the Connection Attempt Delay (seconds, >= 0) instead of deriving it per pair;
    ``interleave`` is the First Address Family Count (>= 1).
    """

    def __init__(
        self,
        families: Iterable[int] = (AF_INET6, AF_INET),
        *,
        happy_eyeballs_delay: float | None = None,
        interleave: int = 1,
        resolution_delay: float = RESOLUTION_DELAY,
    ) -> None:
        fams = tuple(dict.fromkeys(families))
        if not fams:
            raise ValueError("families must name at least one address family")
        for fam in fams:
            if not isinstance(fam, int):
                raise TypeError(f"address family must be an int, not {type(fam).__name__}")
        if happy_eyeballs_delay is not None:
            _check_delay("happy_eyeballs_delay", happy_eyeballs_delay)
        _check_delay("resolution_delay", resolution_delay)
        if isinstance(interleave, bool) or not isinstance(interleave, int):
            raise TypeError(f"interleave must be an int, not {type(interleave).__name__}")
        if interleave < 1:
            raise ValueError(f"interleave must be at least 1, got {interleave}")
        self._families = fams
        self._pending: set[int] = set(fams)
        self._override = happy_eyeballs_delay
        self._interleave = interleave
        self._resolution_delay = resolution_delay
        # Untried pairs in rank order (latest ranking first, see answers()).
        self._untried: list[P] = []
        self._known: set[P] = set()
        self._in_flight: list[P] = []
        self._started_families: list[int] = []
        self._failed: list[P] = []
        self._first_answer_at: float | None = None
        # Earliest time the next attempt may start while others are in flight, and whether
        # the attempt that set it was on a pair known to be failing.
        self._gate_at = -math.inf
        self._gate_failing = False
        self._timer_at: float | None = None
        self._winner: P | None = None
        self._gave_up = False

    # -- read-only state -------------------------------------------------------------------

    @property
    def done(self) -> bool:
        """True once an attempt succeeded or the schedule gave up."""
        return self._winner is not None or self._gave_up

    @property
    def winner(self) -> P | None:
        """The pair whose attempt succeeded, if any."""
        return self._winner

    @property
    def in_flight(self) -> tuple[P, ...]:
        """Pairs whose attempt was started and has not ended, oldest first."""
        return tuple(self._in_flight)

    @property
    def untried(self) -> tuple[P, ...]:
        """Known pairs not attempted yet, in rank order (not in attempt order)."""
        return tuple(self._untried)

    @property
    def failed(self) -> tuple[P, ...]:
        """Pairs whose attempt failed, in the order they failed."""
        return tuple(self._failed)

    @property
    def pending_families(self) -> frozenset[int]:
        """Families whose answers have not arrived yet."""
        return frozenset(self._pending)

    @property
    def timer_at(self) -> float | None:
        """When :meth:`timer` should be called next, ``None`` when no timer is wanted."""
        return self._timer_at

    # -- events ----------------------------------------------------------------------------

    def answers(self, family: int, pairs: Sequence[P], now: float) -> list[Action[P]]:
        """The answers for ``family`` arrived with ``pairs`` (ranked, possibly empty).

        ``pairs`` is in rank order. It may be just this family's pairs or the caller's
        re-ranking of every pair known so far: pairs listed here take the given order ahead
        of untried pairs from earlier answers that are not listed, and pairs already known
        are not added twice. Since attempts interleave families, the cross-family order
        decides which family goes first and the order of the failing tail.
        """
        if family not in self._families:
            raise ValueError(f"family {family!r} was not announced to this schedule")
        self._pending.discard(family)
        if self.done:
            return []
        self._merge(pairs, now)
        return self._advance(now)

    def answers_all(self, pairs: Sequence[P], now: float) -> list[Action[P]]:
        """Every pending family's answer at once (a literal host, a warm cache): ``pairs``
        ranked across families, as :meth:`answers` takes them."""
        self._pending.clear()
        if self.done:
            return []
        self._merge(pairs, now)
        return self._advance(now)

    def attempt_failed(self, pair: P, now: float) -> list[Action[P]]:
        """The attempt on ``pair`` failed: the next attempt starts at once."""
        if self.done:
            return []
        self._end_attempt(pair)
        self._failed.append(pair)
        self._gate_at = -math.inf
        return self._advance(now)

    def attempt_succeeded(self, pair: P, now: float) -> list[Action[P]]:
        """The attempt on ``pair`` connected; the race is over.

        After the schedule is done (for example a second, late winner) this returns no
        action: the driver closes such sockets itself.
        """
        if self.done:
            return []
        self._end_attempt(pair)
        self._winner = pair
        actions: list[Action[P]] = [Succeeded(pair)]
        self._set_timer(None, actions)
        return actions

    def drop_untried(self, drop: Callable[[P], bool]) -> tuple[P, ...]:
        """Remove the untried pairs ``drop`` says will not be attempted; return them. The
        next action (after :meth:`attempt_failed`, say) sees the shorter list."""
        dropped = tuple(p for p in self._untried if drop(p))
        if dropped:
            self._untried = [p for p in self._untried if p not in dropped]
        return dropped

    def timer(self, now: float) -> list[Action[P]]:
        """The timer fired (early or late firings are harmless)."""
        if self.done:
            return []
        self._timer_at = None
        return self._advance(now)

    # -- internals -------------------------------------------------------------------------

    def _merge(self, pairs: Sequence[P], now: float) -> None:
        if not pairs:
            return
        if not self._known:
            # The common case, first answer: one pass (tuple hashes are not cached).
            listed = list(dict.fromkeys(pairs))
            self._known = set(listed)
            self._untried = listed
        else:
            listed = []
            seen: set[P] = set()
            untried = set(self._untried)
            for pair in pairs:
                if pair in seen:
                    continue
                seen.add(pair)
                if pair in self._known and pair not in untried:
                    continue  # already attempted
                listed.append(pair)
            self._known.update(listed)
            self._untried = listed + [p for p in self._untried if p not in seen]
        if listed and self._first_answer_at is None:
            self._first_answer_at = now

    def _end_attempt(self, pair: P) -> None:
        try:
            self._in_flight.remove(pair)
        except ValueError:
            raise ValueError(f"no attempt in flight for {pair!r}") from None

    def _set_timer(self, at: float | None, actions: list[Action[P]]) -> None:
        if at != self._timer_at:
            self._timer_at = at
            actions.append(SetTimer(at))

    def _resolution_wait_until(self) -> float | None:
        """Before the first attempt: until when to wait for pending answers (None: go)."""
        if not self._pending or self._first_answer_at is None:
            return None
        usable = [p for p in self._untried if not p.failing]
        if any(p.family == AF_INET6 for p in usable):
            return None  # RFC 8305: IPv6 answers start at once
        if usable and AF_INET6 not in self._pending:
            return None  # the pending family is not the preferred one
        return self._first_answer_at + self._resolution_delay

    def _pick(self) -> P | None:
        candidates = [p for p in self._untried if not p.failing] or self._untried
        if not candidates:
            return None
        started = self._started_families
        if not started:
            return candidates[0]
        preferred = started[0]
        if len(started) < self._interleave and all(f == preferred for f in started):
            want_other = False
            base = preferred
        else:
            want_other = True
            base = started[-1]
        for pair in candidates:
            if (pair.family != base) == want_other:
                return pair
        return candidates[0]

    def _advance(self, now: float) -> list[Action[P]]:
        actions: list[Action[P]] = []
        wake: float | None = None
        while True:
            if not self._started_families:
                until = self._resolution_wait_until()
                if until is not None and now < until:
                    wake = until
                    break
            pair = self._pick()
            if pair is None:
                break
            # An attempt on a known-failing pair must not hold back a usable one.
            bypass_gate = self._gate_failing and not pair.failing
            if self._in_flight and now < self._gate_at and not bypass_gate:
                wake = self._gate_at
                break
            self._untried.remove(pair)
            self._in_flight.append(pair)
            self._started_families.append(pair.family)
            self._gate_at = now + attempt_delay(pair, self._override)
            self._gate_failing = pair.failing
            actions.append(StartAttempt(pair))
        if not self._in_flight and not self._untried and not self._pending:
            self._gave_up = True
            self._set_timer(None, actions)
            actions.append(GiveUp(len(self._started_families)))
            return actions
        self._set_timer(wake, actions)
        return actions


def _check_delay(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}")
