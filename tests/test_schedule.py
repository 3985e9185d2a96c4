"""The Happy Eyeballs schedule: pure state-machine tests, then the asyncio driver on
virtual time (looptime) with scripted attempts (schedule logic only, no sockets)."""

from __future__ import annotations

import asyncio
import math
import socket
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from apr_async.connect.errors import AllAttemptsFailedError
from apr_async.connect.race import race
from apr_async.core.schedule import (
    DEFAULT_ATTEMPT_DELAY,
    MAX_ATTEMPT_DELAY,
    MIN_ATTEMPT_DELAY,
    GiveUp,
    Schedule,
    SetTimer,
    StartAttempt,
    Succeeded,
    attempt_delay,
)

V6 = socket.AF_INET6
V4 = socket.AF_INET


@dataclass(frozen=True)
class Pair:
    """A stand-in for ranking.AddrPair with just what the schedule reads."""

    name: str
    family: int
    rtt: float | None = None
    failing: bool = False


def six(name: str, **kw: object) -> Pair:
    return Pair(name, V6, **kw)  # type: ignore[arg-type]


def four(name: str, **kw: object) -> Pair:
    return Pair(name, V4, **kw)  # type: ignore[arg-type]


def started(actions: Sequence[object]) -> list[str]:
    return [a.pair.name for a in actions if isinstance(a, StartAttempt)]


def timers(actions: Sequence[object]) -> list[float | None]:
    return [a.at for a in actions if isinstance(a, SetTimer)]


def run_all_failing(sched: Schedule[Pair], now: float = 0.0) -> list[str]:
    """Fail every attempt as soon as it starts; return the attempt order."""
    order: list[str] = []
    queue = list(sched.in_flight)
    order.extend(p.name for p in queue)
    while queue:
        pair = queue.pop(0)
        actions = sched.attempt_failed(pair, now)
        new = [a.pair for a in actions if isinstance(a, StartAttempt)]
        order.extend(p.name for p in new)
        queue.extend(new)
    return order


# -- attempt delay --------------------------------------------------------------------------


def test_delay_unknown_rtt_is_rfc_default() -> None:
    assert attempt_delay(six("a")) == DEFAULT_ATTEMPT_DELAY == 0.25


@pytest.mark.parametrize(
    ("rtt", "expected"),
    [
        (0.0, MIN_ATTEMPT_DELAY),  # clamped up to the RFC 8305 floor
        (0.0001, MIN_ATTEMPT_DELAY + 0.0002),
        (0.020, 0.050),
        (0.100, 0.210),
        (0.995, MAX_ATTEMPT_DELAY),
        (30.0, MAX_ATTEMPT_DELAY),  # clamped down
    ],
)
def test_delay_derived_from_rtt(rtt: float, expected: float) -> None:
    assert attempt_delay(six("a", rtt=rtt)) == pytest.approx(expected)


@given(st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)))
def test_delay_always_within_bounds(rtt: float | None) -> None:
    delay = attempt_delay(six("a", rtt=rtt))
    assert MIN_ATTEMPT_DELAY <= delay <= MAX_ATTEMPT_DELAY


def test_delay_override_wins() -> None:
    assert attempt_delay(six("a", rtt=0.5), 0.1) == 0.1
    assert attempt_delay(six("a"), 0.0) == 0.0


# -- resolution ------------------------------------------------------------------------------


def test_aaaa_first_starts_at_once() -> None:
    sched: Schedule[Pair] = Schedule()
    actions = sched.answers(V6, [six("v6a"), six("v6b")], 1.0)
    assert started(actions) == ["v6a"]
    assert timers(actions) == [1.25]
    assert sched.pending_families == {V4}


def test_a_first_waits_resolution_delay_then_aaaa_goes_first() -> None:
    sched: Schedule[Pair] = Schedule()
    actions = sched.answers(V4, [four("v4a")], 0.0)
    assert started(actions) == []
    assert timers(actions) == [pytest.approx(0.05)]
    actions = sched.answers(V6, [six("v6a")], 0.03)
    assert started(actions) == ["v6a"]
    assert timers(actions) == [pytest.approx(0.28)]
    actions = sched.timer(0.28)
    assert started(actions) == ["v4a"]


