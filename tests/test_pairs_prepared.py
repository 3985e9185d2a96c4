"""get_addr_pairs' memo of destinations and kernel choices (resolve/pairs.py _destinations):
one computation per cached view and answer objects, and a new view is never served an old
view's answer."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping

from apr_async.core.addresses import IPAddress
from apr_async.resolve import pairs
from apr_async.resolve.host import RouteChoice
from apr_async.resolve.interfaces import CachedView, HostSnapshot

A6 = ipaddress.ip_address("2001:db8::1")
A4 = ipaddress.ip_address("192.0.2.1")
S6 = ipaddress.ip_address("2001:db8:1::10")


class _View(CachedView):
    __slots__ = ("asked", "source")

    def __init__(self, source: IPAddress | None) -> None:
        snap = HostSnapshot((), {}, (), "test", "test", 0.0)
        super().__init__(snap, 0.0)
        self.asked = 0
        self.source = source

    def route_choices(
        self, destinations: Iterable[tuple[IPAddress, int | None]]
    ) -> Mapping[tuple[IPAddress, int | None], RouteChoice | None]:
        self.asked += 1
        return {
            key: RouteChoice(key[0], self.source, None, None, None) if key[0].version == 6 else None
            for key in destinations
        }


def test_destinations_are_computed_once_per_view_and_answer_objects() -> None:
    view = _View(S6)
    answer = [(A6, None), (A4, None)]
    first = pairs._destinations(answer, view, "h")
    again = pairs._destinations(list(answer), view, "h")  # a new list of the same objects
    assert again[0] is first[0] and again[1] is first[1] and view.asked == 1
    assert first[0] == ((A6, None), (A4, None))
    assert dict(first[1]) == {A6: S6} and first[1].aligned == (S6, None)
    copies = [(ipaddress.ip_address(str(A6)), None), (ipaddress.ip_address(str(A4)), None)]
    assert pairs._destinations(copies, view, "h")[0] == first[0] and view.asked == 2
    other = _View(None)  # a new snapshot: asked again, its own answer
    assert dict(pairs._destinations(answer, other, "h")[1]) == {} and other.asked == 1


def test_old_views_are_let_go() -> None:
    views = [_View(S6) for _ in range(pairs._VIEWS_MAX + 2)]
    for view in views:
        pairs._destinations([(A6, None)], view, "h")
    assert len(pairs._PREPARED) <= pairs._VIEWS_MAX
    assert all(entry[0] is not views[0] for entry in pairs._PREPARED.values())
