"""Listings of the store's Delta tables and of one table's rows (``usersegments tables``)."""

from __future__ import annotations

from usersegments.console.output import fmt, print_table
from usersegments.store import TableStore

VECTOR_VALUES_SHOWN = 4


def print_tables(store: TableStore) -> None:
    """List every Delta table under the store root with its version and row count."""
    rows = []
    for name in store.tables():
        rows.append((name, store.version(name), store.row_count(name), store.path(name)))
    print_table(
        f"Delta tables under {store.root} ({store.backend})",
        ["table", "version", "rows", "path"],
        rows,
    )


def print_table_rows(store: TableStore, name: str, version: int | None, limit: int) -> None:
    """Print the first ``limit`` rows of table ``name`` at Delta ``version`` (time travel)
    or, when None, its latest version; vectors are shortened to their first values."""
    latest = store.version(name)
    shown = latest if version is None else version
    df = store.read(name) if version is None else store.read_version(name, version)
    total = df.count()
    rows = df.limit(limit).collect() if limit else []
    print_table(
        f"{name} at version {shown} (latest {latest}): {total} rows, {len(rows)} shown",
        df.columns,
        [[_cell(value) for value in row] for row in rows],
    )


def _cell(value: object) -> object:
    """A value as one short table cell: lists (vectors) show their first values."""
    if not isinstance(value, list):
        return value
    head = ", ".join(fmt(v) for v in value[:VECTOR_VALUES_SHOWN])
    if len(value) > VECTOR_VALUES_SHOWN:
        return f"[{head}, ... {len(value)} values]"
    return f"[{head}]"
