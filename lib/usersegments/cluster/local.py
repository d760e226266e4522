"""Level 2: agglomerative sub-groups inside one coarse cluster (numpy/scikit-learn).

``subcluster_group`` is the ``applyInPandas`` body run once per coarse cluster; the
rest is plain numpy so it can be tested without Spark.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from usersegments.cluster.assign import unit_rows
from usersegments.cluster.features import FEATURES
from usersegments.config import SubClusterConfig

SUBCLUSTER_SCHEMA = T.StructType(
    [
        T.StructField("user_id", T.StringType()),
        T.StructField("cluster_id", T.IntegerType()),
        T.StructField("sub_id", T.IntegerType()),
        T.StructField("distance", T.DoubleType()),
    ]
)


def _centroids(x: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    sums = np.zeros((n, x.shape[1]))
    np.add.at(sums, labels, x)
    return unit_rows(sums)


def fit_subgroups(x: np.ndarray, sub: SubClusterConfig, seed: int) -> np.ndarray:
    """Agglomerative labels for unit rows ``x`` (sample + nearest-centroid when too big)."""
    from sklearn.cluster import AgglomerativeClustering

    n = len(x)
    if n < 2:
        return np.zeros(n, dtype=int)
    fit_rows = x
    if n > sub.max_local_points:
        rng = np.random.default_rng(seed)
        fit_rows = x[rng.choice(n, size=sub.max_local_points, replace=False)]
    m = len(fit_rows)
    if sub.target_size is not None:
        n_clusters = int(np.clip(round(n / sub.target_size), 1, m))
        if n_clusters == 1:
            return np.zeros(n, dtype=int)
        params = {"n_clusters": n_clusters}
    else:
        params = {"n_clusters": None, "distance_threshold": sub.distance_threshold}
    if sub.linkage == "ward":
        model = AgglomerativeClustering(linkage="ward", **params)
    else:
        model = AgglomerativeClustering(linkage="average", metric="cosine", **params)
    fit_labels = model.fit_predict(fit_rows)
    if m == n:
        return fit_labels
    centroids = _centroids(fit_rows, fit_labels, int(fit_labels.max()) + 1)
    return np.argmax(x @ centroids.T, axis=1)


def merge_small(x: np.ndarray, labels: np.ndarray, min_size: int) -> np.ndarray:
    """Fold groups smaller than ``min_size`` into their nearest sibling, smallest first."""
    labels = labels.copy()
    while True:
        ids, sizes = np.unique(labels, return_counts=True)
        if len(ids) < 2 or sizes.min() >= min_size:
            break
        small = ids[np.argmin(sizes)]
        centroids = {i: unit_rows(x[labels == i].sum(axis=0, keepdims=True))[0] for i in ids}
        others = [i for i in ids if i != small]
        nearest = max(others, key=lambda i: float(centroids[small] @ centroids[i]))
        labels[labels == small] = nearest
    return labels


def subcluster_group(
    pdf: pd.DataFrame, sub: SubClusterConfig, min_size: int, seed: int
) -> pd.DataFrame:
    """applyInPandas body: one coarse cluster's users -> sub ids and centroid distances.

    Sub ids are numbered by descending size (ties by the smallest user id), so
    reruns on the same data give the same ids.
    """
    if pdf.empty:
        return pd.DataFrame(columns=[f.name for f in SUBCLUSTER_SCHEMA.fields])
    pdf = pdf.sort_values("user_id", kind="stable").reset_index(drop=True)
    x = unit_rows(np.vstack(pdf[FEATURES].to_numpy()))
    cluster = int(pdf["cluster_id"].iloc[0])
    labels = merge_small(x, fit_subgroups(x, sub, seed + cluster), min_size)
    ids, sizes = np.unique(labels, return_counts=True)
    order = sorted(
        range(len(ids)), key=lambda i: (-sizes[i], int(np.flatnonzero(labels == ids[i])[0]))
    )
    renumber = {int(ids[i]): rank for rank, i in enumerate(order)}
    subs = np.array([renumber[int(v)] for v in labels])
    centroids = _centroids(x, subs, len(ids))
    distance = 1.0 - np.einsum("ij,ij->i", x, centroids[subs])
    return pd.DataFrame(
        {
            "user_id": pdf["user_id"],
            "cluster_id": cluster,
            "sub_id": subs.astype(np.int32),
            "distance": np.clip(distance, 0.0, 2.0),
        }
    )


def fine_segments(
    assigned: DataFrame, sub: SubClusterConfig, min_size: int, seed: int
) -> DataFrame:
    """``assigned`` (user_id, cluster_id, features array) split into sub-groups per coarse
    cluster: user_id, cluster_id, sub_id, distance, segment_id and features."""

    def body(pdf: pd.DataFrame) -> pd.DataFrame:  # type hints tell Spark the UDF kind
        return subcluster_group(pdf, sub, min_size, seed)

    return (
        assigned.groupBy("cluster_id")
        .applyInPandas(body, schema=SUBCLUSTER_SCHEMA)
        .withColumn("segment_id", F.format_string("c%02d.s%02d", "cluster_id", "sub_id"))
        .join(assigned.select("user_id", FEATURES), on="user_id")
    )