def test_a_first_aaaa_late_starts_ipv4_then_joins() -> None:
    sched: Schedule[Pair] = Schedule()
    sched.answers(V4, [four("v4a"), four("v4b")], 0.0)
    actions = sched.timer(0.05)
    assert started(actions) == ["v4a"]
    assert timers(actions) == [pytest.approx(0.30)]
    # AAAA arrives late: it joins the untried list and the next attempt interleaves to it.
    actions = sched.answers(V6, [six("v6a")], 0.1)
    assert started(actions) == []
    actions = sched.timer(0.30)
    assert started(actions) == ["v6a"]
    actions = sched.timer(0.55)
    assert started(actions) == ["v4b"]


def test_ipv4_only_request_does_not_wait() -> None:
    sched: Schedule[Pair] = Schedule([V4])
    assert started(sched.answers(V4, [four("v4a")], 0.0)) == ["v4a"]


def test_empty_answer_waits_for_other_family() -> None:
    sched: Schedule[Pair] = Schedule()
    actions = sched.answers(V4, [], 0.0)
    assert actions == []
    actions = sched.answers(V6, [six("v6a")], 0.5)
    assert started(actions) == ["v6a"]


def test_no_pairs_at_all_gives_up_without_attempts() -> None:
    sched: Schedule[Pair] = Schedule()
    assert sched.answers(V6, [], 0.0) == []
    assert sched.answers(V4, [], 0.0) == [GiveUp(0)]
    assert sched.done


def test_only_failing_pairs_wait_for_the_other_family() -> None:
    sched: Schedule[Pair] = Schedule()
    actions = sched.answers(V6, [six("dead", failing=True)], 0.0)
    assert started(actions) == []
    assert timers(actions) == [pytest.approx(0.05)]
    actions = sched.answers(V4, [four("v4a")], 0.01)
    assert started(actions) == ["v4a"]  # the usable pair goes first, at once


def test_failing_attempt_does_not_hold_back_a_usable_pair() -> None:
    sched: Schedule[Pair] = Schedule()
    sched.answers(V6, [six("dead", failing=True)], 0.0)
    assert started(sched.timer(0.05)) == ["dead"]
    actions = sched.answers(V4, [four("v4a"), four("v4b")], 0.1)
    assert started(actions) == ["v4a"]  # not at 0.30
    assert timers(actions) == [pytest.approx(0.35)]


def test_answers_all_resolves_every_family_at_once() -> None:
    sched: Schedule[Pair] = Schedule()
    ranked = [four("v4a", rtt=0.001), six("v6a", rtt=0.05)]
    actions = sched.answers_all(ranked, 0.0)
    assert started(actions) == ["v4a"]  # no resolution delay: nothing is pending
    assert sched.pending_families == frozenset()
    assert timers(actions) == [pytest.approx(0.012)]


def test_answers_all_empty_gives_up() -> None:
    sched: Schedule[Pair] = Schedule()
    assert sched.answers_all([], 0.0) == [GiveUp(0)]


# -- ordering ---------------------------------------------------------------------------------


def dual(n6: int, n4: int) -> list[Pair]:
    return [six(f"v6{i}") for i in range(n6)] + [four(f"v4{i}") for i in range(n4)]


@pytest.mark.parametrize(
    ("interleave", "expected"),
    [
        (1, ["v60", "v40", "v61", "v41", "v62"]),
        (2, ["v60", "v61", "v40", "v62", "v41"]),
        (5, ["v60", "v61", "v62", "v40", "v41"]),
    ],
)
def test_interleaving(interleave: int, expected: list[str]) -> None:
    sched: Schedule[Pair] = Schedule(interleave=interleave)
    pairs = dual(3, 2)
    sched.answers(V6, pairs, 0.0)
    sched.answers(V4, pairs, 0.0)
    assert run_all_failing(sched) == expected


def test_ranking_decides_the_first_family() -> None:
    # The ranking put IPv4 first (IPv6 measured slower): start there, then interleave.
    sched: Schedule[Pair] = Schedule()
    ranked = [four("v4a", rtt=0.01), six("v6a", rtt=0.06), six("v6b"), four("v4b")]
    assert sched.answers(V4, [p for p in ranked if p.family == V4], 0.0) == [SetTimer(0.05)]
    actions = sched.answers(V6, ranked, 0.01)
    assert started(actions) == ["v4a"]
    assert timers(actions) == [pytest.approx(0.04)]  # 2 * 10 ms + 10 ms after 0.01
    assert run_all_failing(sched) == ["v4a", "v6a", "v4b", "v6b"]


