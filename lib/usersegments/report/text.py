"""How the report writes item texts and numbers: each text once, short, never "nan"."""

from __future__ import annotations

import math
from typing import Any

PART_SEPARATOR = " | "  # ingest joins an item's title and an event's text with it


def short_text(text: str, limit: int = 90) -> str:
    """An item's title: its first sentence, cut at ``limit`` characters."""
    first = text.split(". ", 1)[0]
    return first if len(first) <= limit else first[: limit - 1].rstrip() + "…"


def item_title(text: Any, limit: int = 90) -> str:
    """An item's text as one line with every part once ("A | A" -> "A"), shortened."""
    parts: list[str] = []
    for part in str(text).split(PART_SEPARATOR):
        part = part.strip()
        if part and part.casefold() not in {p.casefold() for p in parts}:
            parts.append(part)
    return short_text(PART_SEPARATOR.join(parts), limit)


def fmt(value: Any) -> str:
    """A figure for the page: thousands separated, 4 significant digits, "–" when
    the value is missing or not a number."""
    if value is None:
        return "–"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "–"
        return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)
