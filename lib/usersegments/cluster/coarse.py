"""Level 1: coarse clusters by Spark MLlib bisecting k-means, leaves merged back to k.

Spark bisects level by level and, when a level would exceed k, gives the splits to
the largest clusters: a large single-interest cluster is split while smaller mixed
ones stay whole. Bisecting into ``cluster.leaves_per_cluster * k`` leaves first and
merging them back to k (size-weighted Ward) removes that bias.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from pyspark.ml.clustering import BisectingKMeans, BisectingKMeansModel
from pyspark.ml.evaluation import ClusteringEvaluator
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from usersegments.cluster.features import FEATURES
from usersegments.config import Config
from usersegments.errors import InputError
from usersegments.frames import literal_map

log = logging.getLogger(__name__)


def merge_leaves(centroids: np.ndarray, sizes: np.ndarray, k: int) -> np.ndarray:
    """Size-weighted Ward merging of leaf centroids into ``k`` groups; leaf -> group id.

    Merges the pair whose union raises the within-group sum of squares least,
    ``n_a n_b / (n_a + n_b) * |c_a - c_b|^2``, until ``k`` groups remain. Group ids
    are numbered by descending size.
    """
    groups = {i: (centroids[i].astype(np.float64), float(sizes[i]), [i]) for i in range(len(sizes))}
    while len(groups) > k:
        keys = list(groups)
        best, pair = np.inf, None
        for a_pos, a in enumerate(keys):
            ca, na, _ = groups[a]
            for b in keys[a_pos + 1 :]:
                cb, nb, _ = groups[b]
                cost = na * nb / (na + nb) * float(np.sum((ca - cb) ** 2))
                if cost < best:
                    best, pair = cost, (a, b)
        a, b = pair
        ca, na, la = groups[a]
        cb, nb, lb = groups.pop(b)
        groups[a] = ((ca * na + cb * nb) / (na + nb), na + nb, la + lb)
    ordered = sorted(groups.values(), key=lambda g: (-g[1], min(g[2])))
    mapping = np.zeros(len(sizes), dtype=int)
    for group_id, (_, _, leaves) in enumerate(ordered):
        mapping[leaves] = group_id
    return mapping


@dataclass
class CoarseResult:
    """The fitted leaf model, its leaf -> cluster mapping, k and each candidate's silhouette."""

    model: BisectingKMeansModel
    leaf_to_cluster: np.ndarray
    k: int
    candidate_scores: dict[int, float]

    def assign(self, users: DataFrame) -> DataFrame:
        """``users`` with ``cluster_id``: their leaf's coarse cluster."""
        pairs = literal_map({int(leaf): int(c) for leaf, c in enumerate(self.leaf_to_cluster)})
        return (
            self.model.transform(users)
            .withColumn("cluster_id", pairs[F.col("_leaf")].cast("int"))
            .drop("_leaf")
        )


def _bisecting(k: int, cfg: Config) -> BisectingKMeans:
    return BisectingKMeans(
        k=k,
        featuresCol=FEATURES,
        predictionCol="_leaf",
        distanceMeasure="cosine",
        maxIter=cfg.cluster.max_iter,
        seed=cfg.cluster.seed,
    )


def _leaf_stats(model: BisectingKMeansModel, rows: DataFrame) -> tuple[np.ndarray, np.ndarray]:
    centers = np.vstack([np.asarray(c, dtype=np.float64) for c in model.clusterCenters()])
    centers /= np.clip(np.linalg.norm(centers, axis=1, keepdims=True), 1e-12, None)
    counts = dict(model.transform(rows).groupBy("_leaf").count().collect())
    sizes = np.array([counts.get(i, 0) for i in range(len(centers))], dtype=float)
    return centers, sizes


def fit_coarse(users: DataFrame, cfg: Config, total: int) -> CoarseResult:
    """Coarse clusters of ``users`` (user_id, features): bisecting k-means into leaves,
    leaves merged by weighted Ward into ``cluster.k`` clusters, or into the candidate of
    ``cluster.k_candidates`` with the best silhouette when ``cluster.k`` is ``auto``."""
    k = cfg.cluster.k
    if k == "auto":
        return _fit_auto_k(users, cfg, total)
    model = _bisecting(min(total, cfg.cluster.leaves_per_cluster * int(k)), cfg).fit(users)
    centers, sizes = _leaf_stats(model, users)
    mapping = merge_leaves(centers, sizes, min(int(k), len(sizes)))
    return CoarseResult(model=model, leaf_to_cluster=mapping, k=int(k), candidate_scores={})


def _fit_auto_k(users: DataFrame, cfg: Config, total: int) -> CoarseResult:
    """The leaves are fitted once on a sample, every candidate k is scored by cosine
    silhouette (``ClusteringEvaluator``) on that sample, and the same leaf model
    assigns all users: only the merge depends on k."""
    ccfg = cfg.cluster
    fraction = min(1.0, ccfg.sample_size / max(total, 1))
    sample = users.sample(fraction=fraction, seed=ccfg.seed).cache()
    n_sample = sample.count()
    candidates = [c for c in ccfg.k_candidates if c < n_sample]
    if not candidates:
        sample.unpersist()
        raise InputError(
            f"only {n_sample} users to cluster: fewer than every k in cluster.k_candidates "
            f"{ccfg.k_candidates}; lower cluster.k_candidates, set cluster.k, or profile "
            "more users"
        )
    leaves = _bisecting(min(n_sample, ccfg.leaves_per_cluster * max(candidates)), cfg)
    leaf_model = leaves.fit(sample)
    centers, sizes = _leaf_stats(leaf_model, sample)
    evaluator = ClusteringEvaluator(
        featuresCol=FEATURES, predictionCol="cluster_id", distanceMeasure="cosine"
    )
    scores: dict[int, float] = {}
    for candidate in candidates:
        mapping = merge_leaves(centers, sizes, min(candidate, len(sizes)))
        scored = CoarseResult(leaf_model, mapping, candidate, {}).assign(sample)
        scores[candidate] = float(evaluator.evaluate(scored))
        log.info("cluster: k=%d silhouette %.4f", candidate, scores[candidate])
    sample.unpersist()
    k = max(scores, key=lambda c: (scores[c], -c))
    centers, sizes = _leaf_stats(leaf_model, users)
    mapping = merge_leaves(centers, sizes, min(int(k), len(sizes)))
    return CoarseResult(leaf_model, mapping, int(k), scores)
