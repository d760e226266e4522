"""Nearest-segment assignment: the one rule a full run settles users by and an
update moves them by (nearest coarse-cluster centroid, then nearest segment in it)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from usersegments.cluster.features import FEATURES
from usersegments.cluster.segments import enforce_min_size, segment_centroids, with_distance

ASSIGNMENT_SCHEMA = T.StructType(
    [
        T.StructField("user_id", T.StringType()),
        T.StructField("cluster_id", T.IntegerType()),
        T.StructField("segment_id", T.StringType()),
        T.StructField("distance", T.DoubleType()),
    ]
)


def segment_id(cluster: int, sub: int) -> str:
    """The readable segment id ``c{cluster:02d}.s{sub:02d}``."""
    return f"c{cluster:02d}.s{sub:02d}"


def unit_rows(rows: np.ndarray) -> np.ndarray:
    """Each row scaled to unit length (float64; zero rows stay zero)."""
    rows = np.asarray(rows, dtype=np.float64)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.clip(norms, 1e-12, None)


def cluster_centroids(segments: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Coarse cluster ids and their unit centroids: the size-weighted mean of their
    segments' centroids."""
    vectors = unit_rows(np.vstack(segments["centroid"].to_numpy()))
    sizes = segments["size"].to_numpy(dtype=np.float64)
    clusters = segments["cluster_id"].to_numpy()
    keys = np.unique(clusters)
    sums = np.vstack([(vectors[clusters == c] * sizes[clusters == c, None]).sum(0) for c in keys])
    return keys, unit_rows(sums)


def nearest_segment_frame(
    pdf: pd.DataFrame,
    segments: pd.DataFrame,
    move_margin: float = 0.0,
    min_new_events: int = 0,
) -> pd.DataFrame:
    """For rows (user_id, embedding[, current_segment][, new_events]): the nearest
    coarse cluster (cosine to its centroid), then the nearest segment centroid inside it.

    A user stays in their current segment unless the chosen one is more similar by
    more than ``move_margin`` (hysteresis: no flapping at a boundary) and, when the
    rows carry ``new_events`` (events since the user entered their segment), they
    have at least ``min_new_events`` of them (a stray event never moves a user).
    """
    x = unit_rows(np.vstack(pdf["embedding"].to_numpy()))
    centroids = unit_rows(np.vstack(segments["centroid"].to_numpy()))
    ids = segments["segment_id"].to_numpy()
    segment_clusters = segments["cluster_id"].to_numpy()
    keys, cluster_vectors = cluster_centroids(segments)
    clusters = keys[np.argmax(x @ cluster_vectors.T, axis=1)]
    sims = x @ centroids.T
    same = segment_clusters[None, :] == clusters[:, None]
    best = np.argmax(np.where(same, sims, -np.inf), axis=1)
    rows = np.arange(len(pdf))
    if "current_segment" in pdf.columns:
        position = {s: i for i, s in enumerate(ids)}
        current = np.array([position.get(s, -1) for s in pdf["current_segment"]])
        known = current >= 0
        stay = known & (sims[rows, np.where(known, current, 0)] >= sims[rows, best] - move_margin)
        if "new_events" in pdf.columns:
            stay |= known & (pdf["new_events"].fillna(0).to_numpy() < min_new_events)
        best = np.where(stay, current, best)
    return pd.DataFrame(
        {
            "user_id": pdf["user_id"].to_numpy(),
            "cluster_id": segment_clusters[best].astype(np.int32),
            "segment_id": ids[best],
            "distance": np.clip(1.0 - sims[rows, best], 0.0, 2.0),
        }
    )


def assign_to_segments(
    users: DataFrame,
    segments: pd.DataFrame,
    move_margin: float = 0.0,
    min_new_events: int = 0,
) -> DataFrame:
    """``users`` (user_id, embedding, current_segment[, new_events]) -> user_id,
    cluster_id, segment_id, distance, by ``nearest_segment_frame`` in a
    ``mapInPandas`` (the segments, one row each, travel with the function)."""
    table = segments[["segment_id", "cluster_id", "size", "centroid"]].copy()
    columns = ["user_id", "embedding", "current_segment"]
    if "new_events" in users.columns:
        columns.append("new_events")

    def nearest(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for pdf in batches:
            if len(pdf):
                yield nearest_segment_frame(pdf, table, move_margin, min_new_events)

    return users.select(*columns).mapInPandas(nearest, schema=ASSIGNMENT_SCHEMA)


def settle_to_nearest(fine: DataFrame, min_size: int, cached: list[DataFrame]) -> DataFrame:
    """Move every user of a fresh clustering to their nearest segment by the update rule.

    Bisecting k-means places a point by descending its tree, which can end in a
    leaf whose centroid is not the nearest; an update would then "move" such a
    user with no new evidence. One reassignment pass (then the size floor again)
    makes the stored membership the one ``nearest_segment_frame`` keeps.

    The reassignment is cached (appended to ``cached``, for the caller to unpersist once
    the result is written): the size floor, the distances and the result all read it.
    """
    stats = segment_centroids(fine).toPandas()
    users = fine.select(
        "user_id", F.col(FEATURES).alias("embedding"), F.col("segment_id").alias("current_segment")
    )
    settled = assign_to_segments(users, stats).join(fine.select("user_id", FEATURES), "user_id")
    settled = settled.cache()
    cached.append(settled)
    return with_distance(enforce_min_size(settled, min_size))
