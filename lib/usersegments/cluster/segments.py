"""Segments as a whole: centroids, the ``privacy.min_segment_size`` floor across
coarse clusters, distances to centroids, and the ``segments`` table rows."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.ml.stat import Summarizer
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from usersegments.cluster.features import FEATURES
from usersegments.frames import literal_map
from usersegments.profile import with_similarity, with_unit_vector
from usersegments.schema import SEGMENTS, conform

log = logging.getLogger(__name__)


def segment_centroids(fine: DataFrame) -> DataFrame:
    """Per segment of ``fine`` (segment_id, cluster_id, features): its size and unit
    mean vector ``centroid``."""
    means = fine.groupBy("segment_id", "cluster_id").agg(
        F.count(F.lit(1)).alias("size"),
        Summarizer.mean(array_to_vector(F.col(FEATURES))).alias("_mean"),
    )
    mean = vector_to_array(F.col("_mean"), dtype="float32")
    return with_unit_vector(means.withColumn("_mean", mean), "_mean", "centroid").drop("_mean")


def merge_undersized(
    assignments: pd.DataFrame, centroids: pd.DataFrame, min_size: int
) -> dict[str, str]:
    """Segments still below ``min_size`` (whole small clusters) -> nearest other segment.

    ``assignments``: segment_id, size; ``centroids``: segment_id, centroid. Returns
    the remapping of merged segment ids (empty when none is too small).
    """
    sizes = dict(zip(assignments["segment_id"], assignments["size"], strict=True))
    vectors = {
        s: np.asarray(v, dtype=np.float64) / max(np.linalg.norm(v), 1e-12)
        for s, v in zip(centroids["segment_id"], centroids["centroid"], strict=True)
    }
    mapping: dict[str, str] = {}
    while len(sizes) > 1:
        small = min(sizes, key=lambda s: (sizes[s], s))
        if sizes[small] >= min_size:
            break
        target = max(
            (s for s in sizes if s != small), key=lambda s: float(vectors[small] @ vectors[s])
        )
        merged = vectors[small] * sizes[small] + vectors[target] * sizes[target]
        vectors[target] = merged / max(np.linalg.norm(merged), 1e-12)
        sizes[target] += sizes.pop(small)
        for source, dest in list(mapping.items()):
            if dest == small:
                mapping[source] = target
        mapping[small] = target
    return mapping


def enforce_min_size(fine: DataFrame, min_size: int) -> DataFrame:
    """``fine`` with undersized segments merged into their nearest ones; ``distance`` is
    left as it was (``settle_to_nearest`` recomputes it once, at the end)."""
    stats = segment_centroids(fine).select("segment_id", "size", "centroid").toPandas()
    mapping = merge_undersized(
        stats[["segment_id", "size"]], stats[["segment_id", "centroid"]], min_size
    )
    if not mapping:
        return fine
    log.info("cluster: merged %d undersized segments across clusters", len(mapping))
    renamed = literal_map(mapping)[F.col("segment_id")]
    merged = fine.withColumn("segment_id", F.coalesce(renamed, F.col("segment_id")))
    return merged.withColumn(
        "cluster_id", F.regexp_extract("segment_id", r"^c(\d+)\.", 1).cast("int")
    )


def with_distance(fine: DataFrame) -> DataFrame:
    """``fine`` with ``distance`` recomputed against its segments' current centroids."""
    # One row per segment: the centroids travel with the similarity function.
    centroids = segment_centroids(fine).select("segment_id", "centroid").collect()
    targets = {r["segment_id"]: r["centroid"] for r in centroids}
    return (
        with_similarity(fine.drop("distance"), FEATURES, "segment_id", targets, "_similarity")
        .withColumn("distance", F.greatest(F.lit(0.0), 1.0 - F.col("_similarity")))
        .drop("_similarity")
    )


def segment_rows(fine: DataFrame, run_id: str) -> DataFrame:
    """The ``segments`` table rows of a settled clustering (labels come later)."""
    cohesion = fine.groupBy("segment_id").agg(F.avg(1.0 - F.col("distance")).alias("cohesion"))
    rows = (
        segment_centroids(fine)
        .join(cohesion, "segment_id")
        .withColumn("label", F.lit(None).cast("string"))
        .withColumn("keywords", F.array().cast("array<string>"))
        .withColumn("top_items", F.array().cast("array<string>"))
        # Interests place users later (the interests stage); until then reach is unknown.
        .withColumn("reach", F.lit(None).cast("long"))
        .withColumn("run_id", F.lit(run_id))
    )
    return conform(rows, SEGMENTS)
