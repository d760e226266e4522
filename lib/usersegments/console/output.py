"""The terminal itself: one rich console, a line, a table, and how a cell is written."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from rich.console import Console
from rich.table import Table

_console = Console(highlight=False)


def say(message: str) -> None:
    """Print one line for the user."""
    _console.print(message)


def print_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """Print a small table with a title."""
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*[fmt(v) for v in row])
    _console.print(table)


def measured(value: float | None) -> bool:
    """Whether a figure was measured: present and not NaN (ARI/NMI without truth are NaN)."""
    return value is not None and not math.isnan(value)


def fmt(value: object) -> str:
    """A cell: floats to 4 significant digits; a missing or unmeasured value as "–",
    never "None" or "nan"."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
