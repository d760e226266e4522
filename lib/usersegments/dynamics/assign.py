"""Reassigning users whose profile changed to their nearest segment.

Every user whose profile is newer than their segment row goes to the nearest
coarse cluster, then the nearest segment centroid inside it (the rule of
``cluster.assign_to_segments``), with hysteresis (``update.move_margin``) and an
evidence floor (``update.min_new_events`` events since the user entered their
segment); the rows are MERGEd into ``user_segments``.
"""

from __future__ import annotations

import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from usersegments.cluster import assign_to_segments
from usersegments.cluster.features import clusterable
from usersegments.config import UpdateConfig
from usersegments.dynamics.drift import movement_figures
from usersegments.schema import USER_SEGMENTS, conform
from usersegments.store import TableStore


def previous_segments(store: TableStore) -> DataFrame:
    """Each user's ``user_segments`` row before this update, as ``prev_*`` columns."""
    return store.read("user_segments").select(
        "user_id",
        F.col("segment_id").alias("prev_segment"),
        F.col("distance").alias("prev_distance"),
        F.col("as_of").alias("prev_as_of"),
        F.col("n_events_at_entry").alias("prev_entry"),
    )


def stale_users(store: TableStore, min_events: int) -> DataFrame:
    """Profiles newer than their user's segment row (or without one), with enough events
    and a usable vector (``cluster.features.clusterable``: a zero vector has no nearest
    segment)."""
    segs = store.read("user_segments").select("user_id", F.col("run_id").alias("_seg_run"))
    return (
        store.read("user_profiles")
        .filter(clusterable(min_events))
        .join(segs, "user_id", "left")
        .filter(F.col("_seg_run").isNull() | (F.col("run_id") > F.col("_seg_run")))
        .select("user_id", "embedding", "as_of", "n_events")
    )


def segment_rows(
    assigned: DataFrame, stale: DataFrame, previous: DataFrame, run_id: str
) -> DataFrame:
    """``user_segments`` rows for the assigned users, with ``n_events_at_entry`` reset
    for those who entered a segment now (their evidence counts from here on)."""
    entered = F.col("prev_segment").isNull() | (F.col("prev_segment") != F.col("segment_id"))
    return (
        assigned.join(stale.select("user_id", "as_of", "n_events"), "user_id")
        .join(previous.select("user_id", "prev_segment", "prev_entry"), "user_id", "left")
        .withColumn(
            "n_events_at_entry",
            F.when(entered, F.col("n_events")).otherwise(F.col("prev_entry")),
        )
        .drop("prev_segment", "prev_entry")
        .withColumn("run_id", F.lit(run_id))
    )


def reassign(
    store: TableStore,
    cfg: UpdateConfig,
    run_id: str,
    stale: DataFrame,
    previous: DataFrame,
    segments: pd.DataFrame,
) -> dict[str, float]:
    """Assign the ``stale`` users to segments, MERGE them into ``user_segments`` and
    return how many moved (``drift.movement_figures``)."""
    users = stale.join(previous, "user_id", "left").select(
        "user_id",
        "embedding",
        F.col("prev_segment").alias("current_segment"),
        (F.col("n_events") - F.col("prev_entry")).alias("new_events"),
    )
    assigned = assign_to_segments(users, segments, cfg.move_margin, cfg.min_new_events)
    rows = segment_rows(assigned, stale, previous, run_id).cache()
    try:
        store.merge(conform(rows, USER_SEGMENTS), "user_segments", on=["user_id"])
        return movement_figures(rows, previous)
    finally:
        rows.unpersist()
