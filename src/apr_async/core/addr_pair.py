"""The ranked pair type, :class:`AddrPair`, and the translators that change which sources can
work (:class:`Translator`): what :func:`apr_async.core.ranking.rank_pairs` returns (sans-IO)."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, NamedTuple

from apr_async.core import reasons

__all__ = ["AddrPair", "SockAddr", "Translator"]

SockAddr = tuple[str, int] | tuple[str, int, int, int]


class Translator(StrEnum):
    """Address translators seen on the path (they change which sources can work)."""

    NAT44 = "nat44"
    NAT64 = "nat64"
    NPTV6 = "nptv6"
    NAT66 = "nat66"


#: The extras of a pair built without them (``_replace``, ``_make``).
_NO_META: tuple[Any, float | None, bool] = ("", None, False)


class _AddrPairFields(NamedTuple):
    family: int
    source: SockAddr
    destination: SockAddr


class AddrPair(_AddrPairFields):
    """A ranked ``(family, source, destination)``; unpack as ``AF, SA, DA = pair``.

    ``source`` is ready for ``bind()`` (``(ip, 0)`` or ``(ip, 0, 0, scope_id)``) and
    ``destination`` for ``connect()`` (``(ip, port)`` or ``(ip, port, 0, scope_id)``); IPv6
    link-local addresses carry their interface index as scope id. Extra read-only
    attributes: ``reason`` (why the pair is at its place, in words), ``rtt`` (seconds, measured
    or inherited, else ``None``) and ``failing`` (it failed recently). Equality, hashing,
    ``len()`` and unpacking see only the three fields.
    """

    # No __slots__: a tuple subclass cannot have non-empty slots, so the extras live in the
    # instance __dict__ under one key, "_meta" = (reason or recipe, rtt, failing).

    def __new__(
        cls,
        family: int,
        source: SockAddr,
        destination: SockAddr,
        *,
        reason: str = "",
        rtt: float | None = None,
        failing: bool = False,
    ) -> AddrPair:
        """Build a pair (normally :func:`rank_pairs` does this)."""
        self = tuple.__new__(cls, (family, source, destination))
        self.__dict__["_meta"] = (reason, rtt, failing)
        return self

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"AddrPair is immutable: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"AddrPair is immutable: cannot delete {name!r}")

    def _get_meta(self) -> tuple[Any, float | None, bool]:
        meta: tuple[Any, float | None, bool] = self.__dict__.get("_meta", _NO_META)
        return meta

    @property
    def reason(self) -> str:
        """Why this pair is at its place, as a network engineer would say it."""
        meta = self._get_meta()
        reason = meta[0]
        if not isinstance(reason, str):
            # Dynamic reasons are formatted only when read: most callers never look.
            reason = reasons.dynamic_reason(reason)
            self.__dict__["_meta"] = (reason, meta[1], meta[2])
        return reason

    @property
    def rtt(self) -> float | None:
        """Measured or inherited round-trip time in seconds, or ``None``."""
        # (the dictionary read inline, not _get_meta(): the fast path reads rtt and failing
        # on every connection, and a call each is measurable there)
        meta: tuple[Any, float | None, bool] = self.__dict__.get("_meta", _NO_META)
        return meta[1]

    @property
    def failing(self) -> bool:
        """True if this pair failed recently (it was moved after the others)."""
        meta: tuple[Any, float | None, bool] = self.__dict__.get("_meta", _NO_META)
        return meta[2]

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_pair,
            ((self.family, self.source, self.destination), (self.reason, self.rtt, self.failing)),
        )


def _rebuild_pair(
    fields: tuple[int, SockAddr, SockAddr], extras: tuple[str, float | None, bool]
) -> AddrPair:
    return _make_pair(*fields, extras)


_new_tuple = tuple.__new__


def _make_pair(
    family: int, source: SockAddr, destination: SockAddr, meta: tuple[Any, float | None, bool]
) -> AddrPair:
    pair: AddrPair = _new_tuple(AddrPair, (family, source, destination))
    pair.__dict__["_meta"] = meta
    return pair


# --- reachability ---------------------------------------------------------------------------
