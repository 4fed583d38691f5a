"""How numbers, durations and answers read, wherever they are shown (text, HTML, widgets, tables)."""

from __future__ import annotations

import html
from typing import Any

EMPTY_ANSWER = "(empty answer)"


def duration(seconds: float | None) -> str:
    """'0:07', '12:34' or '1:02:03'; '?' when unknown."""
    if seconds is None:
        return "?"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def number(value: Any) -> float | None:
    """`value` if it is a number (not a bool), else None."""
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def count(value: Any) -> str:
    """A whole number with thousands separators; anything else as it is."""
    return f"{value:,}" if isinstance(number(value), int) else str(value)


def gib(size: float) -> str:
    return f"{size / 2**30:.2f} GiB"


def answer_html(text: str) -> str:
    """A generated answer as HTML: as written, at most about 12 lines tall (longer ones scroll), and
    "(empty answer)" when it is only whitespace, as on the JupyterLab run page."""
    if not text.strip():
        return f"<i style='color:#888'>{EMPTY_ANSWER}</i>"
    return f"<div style='white-space:pre-wrap;max-height:12em;overflow-y:auto'>{html.escape(text)}</div>"


def answer_text(text: str | None) -> str:
    """A generated answer as indented text; '—' when there is none."""
    if text is None:
        return "—"
    return text.strip().replace("\n", "\n    ") if text.strip() else EMPTY_ANSWER


class Text(str):
    """Text that a notebook shows as it is (a str result would show quoted, with \\n escapes)."""

    def __repr__(self) -> str:
        return str(self)