def test_failing_pairs_are_tried_last() -> None:
    sched: Schedule[Pair] = Schedule()
    ranked = [
        six("d1", failing=True),
        six("d2", failing=True),
        six("d3", failing=True),
        six("v6ok"),
        four("v4a"),
        four("v4b", failing=True),
    ]
    sched.answers(V6, ranked, 0.0)
    sched.answers(V4, ranked, 0.0)
    assert run_all_failing(sched) == ["v6ok", "v4a", "d1", "v4b", "d2", "d3"]


def test_late_answers_join_in_rank_order() -> None:
    sched: Schedule[Pair] = Schedule()
    sched.answers(V6, [six("v6a"), six("v6b")], 0.0)
    # The caller re-ranks everything known when A arrives: v6b is now known to be better.
    actions = sched.answers(V4, [six("v6b"), four("v4a"), six("v6a")], 0.1)
    assert started(actions) == []
    assert sched.untried == (six("v6b"), four("v4a"))
    assert started(sched.timer(0.25)) == ["v4a"]  # interleaved after the IPv6 attempt
    assert started(sched.timer(0.5)) == ["v6b"]


def test_duplicates_and_already_tried_pairs_are_ignored() -> None:
    sched: Schedule[Pair] = Schedule([V6])
    a = six("a")
    sched.answers(V6, [a, a, six("b")], 0.0)
    assert sched.untried == (six("b"),)
    sched.answers(V6, [a, six("b")], 0.1)  # a second answer repeating a
    assert sched.in_flight == (a,)
    assert sched.untried == (six("b"),)


# -- attempt outcomes ---------------------------------------------------------------------------


def test_timeout_sequence_uses_adaptive_delays() -> None:
    sched: Schedule[Pair] = Schedule()
    ranked = [six("a", rtt=0.02), four("b"), six("c", rtt=5.0), four("d")]
    actions = sched.answers(V6, ranked, 0.0)
    assert started(actions) == ["a"]
    assert timers(actions) == [pytest.approx(0.05)]
    actions = sched.timer(0.05)
    assert started(actions) == ["b"]
    assert timers(actions) == [pytest.approx(0.30)]
    actions = sched.timer(0.30)
    assert started(actions) == ["c"]
    assert timers(actions) == [pytest.approx(2.30)]
    assert started(sched.timer(2.30)) == ["d"]
    assert sched.timer_at is None
    assert len(sched.in_flight) == 4


def test_failure_starts_next_at_once() -> None:
    sched: Schedule[Pair] = Schedule([V6])
    sched.answers(V6, [six("a"), six("b"), six("c")], 0.0)
    actions = sched.attempt_failed(six("a"), 0.1)
    assert started(actions) == ["b"]
    assert timers(actions) == [pytest.approx(0.35)]
    # A failure of an older attempt also starts the next one at once.
    started(sched.timer(0.35))
    sched2: Schedule[Pair] = Schedule([V6])
    sched2.answers(V6, [six("a"), six("b"), six("c")], 0.0)
    sched2.timer(0.25)
    assert started(sched2.attempt_failed(six("a"), 0.3)) == ["c"]


def test_timer_firing_early_is_harmless() -> None:
    sched: Schedule[Pair] = Schedule([V6])
    sched.answers(V6, [six("a"), six("b")], 0.0)
    actions = sched.timer(0.1)
    assert started(actions) == []
    assert timers(actions) == [pytest.approx(0.25)]


def test_success_ends_the_race() -> None:
    sched: Schedule[Pair] = Schedule([V6])
    sched.answers(V6, [six("a"), six("b"), six("c")], 0.0)
    sched.timer(0.25)
    actions = sched.attempt_succeeded(six("b"), 0.3)
    assert actions == [Succeeded(six("b")), SetTimer(None)]
    assert sched.done and sched.winner == six("b")
    assert sched.in_flight == (six("a"),)  # the driver cancels it
    # Late events, including a second winner, produce nothing.
    assert sched.attempt_succeeded(six("a"), 0.31) == []
    assert sched.timer(1.0) == []
    assert sched.answers(V6, [six("z")], 1.0) == []


