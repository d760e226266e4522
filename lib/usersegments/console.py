"""What commands print for people: table listings and run summaries (rich)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from rich.console import Console
from rich.table import Table

from usersegments.store import TableStore

_console = Console(highlight=False)


def print_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """Print a small table with a title."""
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*[_fmt(v) for v in row])
    _console.print(table)


def print_tables(store: TableStore) -> None:
    """List every Delta table under the store root with its version and row count."""
    rows = []
    for name in store.tables():
        rows.append((name, store.version(name), store.read(name).count(), store.path(name)))
    print_table(
        f"Delta tables under {store.root} ({store.backend})",
        ["table", "version", "rows", "path"],
        rows,
    )


def say(message: str) -> None:
    """Print one line for the user."""
    _console.print(message)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
