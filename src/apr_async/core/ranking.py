"""Rank (source, destination) address pairs: the four-level precedence, with reasons (sans-IO).

:func:`rank_pairs` orders every pair by, in this precedence:

1. **Reachability.** A pair whose source cannot possibly reach the destination is *dropped*:
   a source of a smaller scope than the destination (link-local or site-local source to a
   global destination, ``169.254/16`` to a routed IPv4 address), a loopback source to a
   non-local destination, a link-local IPv6 destination from a non-link-local source or from
   a link-local source on another interface than the destination's zone. A family without
   any usable source therefore yields no pair at all. A pair that *probably* cannot work is
   kept but placed *last*: a ULA source to a global IPv6 destination when no NPTv6/NAT66
   translator was seen (one may exist undetected); an RFC 1918 or CGN (``100.64/10``) source
   to a public IPv4 destination when the host also has a public IPv4 source and no NAT44 was
   seen (a host whose only IPv4 sources are private is the usual NAT44 home: unaffected); a
   non-loopback source to a loopback destination (only when no loopback source of that
   family exists).
2. **Recent failures** (:class:`~apr_async.core.failures.FailureTable`): those pairs go after the
   others; they are reordered, never removed.
3. **Measured latency** (exact or inherited from the longest known prefix): measured pairs
   come first, fastest first, except that IPv6 wins unless it is more than ``ipv6_bias_ms``
   slower than IPv4.
4. **RFC 6724** for the rest: destinations by :func:`~apr_async.core.rfc6724.sort_destinations`
   rules, and for each destination its RFC 6724 source first, then its other usable sources
   by the same source rules; the kernel's own choice breaks ties between equally good sources
   (and tells source rule 5 which interface is the outgoing one).

Levels 1 and 4 depend only on the addresses, so they are computed once per distinct input
and cached (with the ready-made pairs). Levels 2 and 3 are applied from the tables and their
result is memoised with the tables' versions: it stands until either table changes or a
failure expires (the failure table's generation), recent failures included.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from apr_async.core import reasons
from apr_async.core.addr_pair import AddrPair, Translator, _make_pair, _rebuild_pair
from apr_async.core.addresses import IPAddress
from apr_async.core.failures import Failure, FailureTable
from apr_async.core.latency import LatencyTable
from apr_async.core.latency_trie import Estimate
from apr_async.core.plan import (
    _Entry,
    _Memo,
    _Plan,
)
from apr_async.core.plan_cache import _plan_for
from apr_async.core.policy_table import DEFAULT_POLICY_TABLE, PolicyTable
from apr_async.core.reach import _ULA_TRANSLATORS
from apr_async.core.rfc6724 import SourceAddress
from apr_async.core.sequences import str_tuple

__all__ = ["AddrPair", "Translator", "rank_pairs"]

# _rebuild_pair stays importable from here: pickles of AddrPair made before the split name it.
_ = _rebuild_pair


def _check_number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{what} must be a number, not {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{what} must be finite, not {value!r}")
    return float(value)


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
    skip_rule9_prefixes: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network] = (),
) -> list[AddrPair]:
    """Return the (source, destination) pairs for *destinations*, best first, with reasons.

    *destinations* are ``(ip, zone_index_or_None)`` in DNS / RFC 6724 input order (duplicates
    are dropped; the zone index matters only for IPv6 link-local destinations); *sources* the
    local :class:`~apr_async.core.rfc6724.SourceAddress` es (with ``ifindex`` for link-local scope
    ids). *latency* and *failures* are read at time *now*. *kernel_sources* maps a destination
    to the source the kernel would pick. *translators_seen* holds :class:`Translator` values:
    NPTv6 or NAT66 make a ULA source usable towards global IPv6 destinations, NAT44 a private
    IPv4 source next to a public one usable towards public IPv4. Destination rule
    9 is skipped for destinations in *skip_rule9_prefixes*. See the module documentation for
    the order.

    Raises ``TypeError`` / ``ValueError`` on malformed input, before doing anything else.
    """
    if isinstance(port, bool) or not isinstance(port, int):
        raise TypeError(f"port must be an int, not {type(port).__name__}")
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be in 0..65535, not {port}")
    bias_ms = _check_number(ipv6_bias_ms, "ipv6_bias_ms")
    now = _check_number(now, "now")
    if not isinstance(policy, PolicyTable):
        raise TypeError("policy must be a PolicyTable")
    if type(translators_seen) is not frozenset:
        # Anything else (a list, a generator) is frozen once: the two checks below would
        # otherwise each read a generator, the second one finding it empty. A frozenset (the
        # default, and what PairContext keeps) is taken as it is, at no cost per call.
        translators_seen = frozenset(str_tuple(translators_seen, "translators_seen"))
    ula_translated = not _ULA_TRANSLATORS.isdisjoint(translators_seen)
    nat44_seen = Translator.NAT44.value in translators_seen
    skip = tuple(skip_rule9_prefixes)

    plan = _plan_for(destinations, sources, port, kernel_sources=kernel_sources,
                     ula_translated=ula_translated, nat44_seen=nat44_seen, policy=policy,
                     skip=skip)

    failures_version = 0
    if failures is not None:
        failures_version = failures.generation(now)  # first: it drops what expired by now
        if len(failures) == 0:
            failures, failures_version = None, 0
    if latency is not None and len(latency) == 0:
        latency = None
    if latency is None and failures is None:
        return list(plan.pairs)
    latency_version = 0 if latency is None else latency.version
    if _MEMOISE:
        hit = _memoised(plan, latency=latency, failures=failures,
                        latency_version=latency_version, failures_version=failures_version,
                        bias_ms=bias_ms, now=now)
        if hit is not None:
            return hit
    result = _apply_measurements(plan, latency=latency, failures=failures, now=now, bias_ms=bias_ms)
    if _MEMOISE:
        _remember(plan, result, latency=latency, failures=failures,
                  latency_version=latency_version, bias_ms=bias_ms, now=now)
    return result


def _memoised(
    plan: _Plan,
    *,
    latency: LatencyTable | None,
    failures: FailureTable | None,
    latency_version: int,
    failures_version: int,
    bias_ms: float,
    now: float,
) -> list[AddrPair] | None:
    """The plan's last result of levels 2 and 3 if it still stands, else ``None``."""
    memo = plan.memo
    if not memo:
        return None
    # The tables' versions cover every change of their contents and every expiry, so
    # equal versions mean the same order and the same measurements.
    last = memo[0]
    if (
        last.latency is latency
        and last.failures is failures
        and last.latency_version == latency_version
        and last.failures_version == failures_version
        and last.bias_ms == bias_ms
    ):
        if not last.failing or last.now == now:
            return list(last.pairs)
        return _restamp(last, now)
    return None


