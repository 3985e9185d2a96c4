"""Environment-variable text to typed values for :class:`apr_async.config.Config`."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

__all__ = ["parse_env_text"]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_env_text(raw: str, hint: Any) -> Any:
    """The value of an ``APR_ASYNC_*`` variable for a Config field annotated ``hint``.

    Booleans ``1/true/yes/on`` or ``0/false/no/off``; tuples split on commas or spaces
    (``none`` or empty: an empty tuple); optional values accept ``none``. Strings and
    ``Literal`` choices come back as text: ``Config`` validates them.
    """
    text = raw.strip()
    args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if type(None) in args:  # Optional[X]
        if text.lower() in {"", "none"}:
            return None
        (inner,) = (a for a in args if a is not type(None))
        return parse_env_text(text, inner)
    if hint is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ValueError("expected a boolean (1/0, true/false, yes/no, on/off)")
    if hint is int:
        return int(text)
    if hint is float:
        return float(text)
    if hint is Path:
        return Path(text).expanduser()
    if origin is tuple:
        if text.lower() in {"", "none"}:
            return ()
        return tuple(part for part in text.replace(",", " ").split() if part)
    # str and Literal choices: checked by _validate
    return text
