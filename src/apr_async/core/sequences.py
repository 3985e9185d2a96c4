"""Sequences from callers, normalised once: a list, a tuple or any iterable of ``str``.

Users pass lists (``Config(targets=["198.51.100.2"])``); the library keeps tuples, so a value
cannot change under it and a generator is read exactly once.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["str_tuple"]


def str_tuple(value: Iterable[str], what: str) -> tuple[str, ...]:
    """``value`` (a list, a tuple, any iterable of str) as a tuple of str.

    A bare ``str`` is refused (it would be taken letter by letter), and so is an element that
    is not a ``str``; both with a ``TypeError`` naming ``what``.
    """
    if isinstance(value, str | bytes):
        raise TypeError(
            f"{what} must be a sequence of str (a list or tuple), not a single "
            f"{type(value).__name__}: write [{value!r}]"
        )
    try:
        items = tuple(value)
    except TypeError:
        raise TypeError(
            f"{what} must be a sequence of str (a list or tuple), not {type(value).__name__}"
        ) from None
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"{what} must contain str, not {type(item).__name__} ({item!r})")
    return items
