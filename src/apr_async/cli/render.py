"""Output for the ``apr-async`` command line: aligned tables, colours, a live view, progress.

Standard library only. Colours are used only when the stream is a terminal and ``NO_COLOR`` is
unset (https://no-color.org), unless forced with ``--color always``/``never``; widths ignore
the escape codes so tables stay aligned either way.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

__all__ = [
    "LiveView",
    "Progress",
    "Style",
    "format_duration",
    "format_ms",
    "render_table",
    "to_json",
]

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_ANSI_SPLIT = re.compile(f"({_ANSI.pattern})")
_CODES = {
    "bold": "1",
    "dim": "2",
    "red": "31",
    "green": "32",
    "yellow": "33",
    "blue": "34",
    "magenta": "35",
    "cyan": "36",
}


def visible_len(text: str) -> int:
    """Length of ``text`` on screen (ANSI escapes removed)."""
    return len(_ANSI.sub("", text))


class Style:
    """Applies ANSI styles when enabled; otherwise returns text unchanged."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    @classmethod
    def for_stream(cls, stream: TextIO, mode: str = "auto") -> Style:
        """Colours for ``stream``: ``always``, ``never``, or ``auto`` (TTY and no NO_COLOR)."""
        if mode == "always":
            return cls(True)
        if mode == "never":
            return cls(False)
        isatty = getattr(stream, "isatty", None)
        tty = bool(isatty and isatty())
        return cls(tty and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb")

    def __call__(self, text: str, *styles: str) -> str:
        if not self.enabled or not styles:
            return text
        codes = ";".join(_CODES[s] for s in styles)
        return f"\x1b[{codes}m{text}\x1b[0m"

    def ok(self, text: str) -> str:
        """Green: something works."""
        return self(text, "green")

    def bad(self, text: str) -> str:
        """Red: something is broken."""
        return self(text, "red")

    def warn(self, text: str) -> str:
        """Yellow: degraded or unknown."""
        return self(text, "yellow")


def render_table(
    headers: Sequence[str],
    rows: Iterable[Sequence[object]],
    style: Style | None = None,
    *,
    align_right: Iterable[int] = (),
    indent: str = "",
) -> str:
    """An aligned text table; the last column is not padded (it may hold long reasons)."""
    st = style or Style(False)
    right = set(align_right)
    cells = [[str(c) for c in row] for row in rows]
    head = list(headers)
    widths = [visible_len(h) for h in head]
    for row in cells:
        for i, cell in enumerate(row):
            if i < len(widths):
                widths[i] = max(widths[i], visible_len(cell))

    def line(row: Sequence[str], is_header: bool = False) -> str:
        out = []
        for i, cell in enumerate(row):
            pad = widths[i] - visible_len(cell)
            last = i == len(row) - 1
            if i in right:
                text = " " * pad + cell
            elif last:
                text = cell
            else:
                text = cell + " " * pad
            out.append(st(text, "bold") if is_header else text)
        return (indent + "  ".join(out)).rstrip()

    lines = [line(head, True)]
    lines.extend(line(row) for row in cells)
    return "\n".join(lines)


def format_ms(seconds: float | None, digits: int = 1) -> str:
    """``0.0123`` -> ``"12.3 ms"``; ``None`` -> ``"-"``."""
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.{digits}f} ms"


def format_duration(seconds: float) -> str:
    """A short human duration: ``850 ms``, ``12.5 s``, ``3m05s``."""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s"


def _default(value: Any) -> Any:
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if hasattr(value, "as_dict"):
        return value.as_dict()
    return str(value)


def to_json(data: object) -> str:
    """JSON for scripts: stable key order, anything unknown as its ``str()``."""
    return json.dumps(data, default=_default, sort_keys=True)


def _cut(line: str, width: int) -> str:
    """``line`` cut to ``width`` columns on screen; a colour cut off midway is reset."""
    if visible_len(line) <= width:
        return line
    out, shown = [], 0
    for part in _ANSI_SPLIT.split(line):
        if _ANSI.fullmatch(part):
            out.append(part)
        else:
            kept = part[: max(0, width - shown)]
            out.append(kept)
            shown += len(kept)
    return "".join(out) + ("\x1b[0m" if "\x1b[" in line else "")


class LiveView:
    """Redraws a block of text in place on a terminal; prints each frame plainly otherwise.

    On a terminal the cursor moves up over the previous frame and clears to the end of the
    screen before drawing, so the view refreshes without scrolling.
    """

    def __init__(self, stream: TextIO | None = None, *, live: bool | None = None) -> None:
        self.stream = stream or sys.stdout
        isatty = getattr(self.stream, "isatty", None)
        self.live = bool(isatty and isatty()) if live is None else live
        self._lines = 0

    def update(self, text: str) -> None:
        """Show ``text`` as the current frame."""
        if self.live:
            width = shutil.get_terminal_size((100, 24)).columns
            # Lines are cut to the width: a wrapped line would throw the cursor-up count off.
            frame = "\n".join(_cut(line, width) for line in text.splitlines())
            if self._lines:
                self.stream.write(f"\x1b[{self._lines}F")
            self.stream.write("\x1b[J" + frame + "\n")
            self._lines = frame.count("\n") + 1
        else:
            self.stream.write(text + "\n\n")
        self.stream.flush()


class Progress:
    """A one-line progress indicator on a terminal (``\\r``-rewritten); silent otherwise."""

    _SPIN = "|/-\\"

    def __init__(self, stream: TextIO | None = None, *, enabled: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.enabled = bool(isatty and isatty()) if enabled is None else enabled
        self._n = 0
        self._shown = False

    def update(self, text: str) -> None:
        """Replace the progress line with ``text`` and a spinner."""
        if not self.enabled:
            return
        self._n += 1
        self.stream.write(f"\r\x1b[K{self._SPIN[self._n % 4]} {text}")
        self.stream.flush()
        self._shown = True

    def clear(self) -> None:
        """Erase the progress line (before printing the result)."""
        if self._shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._shown = False
