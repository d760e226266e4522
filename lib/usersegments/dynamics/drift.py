"""Drift figures of an update (moved users, novel texts, segment size change) and the
size refresh of ``segments`` when no re-clustering follows."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from usersegments.cluster import unit_rows
from usersegments.frames import to_spark
from usersegments.schema import SEGMENTS, with_later_columns
from usersegments.store import TableStore


def movement_figures(rows: DataFrame, previous: DataFrame) -> dict[str, float]:
    """How the reassigned ``rows`` (user_id, segment_id, distance) compare with the
    ``previous`` rows: users moved and new, the moved share of those known before, and
    mean distances after and before."""
    moved = F.col("prev_segment").isNotNull() & (F.col("prev_segment") != F.col("segment_id"))
    figures = (
        rows.join(previous, "user_id", "left")
        .agg(
            F.sum(F.col("prev_segment").isNotNull().cast("long")).alias("known"),
            F.sum(moved.cast("long")).alias("moved"),
            F.sum(F.col("prev_segment").isNull().cast("long")).alias("new_users"),
            F.avg("distance").alias("mean_distance"),
            F.avg("prev_distance").alias("mean_prev_distance"),
        )
        .first()
    )
    known = int(figures["known"] or 0)
    return {
        "users_moved": int(figures["moved"] or 0),
        "users_new": int(figures["new_users"] or 0),
        "moved_share": (figures["moved"] or 0) / known if known else 0.0,
        "mean_distance_reassigned": float(figures["mean_distance"] or 0.0),
        "mean_distance_reassigned_before": float(figures["mean_prev_distance"] or 0.0),
    }


def novelty(
    events: DataFrame, vectors: DataFrame, segments: pd.DataFrame, run_id: str, distance: float
) -> dict[str, float]:
    """Share of the texts embedded by this run farther than ``distance`` from every centroid.

    ``events``: the events the update read (``changes.events_to_fold``), which hold every
    event this run ingested, without scanning the table again. The distances are taken
    in the workers (the centroids, one row per segment, travel with the function); only
    two counts reach the driver.
    """
    centroids = unit_rows(np.vstack(segments["centroid"].to_numpy()))

    def nearest(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for pdf in batches:
            if len(pdf):
                x = unit_rows(np.vstack(pdf["embedding"].to_numpy()))
                yield pd.DataFrame({"distance": 1.0 - (x @ centroids.T).max(axis=1)})

    # Texts first seen by this run's embed stage are those its events brought in.
    fresh = (
        events.filter(F.col("run_id") == run_id)
        .select("text_hash")
        .distinct()
        .join(vectors, "text_hash")
        .select("embedding")
    )
    counts = (
        fresh.mapInPandas(nearest, schema="distance double")
        .agg(
            F.count(F.lit(1)).alias("texts"),
            F.sum((F.col("distance") > distance).cast("long")).alias("novel"),
        )
        .first()
    )
    texts = int(counts["texts"] or 0)
    return {
        "new_texts": texts,
        "novel_text_share": (counts["novel"] or 0) / texts if texts else 0.0,
    }


def refresh_sizes(spark: SparkSession, store: TableStore, segments: pd.DataFrame) -> None:
    """Rewrite ``segments.size`` from ``user_segments`` (centroids stay until a re-cluster)."""
    sizes = store.read("user_segments").groupBy("segment_id").count().toPandas()
    counted = dict(zip(sizes["segment_id"], sizes["count"], strict=True))
    updated = with_later_columns(segments, "segments").copy()
    updated["size"] = [int(counted.get(s, 0)) for s in updated["segment_id"]]
    if (updated["size"] == segments["size"]).all():
        return
    store.write(to_spark(spark, updated, SEGMENTS), "segments", mode="overwrite")


def size_change(before: pd.DataFrame, store: TableStore) -> dict[str, float]:
    """How much segment sizes changed: share of users in changed sizes, largest change."""
    after = store.read("segments").select("segment_id", "size").toPandas()
    old = dict(zip(before["segment_id"], before["size"], strict=True))
    new = dict(zip(after["segment_id"], after["size"], strict=True))
    deltas = [abs(new.get(s, 0) - old.get(s, 0)) for s in set(old) | set(new)]
    total = max(sum(new.values()), 1)
    return {
        "segment_size_change_share": sum(deltas) / (2 * total),
        "segment_size_change_max": max(deltas) if deltas else 0,
    }