def test_all_failed_gives_up() -> None:
    sched: Schedule[Pair] = Schedule()
    actions = sched.answers(V6, [six("a")], 0.0)
    assert actions == [StartAttempt(six("a"))]  # no timer: nothing else to start
    actions = sched.attempt_failed(six("a"), 0.01)
    assert actions == []  # nothing to do until A arrives
    assert not sched.done
    actions = sched.answers(V4, [four("b")], 0.02)
    assert started(actions) == ["b"]
    actions = sched.attempt_failed(four("b"), 0.03)
    assert actions == [GiveUp(2)]
    assert sched.done and sched.winner is None
    assert sched.failed == (six("a"), four("b"))


def test_zero_delay_starts_everything_at_once() -> None:
    sched: Schedule[Pair] = Schedule(happy_eyeballs_delay=0)
    actions = sched.answers(V6, dual(2, 2), 0.0)
    assert started(actions) == ["v60", "v40", "v61", "v41"]
    assert timers(actions) == []


def test_unknown_attempt_is_an_error() -> None:
    sched: Schedule[Pair] = Schedule([V6])
    sched.answers(V6, [six("a")], 0.0)
    with pytest.raises(ValueError, match="no attempt in flight"):
        sched.attempt_failed(six("zz"), 0.1)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"interleave": 0}, ValueError),
        ({"interleave": 1.5}, TypeError),
        ({"interleave": True}, TypeError),
        ({"happy_eyeballs_delay": -1}, ValueError),
        ({"happy_eyeballs_delay": math.nan}, ValueError),
        ({"happy_eyeballs_delay": "0.1"}, TypeError),
        ({"resolution_delay": math.inf}, ValueError),
        ({"families": []}, ValueError),
        ({"families": ["inet"]}, TypeError),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        Schedule(**kwargs)  # type: ignore[arg-type]


def test_unannounced_family_is_an_error() -> None:
    sched: Schedule[Pair] = Schedule([V4])
    with pytest.raises(ValueError, match="not announced"):
        sched.answers(V6, [], 0.0)


# -- properties ---------------------------------------------------------------------------------

pair_st = st.builds(
    Pair,
    name=st.text("abcdefgh", min_size=1, max_size=3),
    family=st.sampled_from([V6, V4]),
    rtt=st.one_of(st.none(), st.floats(0, 3)),
    failing=st.booleans(),
)


@given(
    st.lists(pair_st, max_size=12, unique_by=lambda p: p.name),
    st.integers(1, 3),
    st.booleans(),
)
def test_every_pair_is_tried_once_usable_first(
    pairs: list[Pair], interleave: int, v4_first: bool
) -> None:
    sched: Schedule[Pair] = Schedule(interleave=interleave)
    first, second = (V4, V6) if v4_first else (V6, V4)
    order: list[str] = []
    for t, fam in enumerate((first, second)):
        actions = sched.answers(fam, [p for p in pairs if p.family == fam], t * 0.01)
        order += started(actions)
    now = 1.0
    while not sched.done:
        if sched.in_flight:
            actions = sched.attempt_failed(sched.in_flight[0], now)
        else:
            assert sched.timer_at is not None
            now = max(now, sched.timer_at)
            actions = sched.timer(now)
        order += started(actions)
        now += 0.001
    assert sorted(order) == sorted(p.name for p in pairs)
    by_name = {p.name: p for p in pairs}
    flags = [by_name[n].failing for n in order]
    assert flags == sorted(flags)  # all usable pairs before any failing one


# -- the asyncio driver on virtual time (looptime) ------------------------------------------------


#: pair name -> (seconds until the outcome, True = connects / False = refused / None = hangs)
Net = dict[str, tuple[float, bool | None]]


