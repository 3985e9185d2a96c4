"""The words of ``AddrPair.reason``: why a pair is at its place (sans-IO).

A reason is ``"<source kind> -> <destination kind>: <clause>; <clause>..."`` with at most one
clause per ranking level, always in the order of the levels, so that the clause that decided
the place comes first and a reader can stop there:

1. reachability doubt: ``last: needs NPTv6/NAT66, none seen`` (for a ULA source), ``last:
   needs NAT44, none seen`` (for a private IPv4 source next to a public one)
2. recent failure: ``after the others: failed 12 s ago (ECONNREFUSED, 2 times)``
3. latency: ``RTT 20.0 ms (3 samples)``, ``RTT 20.0 ms inherited from 2001:db8::/40 (2
   destinations)``, with how the IPv6 bias played when the other family is measured too; or
   ``no RTT yet`` / ``no RTT: 100% probe loss`` when latency could not decide
4. RFC 6724, only when latency did not decide: ``RFC 6724: after 2001:db8::1 (destination
   rule 6, higher precedence), source over 10.0.0.2 (source rule 8, longest matching
   prefix)``, or ``alternative to 10.0.0.3 (...)`` for a source RFC 6724 ranks lower

Addresses, family and RTT are in the pair itself, so the reason does not repeat them.
"""

from __future__ import annotations

from typing import Final

from apr_async.core.failures import Failure
from apr_async.core.latency_trie import Estimate
from apr_async.core.rfc6724 import DESTINATION_RULES
from apr_async.core.source_selection import SOURCE_RULES

__all__ = [
    "KERNEL_TIE",
    "ORDER_TIE",
    "Recipe",
    "destination_clause",
    "dynamic_reason",
    "head",
    "source_clauses",
    "source_rule",
    "static_reason",
]

#: Why one source beat another when RFC 6724 rates them equal.
KERNEL_TIE: Final = "kernel's choice, RFC 6724 tie"
ORDER_TIE: Final = "input order, RFC 6724 tie"

NO_RTT: Final = "no RTT yet"


def head(source_kind: str, destination_kind: str) -> str:
    """``"GUA -> GUA"``: what kind of path this is, at a glance."""
    return f"{source_kind} -> {destination_kind}"


def source_rule(rule: int) -> str:
    """``"source rule 8, longest matching prefix"``."""
    return f"source rule {rule}, {SOURCE_RULES[rule]}"


def destination_clause(rule: int | None, before: bool, other: str | None) -> str:
    """Where RFC 6724 put a destination relative to its neighbour *other* (None: alone)."""
    if other is None or rule is None:
        return "only destination"
    where = "before" if before else "after"
    return f"{where} {other} (destination rule {rule}, {DESTINATION_RULES[rule]})"


def source_clauses(sources: list[str], whys: list[str]) -> list[str]:
    """One clause per source of a destination, best first.

    *sources* are the address texts in RFC 6724 order; ``whys[i]`` says why ``sources[0]``
    beat ``sources[i + 1]`` (:func:`source_rule`, :data:`KERNEL_TIE` or :data:`ORDER_TIE`).
    """
    if len(sources) == 1:
        return ["only usable source"]
    best = sources[0]
    return [
        f"source over {sources[1]} ({whys[0]})",
        *(f"alternative to {best} ({why})" for why in whys),
    ]


def static_reason(head_text: str, doubt: str | None, rfc: str) -> str:
    """The reason of a pair placed by levels 1 and 4 only (nothing measured, no failure)."""
    if doubt is None:
        return f"{head_text}: {NO_RTT}; {rfc}"
    return f"{head_text}: last: {doubt}; {NO_RTT}; {rfc}"


def _ms(seconds: float) -> str:
    ms = seconds * 1000.0
    return f"{ms:.1f} ms" if ms < 100 else f"{ms:.0f} ms"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _failure_clause(failure: Failure, now: float) -> str:
    age = max(0.0, now - failure.last)
    details = [failure.error] if failure.error else []
    if failure.count > 1:
        details.append(f"{failure.count} times")
    suffix = f" ({', '.join(details)})" if details else ""
    return f"after the others: failed {age:.0f} s ago{suffix}"


def _bias_clause(rtt: float, best_other: float, v6: bool, bias_ms: float) -> str:
    """How this pair compares with the best pair of the other family, bias included."""
    diff_ms = (rtt - best_other) * 1000.0
    bias = f"the {bias_ms:g} ms bias"
    if v6:
        if diff_ms < 0:
            return "faster than IPv4"
        if diff_ms == 0:
            return "as fast as IPv4"
        if diff_ms <= bias_ms:
            return f"IPv6 preferred: within {bias}"
        return f"IPv6 {diff_ms:.1f} ms slower than IPv4, beyond {bias}"
    if diff_ms >= 0:
        return "slower than IPv6"
    if -diff_ms > bias_ms:
        return f"ahead of IPv6: IPv6 {-diff_ms:.1f} ms slower, beyond {bias}"
    return f"behind IPv6: within {bias}"


def _latency_clause(
    estimate: Estimate, v6: bool, best_other: float | None, bias_ms: float
) -> str:
    rtt = estimate.rtt
    if rtt is None:
        lost = f"no RTT: {estimate.loss:.0%} probe loss"
        return f"{lost} under {estimate.prefix}" if estimate.inherited else lost
    details = [f"{estimate.loss:.0%} loss"] if estimate.loss else []
    if estimate.inherited:
        details.insert(0, _plural(estimate.destinations, "destination"))
        text = f"RTT {_ms(rtt)} inherited from {estimate.prefix} ({', '.join(details)})"
    else:
        details.insert(0, _plural(estimate.samples, "sample"))
        text = f"RTT {_ms(rtt)} ({', '.join(details)})"
    if best_other is not None:
        text += ", " + _bias_clause(rtt, best_other, v6, bias_ms)
    return text


#: Everything a measured or failing pair's reason is made of:
#: ``(head, doubt, rfc clause, IPv6?, failure, estimate, now, best RTT of the other family,
#: IPv6 bias in ms)``. Formatted only when ``reason`` is read: most callers never look.
Recipe = tuple[
    str, str | None, str, bool, Failure | None, Estimate | None, float, float | None, float
]


def dynamic_reason(recipe: Recipe) -> str:
    """The reason of a pair that a measurement or a recent failure moved."""
    head_text, doubt, rfc, v6, failure, estimate, now, best_other, bias_ms = recipe
    parts = []
    if doubt is not None:
        parts.append(f"last: {doubt}")
    if failure is not None:
        parts.append(_failure_clause(failure, now))
    if estimate is None:
        parts.append(NO_RTT)
    else:
        parts.append(_latency_clause(estimate, v6, best_other, bias_ms))
    if estimate is None or estimate.rtt is None:
        parts.append(rfc)
    return f"{head_text}: {'; '.join(parts)}"