def _remember(
    plan: _Plan,
    result: list[AddrPair],
    *,
    latency: LatencyTable | None,
    failures: FailureTable | None,
    latency_version: int,
    bias_ms: float,
    now: float,
) -> None:
    """Keep ``result`` as the plan's last result of levels 2 and 3."""
    failing = tuple(
        (index, pair.__dict__["_meta"][0]) for index, pair in enumerate(result) if pair.failing
    )
    plan.memo[:] = [
        _Memo(
            latency,
            latency_version,
            failures,
            # Read again: a lookup may have dropped an expired entry.
            0 if failures is None else failures.version,
            bias_ms,
            now,
            tuple(result),
            failing,
        )
    ]


#: Off only in tests, to compare memoised rankings with fresh ones.
_MEMOISE = True


def _restamp(memo: _Memo, now: float) -> list[AddrPair]:
    """The memoised pairs, the failing ones made again so their reasons say the age at *now*."""
    result = list(memo.pairs)
    for index, recipe in memo.failing:
        pair = result[index]
        stamped: reasons.Recipe = (*recipe[:6], now, *recipe[7:])
        result[index] = _make_pair(
            pair.family, pair.source, pair.destination, (stamped, pair.rtt, True)
        )
    return result


def _first(row: tuple[Any, ...]) -> Any:
    return row[0]


def _apply_measurements(
    plan: _Plan,
    *,
    latency: LatencyTable | None,
    failures: FailureTable | None,
    now: float,
    bias_ms: float,
) -> list[AddrPair]:
    """Levels 2 and 3: move recent failures after the others, measured pairs first."""
    indexes = (
        [latency.source_index(key) for key in plan.source_keys]
        if latency is not None
        else [None] * len(plan.source_keys)
    )
    rows: list[
        tuple[
            tuple[int, int, int, float, int, int],
            _Entry,
            Estimate | None,
            Failure | None,
            float | None,
        ]
    ] = []
    best = {True: math.inf, False: math.inf}  # best RTT per family among level-3 pairs
    lookup = None if latency is None else latency.lookup_key
    fail = None if failures is None else failures.failure_key
    for entry in plan.entries:
        estimate = None
        if lookup is not None:
            index = indexes[entry.source_slot]
            if index is not None:
                estimate = lookup(index, entry.dst_key, entry.dst_int, entry.v6)
        failure = None if fail is None else fail(entry.fail_key, now)
        if estimate is None and failure is None:
            rows.append((entry.base_key, entry, None, None, None))
            continue
        rtt = None if estimate is None else estimate.rtt
        v6 = entry.v6
        if rtt is not None and failure is None and entry.doubt is None and rtt < best[v6]:
            best[v6] = rtt
        base = entry.base_key
        if rtt is None:
            key = (base[0], 0 if failure is None else 1, 1, 0.0, 0, base[5])
        else:
            effective = rtt * 1000.0 - bias_ms if v6 else rtt * 1000.0
            key = (base[0], 0 if failure is None else 1, 0, effective, 0 if v6 else 1, base[5])
        rows.append((key, entry, estimate, failure, rtt))
    rows.sort(key=_first)
    result = []
    for _, entry, estimate, failure, rtt in rows:
        if estimate is None and failure is None:
            result.append(entry.pair)
            continue
        other = best[not entry.v6]
        recipe: reasons.Recipe = (
            entry.head,
            entry.doubt,
            entry.rfc,
            entry.v6,
            failure,
            estimate,
            now,
            None if other == math.inf else other,
            bias_ms,
        )
        pair = entry.pair
        result.append(
            _make_pair(
                pair.family, pair.source, pair.destination, (recipe, rtt, failure is not None)
            )
        )
    return result