class World:
    """Scripted answers and attempt outcomes; records when each attempt starts and ends."""

    def __init__(self, net: Net, answers: list[tuple[float, int, list[Pair]]]) -> None:
        self.net = net
        self.answer_script = answers
        self.starts: list[tuple[str, float]] = []
        self.cancelled: list[str] = []
        self.discarded: list[str] = []

    async def answers(self) -> AsyncIterator[tuple[int, Sequence[Pair]]]:
        loop = asyncio.get_running_loop()
        for at, family, pairs in sorted(self.answer_script, key=lambda a: a[0]):
            await asyncio.sleep(max(0.0, at - loop.time()))
            yield family, pairs

    async def attempt(self, pair: Pair) -> str:
        loop = asyncio.get_running_loop()
        self.starts.append((pair.name, round(loop.time(), 6)))
        after, ok = self.net[pair.name]
        try:
            if ok is None:
                await asyncio.Event().wait()
            await asyncio.sleep(after)
        except asyncio.CancelledError:
            self.cancelled.append(pair.name)
            raise
        if not ok:
            raise ConnectionRefusedError(111, "Connection refused")
        return pair.name

    async def run(self, **kwargs: object) -> tuple[Pair, str]:
        families = sorted({fam for _, fam, _ in self.answer_script}, reverse=True)
        sched: Schedule[Pair] = Schedule(families, **kwargs)  # type: ignore[arg-type]
        return await race(
            sched, self.answers(), self.attempt, self.discarded.append, host="h", port=1
        )


def starts(world: World) -> list[tuple[str, float]]:
    return world.starts


@pytest.mark.looptime
async def test_loop_blackholed_ipv6_cold() -> None:
    pairs = [six("v6a"), four("v4a")]
    world = World({"v6a": (0, None), "v4a": (0.002, True)}, [(0, V6, pairs), (0, V4, pairs)])
    _, result = await world.run()
    assert result == "v4a"
    assert starts(world) == [("v6a", 0.0), ("v4a", 0.25)]
    assert asyncio.get_running_loop().time() == pytest.approx(0.252)
    assert world.cancelled == ["v6a"]


@pytest.mark.looptime
async def test_loop_blackholed_ipv6_warm_goes_straight_to_ipv4() -> None:
    pairs = [six("v6a", failing=True), four("v4a", rtt=0.002)]
    world = World({"v6a": (0, None), "v4a": (0.002, True)}, [(0, V6, pairs), (0, V4, pairs)])
    _, result = await world.run()
    assert result == "v4a"
    assert starts(world) == [("v4a", 0.0)]
    assert asyncio.get_running_loop().time() == pytest.approx(0.002)


@pytest.mark.looptime
async def test_loop_refusals_start_next_at_once() -> None:
    pairs = [six("a"), four("b"), six("c"), four("d")]
    net: Net = {"a": (0.01, False), "b": (0.02, False), "c": (0.5, True), "d": (0.01, True)}
    world = World(net, [(0, V6, pairs), (0, V4, pairs)])
    _, result = await world.run()
    # a fails at 0.01 -> b at once; b fails at 0.03 -> c at once; c pending -> d at 0.28.
    assert starts(world) == [("a", 0.0), ("b", 0.01), ("c", 0.03), ("d", 0.28)]
    assert result == "d"
    assert world.cancelled == ["c"]


@pytest.mark.looptime
async def test_loop_resolution_delay_and_late_aaaa() -> None:
    v4 = [four("v4a"), four("v4b")]
    v6 = [six("v6a")]
    net: Net = {"v4a": (0, None), "v4b": (0, None), "v6a": (0.01, True)}
    world = World(net, [(0.01, V4, v4), (0.2, V6, v6)])
    _, result = await world.run()
    # A at 10 ms; AAAA not within 50 ms -> v4a at 60 ms; AAAA at 200 ms joins; the next
    # attempt is due at 310 ms and interleaves to IPv6.
    assert starts(world) == [("v4a", 0.06), ("v6a", 0.31)]
    assert result == "v6a"


@pytest.mark.looptime
async def test_loop_aaaa_within_resolution_delay_goes_first() -> None:
    net: Net = {"v4a": (0.001, True), "v6a": (0.001, True)}
    world = World(net, [(0.0, V4, [four("v4a")]), (0.03, V6, [six("v6a")])])
    _, result = await world.run()
    assert starts(world) == [("v6a", 0.03)]
    assert result == "v6a"


