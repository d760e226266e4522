"""``segment_history``, a type-2 slowly changing dimension of user -> segment.

Every user has one open row (no ``valid_to``) naming their current segment; a
user whose open row disagrees with ``user_segments`` gets it closed and a new one
opened. Both steps are one idempotent MERGE, so a rerun after a crash adds nothing.
"""

from __future__ import annotations

from datetime import datetime

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from usersegments.schema import SEGMENT_HISTORY, conform
from usersegments.store import TableStore


def history_changes(
    current: DataFrame, open_rows: DataFrame, as_of: datetime, run_id: str
) -> DataFrame:
    """Rows to MERGE into segment_history on (user_id, valid_from) so that every user's
    open row names their current segment.

    ``current``: user_id, segment_id; ``open_rows``: the history rows with no valid_to.
    A user whose segment changed gets the open row closed at ``as_of`` and a new one
    opened; a row opened at this very ``as_of`` is rewritten instead.
    """
    o = open_rows.select(
        "user_id", F.col("segment_id").alias("_open_seg"), F.col("valid_from").alias("_open_from")
    )
    changed = current.join(o, "user_id", "left").filter(
        F.col("_open_seg").isNull() | (F.col("_open_seg") != F.col("segment_id"))
    )
    at = F.lit(as_of).cast("timestamp")
    same_time = F.col("_open_from") == at
    closes = changed.filter(F.col("_open_seg").isNotNull() & ~same_time).select(
        "user_id",
        F.col("_open_seg").alias("segment_id"),
        F.col("_open_from").alias("valid_from"),
        at.alias("valid_to"),
        F.lit(run_id).alias("run_id"),
    )
    opens = changed.select(
        "user_id",
        "segment_id",
        at.alias("valid_from"),
        F.lit(None).cast("timestamp").alias("valid_to"),
        F.lit(run_id).alias("run_id"),
    )
    return conform(closes.unionByName(opens), SEGMENT_HISTORY)


def reconcile_history(store: TableStore, as_of: datetime | None, run_id: str) -> int:
    """Make ``segment_history`` agree with ``user_segments``; returns rows merged.

    The first call seeds it: one open row per user from the clustering's as_of.
    """
    current = store.read("user_segments").select("user_id", "segment_id", "as_of")
    if not store.exists("segment_history"):
        seed = current.select(
            "user_id",
            "segment_id",
            F.col("as_of").alias("valid_from"),
            F.lit(None).cast("timestamp").alias("valid_to"),
            F.lit(run_id).alias("run_id"),
        )
        store.write(conform(seed, SEGMENT_HISTORY), "segment_history", mode="overwrite")
        return store.row_count("segment_history")
    open_rows = store.read("segment_history").filter(F.col("valid_to").isNull())
    changes = history_changes(current.drop("as_of"), open_rows, as_of, run_id).cache()
    try:
        n = changes.count()
        if n:
            store.merge(changes, "segment_history", on=["user_id", "valid_from"])
    finally:
        changes.unpersist()
    return n
