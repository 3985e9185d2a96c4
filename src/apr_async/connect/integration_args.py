"""The arguments every client integration takes (aiohttp, httpx, websockets), checked once.

Each integration stores its race settings at construction and uses them on every connection,
so a bad value must fail there, before any I/O, with the same words whichever client it is.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence

from apr_async.resolve.pairs import PairContext
from apr_async.resolve.resolver import Resolver

__all__ = ["check_race_settings", "own_context"]


def check_race_settings(
    *,
    context: object = None,
    happy_eyeballs_delay: float | None = None,
    interleave: int | None = None,
    family: int = 0,
) -> None:
    """Raise ``TypeError``/``ValueError`` for a setting the race would refuse later."""
    if context is not None and not isinstance(context, PairContext):
        raise TypeError(f"context must be a PairContext, not {type(context).__name__}")
    if happy_eyeballs_delay is not None and not happy_eyeballs_delay >= 0:
        raise ValueError("happy_eyeballs_delay must be >= 0 or None")
    if interleave is not None and (isinstance(interleave, bool) or interleave < 1):
        raise ValueError("interleave must be a positive int or None")
    if family not in (0, socket.AF_INET, socket.AF_INET6):
        raise ValueError("family must be 0, AF_INET or AF_INET6")


def own_context(
    context: PairContext | None, nameservers: Sequence[str] | None
) -> tuple[PairContext | None, bool]:
    """The context to rank with, and whether it was made here (its resolver is then the
    integration's to close): ``nameservers`` give a private context."""
    if context is not None and nameservers:
        raise ValueError("pass either context or nameservers, not both")
    check_race_settings(context=context)
    if nameservers:
        if isinstance(nameservers, str):
            raise TypeError("nameservers must be a sequence of addresses, not a str")
        return PairContext(resolver=Resolver(list(nameservers))), True
    return context, False
