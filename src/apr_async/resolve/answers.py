"""What a lookup answers: :class:`FamilyAnswer` (one family), :class:`Resolution` (both),
the single error of a host none of whose families resolved, and the stream of answers in the
order they arrive."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from apr_async.errors import EAI_NODATA, HostSpec, ResolutionError, gaierror

__all__ = [
    "Address",
    "AnswerStream",
    "FamilyAnswer",
    "IPAddress",
    "Resolution",
    "as_cached",
    "combined_error",
    "families_of",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
#: An address as ``(ip, zone)``; ``zone`` is an interface name or index text, or ``None``.
Address = tuple[IPAddress, str | None]


@dataclass(frozen=True, slots=True)
class FamilyAnswer:
    """One address family's answer for a host.

    ``origin`` says where it came from: ``"dns"``, ``"cache"``, ``"hosts"``, ``"localhost"``,
    ``"invalid"`` (an RFC 6761 ``.invalid`` name, never sent to DNS) or ``"literal"``.
    ``error`` is set (and ``addresses`` empty) when the lookup failed.
    """

    family: int
    addresses: tuple[Address, ...]
    canonname: str | None
    ttl: float
    origin: str
    error: ResolutionError | None = None


@dataclass(frozen=True, slots=True)
class Resolution:
    """Both families' answers for a host (only the asked family when one was given)."""

    host: HostSpec
    answers: tuple[FamilyAnswer, ...]

    @property
    def addresses(self) -> list[Address]:
        """Every address, IPv6 answers first, each family in the order the server gave."""
        ordered = sorted(self.answers, key=lambda a: a.family != socket.AF_INET6)
        return [address for answer in ordered for address in answer.addresses]

    @property
    def canonname(self) -> str:
        """The canonical name (the target of a CNAME chain), else the host as given."""
        for answer in sorted(self.answers, key=lambda a: a.family != socket.AF_INET6):
            if answer.canonname:
                return answer.canonname
        return self.host.name or self.host.text

    def error(self) -> ResolutionError | None:
        """The gaierror to raise when no family has an address, else ``None``."""
        return combined_error(self.host.text, self.answers)


def combined_error(host: str, answers: Iterable[FamilyAnswer]) -> ResolutionError | None:
    """The single error for a host none of whose families resolved.

    NXDOMAIN is about the name, so it wins; otherwise a temporary failure of either family
    means a retry may help (``EAI_AGAIN``); otherwise the name exists without addresses.
    """
    errors = []
    for answer in answers:
        if answer.addresses:
            return None
        if answer.error is not None:
            errors.append(answer.error)
    if not errors:
        return gaierror(EAI_NODATA, host=host)
    for code in (socket.EAI_NONAME, socket.EAI_AGAIN, socket.EAI_FAIL):
        for err in errors:
            if err.errno == code:
                return gaierror(code, host=host, detail=err.detail)
    return gaierror(errors[0].errno or socket.EAI_FAIL, host=host, detail=errors[0].detail)


def as_cached(answer: FamilyAnswer) -> FamilyAnswer:
    """*answer* as served from the cache (``origin`` ``"cache"``)."""
    return FamilyAnswer(answer.family, answer.addresses, answer.canonname, answer.ttl, "cache",
                        answer.error)


def families_of(family: int) -> tuple[int, ...]:
    """The families a lookup for *family* asks: both for ``AF_UNSPEC``, IPv6 first."""
    if family == socket.AF_UNSPEC:
        return (socket.AF_INET6, socket.AF_INET)
    if family in (socket.AF_INET6, socket.AF_INET):
        return (family,)
    raise ValueError(f"family {family} is not AF_UNSPEC, AF_INET or AF_INET6")


class AnswerStream:
    """Async iterator over ready answers, then pending ones in completion order."""

    def __init__(self, ready: list[FamilyAnswer],
                 pending: list[asyncio.Future[FamilyAnswer]]) -> None:
        self._ready = ready
        self._pending = set(pending)
        self._order = pending

    def __aiter__(self) -> AnswerStream:
        return self

    async def __anext__(self) -> FamilyAnswer:
        if self._ready:
            return self._ready.pop(0)
        if not self._pending:
            raise StopAsyncIteration
        done = [f for f in self._order if f in self._pending and f.done()]
        if not done:
            # asyncio.wait never cancels what it waits for: a cancelled caller leaves the
            # shared query running for the other callers and the cache.
            await asyncio.wait(self._pending, return_when=asyncio.FIRST_COMPLETED)
            done = [f for f in self._order if f in self._pending and f.done()]
        first = done[0]
        self._pending.discard(first)
        return first.result()
