"""``segments.reach``: how many users have a segment as one of their interests."""

from __future__ import annotations

import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F


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
