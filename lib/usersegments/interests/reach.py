"""``segments.reach``: how many users have a segment as one of their interests."""

from __future__ import annotations

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from usersegments.frames import to_spark
from usersegments.schema import SEGMENTS, with_later_columns
from usersegments.store import TableStore


def segment_reach(interests: DataFrame, min_weight: float) -> pd.DataFrame:
    """segment_id, reach: the users with an interest of weight >= ``min_weight`` in each
    segment (a user counts once however many of their interests land there).

    ``min_weight`` matters only for a user's heaviest interest, always kept even below
    it; every other stored interest already weighs at least that much.
    """
    return (
        interests.filter(F.col("weight") >= min_weight)
        .groupBy("segment_id")
        .agg(F.countDistinct("user_id").alias("reach"))
        .toPandas()
    )


def with_reach(segments: pd.DataFrame, reach: pd.DataFrame) -> pd.DataFrame:
    """``segments`` rows with ``reach`` replaced: 0 for a segment no interest lands in."""
    counted = dict(zip(reach["segment_id"], reach["reach"], strict=True))
    out = segments.copy()
    out["reach"] = [int(counted.get(s, 0)) for s in out["segment_id"]]
    return out


def refresh_reach(spark: SparkSession, store: TableStore, min_weight: float) -> None:
    """Rewrite ``segments.reach`` from the stored ``user_interests``.

    ``segments`` is small (one row per segment): rewritten from the driver, as label does;
    only the per-segment counts of ``segment_reach`` leave Spark.
    """
    reach = segment_reach(store.read("user_interests"), min_weight)
    segments = with_later_columns(store.read("segments").toPandas(), "segments")
    store.write(
        to_spark(spark, with_reach(segments, reach), SEGMENTS), "segments", mode="overwrite"
    )


def co_interest(interests: DataFrame, min_weight: float) -> pd.DataFrame:
    """segment_a, segment_b, users (segment_a < segment_b): how many users have both
    segments among their interests of weight >= ``min_weight``.

    A self-join of each user's few interests (at most ``interests.max_per_user``, so at
    most that squared pairs per user) aggregated in Spark; only the pairs that share a
    user reach the driver, at most segments squared rows.
    """
    kept = (
        interests.filter(F.col("weight") >= min_weight).select("user_id", "segment_id").distinct()
    )
    a = kept.select("user_id", F.col("segment_id").alias("segment_a"))
    b = kept.select("user_id", F.col("segment_id").alias("segment_b"))
    return (
        a.join(b, "user_id")
        .filter(F.col("segment_a") < F.col("segment_b"))
        .groupBy("segment_a", "segment_b")
        .agg(F.count(F.lit(1)).alias("users"))
        .toPandas()
    )
