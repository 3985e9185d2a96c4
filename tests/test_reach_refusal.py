"""Which pairs a refusal makes pointless (core.reach.pointless_after_refusal), on real rankings.

The destination refused the connection from a good source: the pairs to it from sources the
ranking doubted are dropped, every other pair is kept.
"""

from __future__ import annotations

import ipaddress

from apr_async.core.addr_pair import Translator
from apr_async.core.ranking import rank_pairs
from apr_async.core.reach import doubted, pointless_after_refusal, without_pointless
from apr_async.core.rfc6724 import SourceAddress

IP = ipaddress.ip_address


def ranked() -> list:  # type: ignore[type-arg]
    sources = [SourceAddress(IP("203.0.113.5"), prefixlen=24),
               SourceAddress(IP("10.0.1.2"), prefixlen=24),
               SourceAddress(IP("2001:db8:c::2"), prefixlen=64),
               SourceAddress(IP("fd12:3456:789a:c::2"), prefixlen=64)]
    destinations = [(IP("2001:db8:5::10"), None), (IP("198.51.100.10"), None),
                    (IP("198.51.100.11"), None)]
    return rank_pairs(destinations, sources, 443)


def test_only_doubted_sources_to_the_refusing_destination_are_pointless() -> None:
    pairs = ranked()
    by = {(p.source[0], p.destination[0]): p for p in pairs}
    refused = by[("203.0.113.5", "198.51.100.10")]
    assert doubted(by[("10.0.1.2", "198.51.100.10")].reason)
    assert pointless_after_refusal(refused, by[("10.0.1.2", "198.51.100.10")])
    # another destination may still listen, whatever the source
    assert not pointless_after_refusal(refused, by[("10.0.1.2", "198.51.100.11")])
    assert not pointless_after_refusal(refused, by[("203.0.113.5", "198.51.100.11")])
    # other families are other destinations
    assert not pointless_after_refusal(refused, by[("2001:db8:c::2", "2001:db8:5::10")])
    refused6 = by[("2001:db8:c::2", "2001:db8:5::10")]
    assert pointless_after_refusal(refused6, by[("fd12:3456:789a:c::2", "2001:db8:5::10")])


def test_a_source_with_its_translator_seen_is_kept() -> None:
    sources = [SourceAddress(IP("203.0.113.5"), prefixlen=24),
               SourceAddress(IP("10.0.1.2"), prefixlen=24)]
    pairs = rank_pairs([(IP("198.51.100.10"), None)], sources, 443,
                       translators_seen=frozenset({Translator.NAT44.value}))
    refused = next(p for p in pairs if p.source[0] == "203.0.113.5")
    private = next(p for p in pairs if p.source[0] == "10.0.1.2")
    assert not doubted(private.reason)
    assert not pointless_after_refusal(refused, private)


def test_without_pointless_asks_only_failing_pairs_and_drops_their_doubted_twins() -> None:
    pairs = ranked()
    asked: list[str] = []

    def refused(pair: object) -> bool:
        asked.append(pair.source[0])  # type: ignore[attr-defined]
        return True

    assert without_pointless(pairs, refused) is pairs  # nothing failing: nothing asked
    assert asked == []

    class Failing:
        def __init__(self, pair: object) -> None:
            self.pair = pair
            self.failing = True
            self.destination = pair.destination  # type: ignore[attr-defined]
            self.source = pair.source  # type: ignore[attr-defined]

    good = next(p for p in pairs
                if p.source[0] == "203.0.113.5" and p.destination[0] == "198.51.100.10")
    marked = [Failing(good) if p is good else p for p in pairs]
    kept = without_pointless(marked, refused)
    assert asked == ["203.0.113.5"]
    assert [(p.source[0], p.destination[0]) for p in kept if p is not marked[pairs.index(good)]] \
        == [(p.source[0], p.destination[0]) for p in pairs
            if p is not good and not (p.source[0] == "10.0.1.2"
                                      and p.destination[0] == "198.51.100.10")]
