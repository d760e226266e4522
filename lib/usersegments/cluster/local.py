"""Level 2: agglomerative sub-groups inside one coarse cluster (numpy/scikit-learn).

``subcluster_group`` is the ``applyInPandas`` body run once per coarse cluster of at
most ``cluster.sub.max_local_points`` users. A larger cluster never goes whole to one
Python worker: Spark keeps a seeded sample of that many of its users, the worker fits
the sub-groups on the sample (``sample_centroids``), and every member goes to its
nearest sub-centroid in a ``mapInPandas`` (``assign_sampled``). The numpy parts can be
tested without Spark.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import reduce

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, Window
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


def sample_centroids(x: np.ndarray, total: int, sub: SubClusterConfig, min_size: int, seed: int):
    """Unit sub-group centroids fitted on ``x``, a sample of a cluster of ``total`` users.

    The number of groups follows ``total`` (``cluster.sub.target_size``), and the size
    floor is ``min_size`` scaled to the sample, so that the groups the sample shows are
    those the whole cluster would get.
    """
    m = len(x)
    if sub.target_size is not None:
        sub = sub.model_copy(update={"target_size": sub.target_size * m / max(total, 1)})
    labels = merge_small(x, fit_subgroups(x, sub, seed), int(np.ceil(min_size * m / total)))
    _, labels = np.unique(labels, return_inverse=True)
    return _centroids(x, labels, int(labels.max()) + 1)


CENTROID_SCHEMA = T.StructType(
    [
        T.StructField("cluster_id", T.IntegerType()),
        T.StructField("raw_sub", T.IntegerType()),
        T.StructField("centroid", T.ArrayType(T.DoubleType())),
    ]
)


def sampled_subgroups(
    users: DataFrame, sizes: dict[int, int], sub: SubClusterConfig, min_size: int, seed: int
) -> DataFrame:
    """Sub-groups of the clusters in ``users`` that are too big for one worker, fitted on
    a seeded sample of ``cluster.sub.max_local_points`` users per cluster; every user
    then goes to the nearest centroid of their cluster (same columns as
    ``subcluster_group``, sub ids numbered by descending size, ties by smallest user id).
    """
    order = Window.partitionBy("cluster_id").orderBy(F.xxhash64("user_id", F.lit(seed)), "user_id")
    sample = (
        users.withColumn("_pick", F.row_number().over(order))
        .filter(F.col("_pick") <= sub.max_local_points)
        .drop("_pick")
    )

    def fit(pdf: pd.DataFrame) -> pd.DataFrame:
        pdf = pdf.sort_values("user_id", kind="stable")
        cluster = int(pdf["cluster_id"].iloc[0])
        x = unit_rows(np.vstack(pdf[FEATURES].to_numpy()))
        centroids = sample_centroids(x, sizes[cluster], sub, min_size, seed + cluster)
        return pd.DataFrame(
            {"cluster_id": cluster, "raw_sub": range(len(centroids)), "centroid": list(centroids)}
        )

    # k clusters x their sub-groups: the only rows that reach the driver.
    fitted = sample.groupBy("cluster_id").applyInPandas(fit, schema=CENTROID_SCHEMA).collect()
    by_cluster: dict[int, np.ndarray] = {}
    for row in sorted(fitted, key=lambda r: (r["cluster_id"], r["raw_sub"])):
        by_cluster.setdefault(row["cluster_id"], []).append(row["centroid"])
    tables = {c: unit_rows(np.asarray(v)) for c, v in by_cluster.items()}
    nearest = assign_sampled(users, tables)
    return _numbered_by_size(nearest)


def assign_sampled(users: DataFrame, centroids: dict[int, np.ndarray]) -> DataFrame:
    """``users`` (user_id, cluster_id, features) -> user_id, cluster_id, raw_sub,
    distance: the nearest of their cluster's ``centroids`` (cosine)."""
    schema = "user_id string, cluster_id int, raw_sub int, distance double"

    def nearest(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for pdf in batches:
            for cluster, part in pdf.groupby("cluster_id"):
                x = unit_rows(np.vstack(part[FEATURES].to_numpy()))
                sims = x @ centroids[int(cluster)].T
                best = np.argmax(sims, axis=1)
                yield pd.DataFrame(
                    {
                        "user_id": part["user_id"].to_numpy(),
                        "cluster_id": np.int32(cluster),
                        "raw_sub": best.astype(np.int32),
                        "distance": np.clip(1.0 - sims[np.arange(len(x)), best], 0.0, 2.0),
                    }
                )

    return users.select("user_id", "cluster_id", FEATURES).mapInPandas(nearest, schema=schema)


def _numbered_by_size(nearest: DataFrame) -> DataFrame:
    """``raw_sub`` renumbered as ``sub_id`` by descending size, ties by smallest user id."""
    order = Window.partitionBy("cluster_id").orderBy(F.desc("size"), "first_user")
    numbers = (
        nearest.groupBy("cluster_id", "raw_sub")
        .agg(F.count(F.lit(1)).alias("size"), F.min("user_id").alias("first_user"))
        .withColumn("sub_id", (F.row_number().over(order) - 1).cast("int"))
        .select("cluster_id", "raw_sub", "sub_id")
    )
    return nearest.join(numbers, ["cluster_id", "raw_sub"]).select(
        *[f.name for f in SUBCLUSTER_SCHEMA.fields]
    )


def fine_segments(
    assigned: DataFrame, sub: SubClusterConfig, min_size: int, seed: int
) -> DataFrame:
    """``assigned`` (user_id, cluster_id, features array) split into sub-groups per coarse
    cluster: user_id, cluster_id, sub_id, distance, segment_id and features.

    A cluster of at most ``cluster.sub.max_local_points`` users is grouped whole in one
    worker; a larger one through ``sampled_subgroups``.
    """
    sizes = {int(r[0]): int(r[1]) for r in assigned.groupBy("cluster_id").count().collect()}
    big = sorted(c for c, n in sizes.items() if n > sub.max_local_points)

    def body(pdf: pd.DataFrame) -> pd.DataFrame:  # type hints tell Spark the UDF kind
        return subcluster_group(pdf, sub, min_size, seed)

    in_one = ~F.col("cluster_id").isin(big) if big else F.lit(True)
    parts = [assigned.filter(in_one).groupBy("cluster_id").applyInPandas(body, SUBCLUSTER_SCHEMA)]
    if big:
        too_big = assigned.filter(F.col("cluster_id").isin(big))
        parts.append(sampled_subgroups(too_big, sizes, sub, min_size, seed))
    return (
        reduce(DataFrame.unionByName, parts)
        .withColumn("segment_id", F.format_string("c%02d.s%02d", "cluster_id", "sub_id"))
        .join(assigned.select("user_id", FEATURES), on="user_id")
    )
