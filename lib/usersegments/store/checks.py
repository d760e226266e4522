"""Checks on what is written before any commit: options, columns, merge keys, schemas."""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow.compute as pc
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from usersegments.errors import SchemaMismatchError
from usersegments.frames import driver_held


def check_choice(what: str, value: str, allowed: Sequence[str]) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``allowed`` (a caller's bug, not input)."""
    if value not in allowed:
        choices = " or ".join(repr(a) for a in allowed)
        raise ValueError(f"{what} must be {choices}, got {value!r}")


def check_columns_exist(df: DataFrame, columns: Sequence[str], what: str) -> None:
    """Raise ``ValueError`` naming the ``columns`` (of argument ``what``) that ``df`` lacks."""
    absent = [c for c in columns if c not in df.columns]
    if absent:
        raise ValueError(f"{what} names columns {absent} that the DataFrame lacks: {df.columns}")


def check_unique_keys(df: DataFrame, keys: list[str], name: str) -> None:
    """Raise ``ValueError`` when a merge source has a null key or a key twice.

    The stages deduplicate before merging, so either one is a bug: a merge would
    otherwise update a row twice or insert duplicates.
    """
    if driver_held(df):
        _check_unique_held_keys(df, keys, name)
        return
    null_key = F.lit(False)
    for key in keys:
        null_key = null_key | F.col(key).isNull()
    # One pass over the source (a null key groups like any other value).
    bad = df.groupBy(*keys).count().filter(null_key | (F.col("count") > 1)).limit(1).collect()
    if not bad:
        return
    example = {k: bad[0][k] for k in keys}
    if any(v is None for v in example.values()):
        raise ValueError(f"merge into '{name}': key columns {keys} must not be null")
    raise ValueError(
        f"merge into '{name}': source rows must have unique keys {keys}; "
        f"{example} appears {bad[0]['count']} times"
    )


def _check_unique_held_keys(df: DataFrame, keys: list[str], name: str) -> None:
    """``check_unique_keys`` for rows the driver holds: checked in Arrow, without a job."""
    table = df.select(*keys).toArrow()
    for key in keys:
        if table.column(key).null_count:
            raise ValueError(f"merge into '{name}': key columns {keys} must not be null")
    counts = table.group_by(keys).aggregate([([], "count_all")])
    repeated = counts.filter(pc.field("count_all") > 1)
    if repeated.num_rows:
        example = {k: repeated.column(k)[0].as_py() for k in keys}
        raise ValueError(
            f"merge into '{name}': source rows must have unique keys {keys}; "
            f"{example} appears {repeated.column('count_all')[0].as_py()} times"
        )


def check_schema_compatible(table: StructType, incoming: StructType, name: str) -> None:
    """Raise ``SchemaMismatchError`` unless ``incoming`` has ``table``'s columns and types.

    Column order and nullability do not matter; names, count and types do.
    """
    want = {f.name: f.dataType.simpleString() for f in table.fields}
    got = {f.name: f.dataType.simpleString() for f in incoming.fields}
    problems = []
    missing = [c for c in want if c not in got]
    extra = [c for c in got if c not in want]
    if missing:
        problems.append(f"missing columns {missing}")
    if extra:
        problems.append(f"unexpected columns {extra}")
    changed = [
        f"{c}: table has {want[c]}, rows have {got[c]}"
        for c in want
        if c in got and want[c] != got[c]
    ]
    if changed:
        problems.append("type changes (" + "; ".join(changed) + ")")
    if problems:
        raise SchemaMismatchError(
            f"rows written to table '{name}' do not match its schema: {', '.join(problems)}. "
            "Write the table's columns with its types, or overwrite the table to change its schema"
        )
