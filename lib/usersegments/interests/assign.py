"""Each interest's nearest segment, by the rule users are settled by
(``cluster.assign_to_segments``), keyed per interest."""

from __future__ import annotations

import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from usersegments.cluster import FEATURES, assign_to_segments
from usersegments.cluster.segments import segment_centroids
from usersegments.store import TableStore


def full_space_segments(user_segments: DataFrame, profiles: DataFrame) -> pd.DataFrame:
    """segment_id, cluster_id, size, centroid of every segment, the centroid being the
    unit mean of its members' profile vectors.

    Not ``segments.centroid``: with ``profile.pca_dims`` that lies in the reduced space,
    while an interest vector lies in the model's. Without PCA the two are equal.
    """
    members = user_segments.join(profiles, "user_id").select(
        "segment_id", "cluster_id", F.col("embedding").alias(FEATURES)
    )
    return segment_centroids(members).toPandas()


def placement_segments(
    store: TableStore, profiles: DataFrame, pca_dims: int | None
) -> pd.DataFrame:
    """The segments interests are placed at (segment_id, cluster_id, size, centroid).

    Without ``profile.pca_dims`` the clustering ran in the model's space, so the stored
    ``segments.centroid`` is what users are settled by (a full run's, or an update's
    reassignment, which keeps the centroids until a re-clustering): interests go to the
    same centroids, read from the small ``segments`` table instead of averaging every
    profile again. With PCA those centroids lie in the reduced space:
    ``full_space_segments``.
    """
    if pca_dims is None:
        return (
            store.read("segments").select("segment_id", "cluster_id", "size", "centroid").toPandas()
        )
    return full_space_segments(store.read("user_segments"), profiles)


def with_segments(interests: DataFrame, segments: pd.DataFrame) -> DataFrame:
    """``interests`` (user_id, interest_rank, embedding, ...) with the segment_id and
    cluster_id nearest to each interest's vector."""
    key = F.concat_ws("#", "user_id", F.col("interest_rank").cast("string"))
    keyed = interests.withColumn("_key", key)
    candidates = keyed.select(
        F.col("_key").alias("user_id"),
        "embedding",
        F.lit(None).cast("string").alias("current_segment"),
    )
    nearest = assign_to_segments(candidates, segments).select(
        F.col("user_id").alias("_key"), "segment_id", "cluster_id"
    )
    return keyed.join(nearest, "_key").drop("_key")
