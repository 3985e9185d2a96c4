"""The timeline of one race for ``apr-async connect`` (and the demo): events, JSON, rows."""

from __future__ import annotations

import errno as errno_codes
import os
import socket
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any

from apr_async.cli.common import (
    family_name,
    sockaddr_text,
)
from apr_async.cli.render import Style, format_ms
from apr_async.connect.api import (
    AttemptRecorder,
    ConnectPair,
    PairSource,
)
from apr_async.connect.types import families_for
from apr_async.errors import describe_resolution_error
from apr_async.resolve.resolver import Resolver

__all__ = ["TIMELINE_HEADERS", "Timeline", "json_ms", "timeline_event_json", "timeline_rows"]


def json_ms(seconds: float | None) -> float | None:
    """Seconds as milliseconds for JSON (microsecond precision)."""
    return None if seconds is None else round(seconds * 1000, 3)


class Timeline:
    """Collects what happened during one race, with times relative to its start.

    It is the race's ``service`` (``record_attempt``) and wraps its pair source, so it sees
    each family's answer and each attempt's outcome as they happen. ``events`` hold times in
    seconds; :func:`timeline_event_json` gives their JSON form and :func:`timeline_rows` a
    table.
    """

    def __init__(
        self,
        source: PairSource,
        recorder: AttemptRecorder | None = None,
        *,
        resolver: Resolver | None = None,
    ) -> None:
        self._source = source
        self._recorder = recorder
        # Asked (never queried: cached answers only) why a family came back without pairs.
        self._resolver = resolver
        self.t0 = time.monotonic()
        self.events: list[dict[str, Any]] = []

    def _at(self) -> float:
        return time.monotonic() - self.t0

    def record_attempt(
        self, pair: Any, port: int, ok: bool, rtt: float | None, errno: int | None
    ) -> None:
        """Called by the race for every attempt that has an outcome."""
        if self._recorder is not None:  # the context still learns, as without a timeline
            self._recorder.record_attempt(pair, port, ok, rtt, errno)
        connected = ok and errno is None
        self.events.append(
            {
                "t": self._at(),
                "kind": "attempt",
                "family": family_name(pair.family),
                "source": sockaddr_text(pair.source, port=False),
                "destination": sockaddr_text(pair.destination),
                "ok": connected,
                "outcome": "connected" if connected else _errno_text(errno),
                "rtt": rtt,
            }
        )

    def pair_source(
        self, host: str, port: int, family: int
    ) -> AsyncIterator[tuple[int, Sequence[ConnectPair]]]:
        """The wrapped pair source, noting when each family's answer arrived."""

        async def gen() -> AsyncIterator[tuple[int, Sequence[ConnectPair]]]:
            agen = self._source(host, port, family)
            answered: set[int] = set()
            try:
                async for fam, pairs in agen:
                    if fam == socket.AF_UNSPEC:
                        answered.update(families_for(family))
                    else:
                        answered.add(fam)
                    self._answer(
                        # AF_UNSPEC: every family at once (a literal, a warm cache).
                        "both" if fam == socket.AF_UNSPEC else family_name(fam),
                        len(pairs),
                        None if pairs else self._family_error(host, fam),
                    )
                    yield fam, pairs
            except socket.gaierror as exc:
                # A source may raise the name's error instead of yielding the families that
                # had no answer: give every family its row, so the timeline tells the story.
                for fam in families_for(family):
                    if fam not in answered:
                        why = self._family_error(host, fam) or describe_resolution_error(exc)
                        self._answer(family_name(fam), 0, why)
                raise
            finally:
                # A PairSource is any async iterator; the ones that are generators get closed
                # here, in this task, rather than by the garbage collector later.
                aclose = getattr(agen, "aclose", None)
                if aclose is not None:
                    await aclose()

        return gen()

    def _answer(self, family: str, pairs: int, error: str | None) -> None:
        event: dict[str, Any] = {"t": self._at(), "kind": "answer", "family": family,
                                 "pairs": pairs}
        if error is not None:
            event["error"] = error
        self.events.append(event)

    def _family_error(self, host: str, family: int) -> str | None:
        """Why ``family`` has no address, from the resolver's cache (``None``: not known)."""
        if self._resolver is None:
            return None
        try:
            resolution = self._resolver.cached(host, family)
        except (ValueError, TypeError):
            return None
        if resolution is None:
            return None
        for answer in resolution.answers:
            if answer.error is not None and family in (socket.AF_UNSPEC, answer.family):
                return describe_resolution_error(answer.error)
        return None


def _errno_text(errno: int | None) -> str:
    if errno is None:
        return "failed"
    if errno == errno_codes.ECONNREFUSED:
        return "refused"
    if errno == errno_codes.ETIMEDOUT:
        # The race reports an attempt it abandoned (after its delay) as ETIMEDOUT.
        return "timed out / lost the race"
    return os.strerror(errno).lower()


#: Column headers of :func:`timeline_rows`.
TIMELINE_HEADERS = ("t", "family", "source", "destination", "outcome")


def timeline_event_json(event: Mapping[str, Any]) -> dict[str, Any]:
    """A :class:`Timeline` event (seconds) in its JSON form: ``t`` and ``rtt`` in ms."""
    out = {**event, "t": json_ms(event["t"])}
    if "rtt" in event:
        out["rtt"] = json_ms(event["rtt"])
    return out


def timeline_rows(events: Iterable[Mapping[str, Any]], style: Style) -> list[list[str]]:
    """Table rows under :data:`TIMELINE_HEADERS` for events in their JSON form (ms).

    An ``answer`` event counts ``pairs`` (a ranked answer) or ``addresses`` (an unranked
    one, in the system's order); an ``attempt`` shows its outcome and, when one came, the
    time the far end took to answer.
    """
    rows = []
    for e in events:
        t = format_ms(e["t"] / 1000)
        if e["kind"] == "answer":
            what = (
                f"{e['pairs']} pair(s)"
                if "pairs" in e
                else f"{e['addresses']} address(es), system order"
            )
            if e.get("error"):
                what = style.bad(str(e["error"]))
            rows.append([t, e["family"], style("answer", "dim"), "", what])
            continue
        outcome = style.ok(e["outcome"]) if e["ok"] else style.bad(e["outcome"])
        if e.get("rtt") is not None:
            outcome += f" in {format_ms(e['rtt'] / 1000)}"
        rows.append([t, e["family"], e["source"], e["destination"], outcome])
    return rows