@pytest.mark.looptime
async def test_loop_adaptive_delay_from_rtt() -> None:
    pairs = [six("v6a", rtt=0.040), four("v4a", rtt=0.001)]
    net: Net = {"v6a": (0, None), "v4a": (0.001, True)}
    world = World(net, [(0, V6, pairs), (0, V4, pairs)])
    await world.run()
    assert starts(world) == [("v6a", 0.0), ("v4a", 0.09)]  # 2 * 40 ms + 10 ms


@pytest.mark.looptime
async def test_loop_adaptive_delay_is_clamped() -> None:
    pairs = [six("near", rtt=0.0), six("far", rtt=9.0), six("last")]
    net: Net = {"near": (0, None), "far": (0, None), "last": (0.001, True)}
    world = World(net, [(0, V6, pairs)])
    await world.run()
    assert starts(world) == [("near", 0.0), ("far", 0.01), ("last", 2.01)]


@pytest.mark.looptime
async def test_loop_override_delay() -> None:
    pairs = [six("a", rtt=0.001), six("b"), six("c")]
    net: Net = {"a": (0, None), "b": (0, None), "c": (0.001, True)}
    world = World(net, [(0, V6, pairs)])
    await world.run(happy_eyeballs_delay=0.1)
    assert starts(world) == [("a", 0.0), ("b", 0.1), ("c", 0.2)]


@pytest.mark.looptime
async def test_loop_interleave_two() -> None:
    pairs = [six("a"), six("b"), four("c"), six("d")]
    net: Net = {n: (0, None) for n in "abc"} | {"d": (0.001, True)}
    world = World(net, [(0, V6, pairs), (0, V4, pairs)])
    await world.run(interleave=2)
    assert starts(world) == [("a", 0.0), ("b", 0.25), ("c", 0.5), ("d", 0.75)]


@pytest.mark.looptime
async def test_loop_late_second_winner_is_discarded() -> None:
    pairs = [six("a"), six("b")]
    # a connects at 0.3, b (started at 0.25) at 0.3 too: both complete in the same step.
    net: Net = {"a": (0.3, True), "b": (0.05, True)}
    world = World(net, [(0, V6, pairs)])
    _, result = await world.run()
    assert result in {"a", "b"}
    assert sorted([result, *world.discarded]) == ["a", "b"]


@pytest.mark.looptime
async def test_loop_all_fail() -> None:
    pairs = [six("a"), four("b")]
    net: Net = {"a": (0.01, False), "b": (0.02, False)}
    world = World(net, [(0, V6, pairs), (0, V4, pairs)])
    with pytest.raises(AllAttemptsFailedError) as info:
        await world.run()
    assert isinstance(info.value, ConnectionRefusedError)
    assert [p.name for p, _ in info.value.attempts] == ["a", "b"]
    assert starts(world) == [("a", 0.0), ("b", 0.01)]
    assert asyncio.get_running_loop().time() == pytest.approx(0.03)


@pytest.mark.looptime
async def test_loop_cancel_cleans_up() -> None:
    pairs = [six("a"), six("b"), six("c")]
    net: Net = {n: (0, None) for n in "abc"}
    world = World(net, [(0, V6, pairs)])
    before = len(asyncio.all_tasks())
    task = asyncio.create_task(world.run())
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sorted(world.cancelled) == ["a", "b"]
    assert len(asyncio.all_tasks()) == before


# -- pairs that a refusal makes pointless -----------------------------------------------------


def test_dropped_untried_pairs_are_never_started_and_the_schedule_gives_up() -> None:
    sched: Schedule[Pair] = Schedule()
    lead, doubtful, other = four("public"), four("private"), six("gua")
    actions = sched.answers_all([lead, doubtful, other], 0.0)
    assert started(actions) == ["public"]
    assert sched.drop_untried(lambda p: p.name in ("private", "gua")) == (doubtful, other)
    assert sched.untried == ()
    actions = sched.attempt_failed(lead, 0.001)
    assert started(actions) == []
    assert any(isinstance(a, GiveUp) for a in actions)


def test_dropping_nothing_leaves_the_order() -> None:
    sched: Schedule[Pair] = Schedule()
    sched.answers_all([four("a"), four("b"), six("c")], 0.0)
    assert sched.drop_untried(lambda p: False) == ()
    assert [p.name for p in sched.untried] == ["b", "c"]
    assert started(sched.attempt_failed(sched.in_flight[0], 0.001)) == ["c"]
