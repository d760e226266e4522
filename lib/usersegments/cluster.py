"""Cluster: ``user_profiles`` -> ``user_segments`` + ``segments``, in two levels.

1. Coarse: Spark MLlib ``BisectingKMeans`` with cosine distance; ``k`` fixed or
   chosen from ``cluster.k_candidates`` by cosine silhouette on a sample. The
   fitted model is saved with the run so new users can be assigned later.
2. Fine: inside each coarse cluster, ``groupBy(cluster_id).applyInPandas`` runs
   scikit-learn ``AgglomerativeClustering``. A cluster larger than
   ``cluster.sub.max_local_points`` is handled in bounded memory: fit on a
   random sample of that size, take the sub-group centroids, assign every
   member to its nearest centroid. Segments smaller than
   ``privacy.min_segment_size`` are merged into their nearest sibling, and any
   still too small (a whole cluster below the size) into the nearest segment
   overall: no segment ever describes fewer users than that.

Segment ids read ``c{cluster:02d}.s{sub:02d}``; sub-segments are numbered by size.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from pyspark.ml.clustering import BisectingKMeans, BisectingKMeansModel
from pyspark.ml.evaluation import ClusteringEvaluator
from pyspark.ml.feature import PCA
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.ml.stat import Summarizer
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from usersegments.config import Config, PrivacyConfig, SubClusterConfig
from usersegments.errors import StoreError
from usersegments.profile import dot, with_unit_vector
from usersegments.runlog import RunLog, StageResult
from usersegments.schema import SEGMENTS, USER_SEGMENTS, conform
from usersegments.store import TableStore

log = logging.getLogger(__name__)

FEATURES = "features"

SUBCLUSTER_SCHEMA = T.StructType(
    [
        T.StructField("user_id", T.StringType()),
        T.StructField("cluster_id", T.IntegerType()),
        T.StructField("sub_id", T.IntegerType()),
        T.StructField("distance", T.DoubleType()),
    ]
)


def segment_id(cluster: int, sub: int) -> str:
    """The readable segment id ``c{cluster:02d}.s{sub:02d}``."""
    return f"c{cluster:02d}.s{sub:02d}"


# ---------------------------------------------------------------------------
# Level 2: agglomerative sub-groups (pure pandas/numpy, unit-testable)


def unit_rows(rows: np.ndarray) -> np.ndarray:
    """Each row scaled to unit length (float64; zero rows stay zero)."""
    rows = np.asarray(rows, dtype=np.float64)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.clip(norms, 1e-12, None)


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


# ---------------------------------------------------------------------------
# Level 1: coarse clusters (Spark MLlib)


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
        pairs = F.create_map(*[F.lit(int(x)) for kv in enumerate(self.leaf_to_cluster) for x in kv])
        return (
            self.model.transform(users)
            .withColumn("cluster_id", pairs[F.col("_leaf")].cast("int"))
            .drop("_leaf")
        )


LEAF_MAPPING = "leaf_to_cluster"


def save_coarse(spark: SparkSession, coarse: CoarseResult, path: str) -> None:
    """Save the leaf model (MLlib) and its leaf -> cluster mapping beside it, on any
    filesystem Spark writes to."""
    coarse.model.write().overwrite().save(path)
    rows = [(leaf, int(cluster)) for leaf, cluster in enumerate(coarse.leaf_to_cluster)]
    mapping = spark.createDataFrame(rows, "leaf int, cluster_id int").coalesce(1)
    mapping.write.mode("overwrite").json(f"{path}/{LEAF_MAPPING}")


def load_coarse(spark: SparkSession, path: str) -> CoarseResult:
    """The coarse model saved by ``save_coarse``, ready to ``assign`` new users."""
    model = BisectingKMeansModel.load(path)
    rows = spark.read.json(f"{path}/{LEAF_MAPPING}").collect()
    mapping = np.zeros(model.getK(), dtype=int)
    for row in rows:
        mapping[row["leaf"]] = row["cluster_id"]
    return CoarseResult(model, mapping, int(mapping.max()) + 1, {})


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
    """Coarse clusters: bisecting k-means into leaves, leaves merged by weighted Ward.

    Spark bisects level by level and, when a level would exceed k, gives the splits
    to the largest clusters: a large single-interest cluster is split while smaller
    mixed ones stay whole. Bisecting into ``leaves_per_cluster * k`` leaves first and
    merging them back to k removes that bias. With ``k: auto`` the leaves are fitted
    once on a sample, every candidate k is scored by cosine silhouette
    (``ClusteringEvaluator``) on that sample, and the same leaf model assigns all users.
    """
    ccfg = cfg.cluster
    scores: dict[int, float] = {}
    k = ccfg.k
    if k == "auto":
        fraction = min(1.0, ccfg.sample_size / max(total, 1))
        sample = users.sample(fraction=fraction, seed=ccfg.seed).cache()
        n_sample = sample.count()
        candidates = [c for c in ccfg.k_candidates if c < n_sample]
        if not candidates:
            sample.unpersist()
            raise StoreError(
                f"only {n_sample} users to cluster: fewer than every k in cluster.k_candidates "
                f"{ccfg.k_candidates}; lower them or set cluster.k"
            )
        leaves = _bisecting(min(n_sample, ccfg.leaves_per_cluster * max(candidates)), cfg)
        leaf_model = leaves.fit(sample)
        centers, sizes = _leaf_stats(leaf_model, sample)
        evaluator = ClusteringEvaluator(
            featuresCol=FEATURES, predictionCol="cluster_id", distanceMeasure="cosine"
        )
        for candidate in candidates:
            mapping = merge_leaves(centers, sizes, min(candidate, len(sizes)))
            scored = CoarseResult(leaf_model, mapping, candidate, {}).assign(sample)
            scores[candidate] = float(evaluator.evaluate(scored))
            log.info("cluster: k=%d silhouette %.4f", candidate, scores[candidate])
        sample.unpersist()
        k = max(scores, key=lambda c: (scores[c], -c))
        # The leaves fitted on the sample assign everyone; only the merge depends on k.
        centers, sizes = _leaf_stats(leaf_model, users)
        mapping = merge_leaves(centers, sizes, min(int(k), len(sizes)))
        return CoarseResult(leaf_model, mapping, int(k), scores)
    n_leaves = min(total, ccfg.leaves_per_cluster * int(k))
    model = _bisecting(n_leaves, cfg).fit(users)
    centers, sizes = _leaf_stats(model, users)
    mapping = merge_leaves(centers, sizes, min(int(k), len(sizes)))
    return CoarseResult(model=model, leaf_to_cluster=mapping, k=int(k), candidate_scores=scores)


# ---------------------------------------------------------------------------
# Whole-run helpers


def clusterable_users(profiles: DataFrame, min_events: int) -> DataFrame:
    """Profiles with at least ``min_events`` events, as (user_id, features vector)."""
    return profiles.filter(F.col("n_events") >= min_events).select(
        "user_id", array_to_vector(F.col("embedding")).alias(FEATURES)
    )


def reduce_dimensions(
    users: DataFrame, dims: int, sample_size: int, seed: int, total: int
) -> DataFrame:
    """MLlib PCA fit on a sample, applied to everyone, re-normalised."""
    fraction = min(1.0, sample_size / max(total, 1))
    pca = PCA(k=dims, inputCol=FEATURES, outputCol="_pca").fit(
        users.sample(fraction=fraction, seed=seed)
    )
    reduced = pca.transform(users).select(
        "user_id", vector_to_array(F.col("_pca"), dtype="float32").alias("_reduced")
    )
    return with_unit_vector(reduced, "_reduced", "_unit").select(
        "user_id", array_to_vector(F.col("_unit")).alias(FEATURES)
    )


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


# ---------------------------------------------------------------------------
# Nearest-segment assignment: the one rule shared by the full run and updates

ASSIGNMENT_SCHEMA = T.StructType(
    [
        T.StructField("user_id", T.StringType()),
        T.StructField("cluster_id", T.IntegerType()),
        T.StructField("segment_id", T.StringType()),
        T.StructField("distance", T.DoubleType()),
    ]
)


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


def settle_to_nearest(fine: DataFrame, min_size: int) -> DataFrame:
    """Move every user of a fresh clustering to their nearest segment by the update rule.

    Bisecting k-means places a point by descending its tree, which can end in a
    leaf whose centroid is not the nearest; an update would then "move" such a
    user with no new evidence. One reassignment pass (then the size floor again)
    makes the stored membership the one ``nearest_segment_frame`` keeps.
    """
    stats = _segment_centroids(fine).toPandas()
    users = fine.select(
        "user_id", F.col(FEATURES).alias("embedding"), F.col("segment_id").alias("current_segment")
    )
    settled = assign_to_segments(users, stats).join(fine.select("user_id", FEATURES), "user_id")
    return _with_distance(_enforce_min_size(settled, min_size))


@dataclass
class ClusterOutput:
    """The two-level clustering of a set of profiles, before anything is stored.

    ``user_segments`` and ``segments`` follow their table contracts and are cached;
    call ``release`` once they are written or no longer needed.
    """

    user_segments: DataFrame
    segments: DataFrame
    coarse: CoarseResult
    total: int
    as_of: object
    _cached: list[DataFrame]

    def release(self) -> None:
        """Drop the cached frames."""
        for frame in self._cached:
            frame.unpersist()


def cluster_users(
    spark: SparkSession,
    profiles: DataFrame,
    cfg: Config,
    run_id: str,
    model_path: str | None = None,
) -> ClusterOutput:
    """Coarse clusters and fine segments of every profile with enough events.

    ``profiles`` follows the ``user_profiles`` contract. The coarse model is saved
    to ``model_path`` when one is given (a full run keeps it for updates).
    """
    as_of = profiles.agg(F.max("as_of")).first()[0]
    users = clusterable_users(profiles, cfg.profile.min_events)
    total = users.count()
    if total < 2:
        raise StoreError(
            f"{total} users have at least profile.min_events={cfg.profile.min_events} events; "
            "clustering needs more (ingest more events or lower profile.min_events)"
        )
    if cfg.profile.pca_dims:
        users = reduce_dimensions(
            users, cfg.profile.pca_dims, cfg.cluster.sample_size, cfg.cluster.seed, total
        )
    users = users.cache()
    try:
        coarse = fit_coarse(users, cfg, total)
        if model_path:
            save_coarse(spark, coarse, model_path)
    except BaseException:
        users.unpersist()
        raise
    assigned = coarse.assign(users).select(
        "user_id",
        F.col("cluster_id").cast("int").alias("cluster_id"),
        vector_to_array(F.col(FEATURES), dtype="float32").alias(FEATURES),
    )
    sub, min_size, seed = cfg.cluster.sub, cfg.privacy.min_segment_size, cfg.cluster.seed

    def body(pdf: pd.DataFrame) -> pd.DataFrame:  # type hints tell Spark the UDF kind
        return subcluster_group(pdf, sub, min_size, seed)

    fine = (
        assigned.groupBy("cluster_id")
        .applyInPandas(body, schema=SUBCLUSTER_SCHEMA)
        .withColumn("segment_id", F.format_string("c%02d.s%02d", "cluster_id", "sub_id"))
        .join(assigned.select("user_id", FEATURES), on="user_id")
        .cache()
    )
    final = settle_to_nearest(
        _enforce_min_size(fine, cfg.privacy.min_segment_size), cfg.privacy.min_segment_size
    ).cache()
    segments = _segments(final, run_id).cache()
    entry = profiles.select("user_id", F.col("n_events").alias("n_events_at_entry"))
    user_segments = conform(
        final.join(entry, "user_id")
        .withColumn("run_id", F.lit(run_id))
        .withColumn("as_of", F.lit(as_of)),
        USER_SEGMENTS,
    )
    segments.count()
    return ClusterOutput(
        user_segments=user_segments,
        segments=segments,
        coarse=coarse,
        total=total,
        as_of=as_of,
        _cached=[users, fine, final, segments],
    )


def coarse_model_path(store: TableStore, run_id: str) -> str:
    """Where a run saves its coarse model: ``<root>/models/<run_id>/coarse_bisecting_kmeans``."""
    return f"{store.root.rstrip('/')}/models/{run_id}/coarse_bisecting_kmeans"


def run_cluster(
    spark: SparkSession, store: TableStore, cfg: Config, run: RunLog, truth: str | None = None
) -> StageResult:
    """Cluster every profile with enough events into coarse clusters and fine segments."""
    profiles = store.read("user_profiles")
    out = cluster_users(spark, profiles, cfg, run.run_id, coarse_model_path(store, run.run_id))
    try:
        store.write(out.user_segments, "user_segments", mode="overwrite")
        store.write(out.segments, "segments", mode="overwrite")
    finally:
        out.release()
    metrics = _quality(spark, store, cfg, out.coarse, out.total, truth, out.as_of)
    metrics["model_saved"] = 1
    run.record_all("cluster", metrics)
    log.info(
        "cluster: k=%d, %d segments, silhouette %.3f",
        out.coarse.k,
        metrics["segments"],
        metrics["silhouette_cosine"],
    )
    return StageResult(
        stage="cluster",
        tables={t: store.version(t) for t in ("user_segments", "segments")},
        metrics=metrics,
    )


def _segment_centroids(fine: DataFrame) -> DataFrame:
    means = fine.groupBy("segment_id", "cluster_id").agg(
        F.count(F.lit(1)).alias("size"),
        Summarizer.mean(array_to_vector(F.col(FEATURES))).alias("_mean"),
    )
    mean = vector_to_array(F.col("_mean"), dtype="float32")
    return with_unit_vector(means.withColumn("_mean", mean), "_mean", "centroid").drop("_mean")


def _enforce_min_size(fine: DataFrame, min_size: int) -> DataFrame:
    """``fine`` with undersized segments merged into their nearest ones; ``distance`` is
    left as it was (``settle_to_nearest`` recomputes it once, at the end)."""
    stats = _segment_centroids(fine).select("segment_id", "size", "centroid").toPandas()
    mapping = merge_undersized(
        stats[["segment_id", "size"]], stats[["segment_id", "centroid"]], min_size
    )
    if not mapping:
        return fine
    log.info("cluster: merged %d undersized segments across clusters", len(mapping))
    pairs = F.create_map(*[F.lit(x) for kv in mapping.items() for x in kv])
    merged = fine.withColumn(
        "segment_id", F.coalesce(pairs[F.col("segment_id")], F.col("segment_id"))
    )
    return merged.withColumn(
        "cluster_id", F.regexp_extract("segment_id", r"^c(\d+)\.", 1).cast("int")
    )


def _with_distance(fine: DataFrame) -> DataFrame:
    """``fine`` with ``distance`` recomputed against its segments' current centroids."""
    centroids = _segment_centroids(fine).select("segment_id", "centroid")
    return (
        fine.drop("distance")
        .join(centroids, "segment_id")
        .withColumn("distance", F.greatest(F.lit(0.0), 1.0 - dot(FEATURES, "centroid")))
        .drop("centroid")
    )


def _segments(fine: DataFrame, run_id: str) -> DataFrame:
    cohesion = fine.groupBy("segment_id").agg(F.avg(1.0 - F.col("distance")).alias("cohesion"))
    rows = (
        _segment_centroids(fine)
        .join(cohesion, "segment_id")
        .withColumn("label", F.lit(None).cast("string"))
        .withColumn("keywords", F.array().cast("array<string>"))
        .withColumn("top_items", F.array().cast("array<string>"))
        .withColumn("run_id", F.lit(run_id))
    )
    return conform(rows, SEGMENTS)


def _quality(
    spark: SparkSession,
    store: TableStore,
    cfg: Config,
    coarse: CoarseResult,
    total: int,
    truth: str | None,
    as_of,
) -> dict[str, float]:
    from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score

    segs = store.read("user_segments")
    profiles = store.read("user_profiles").select("user_id", "embedding")
    sizes = [r["size"] for r in store.read("segments").select("size").collect()]
    fraction = min(1.0, cfg.cluster.sample_size / max(total, 1))
    sample = (
        segs.join(profiles, "user_id")
        .sample(fraction=fraction, seed=cfg.cluster.seed)
        .select("user_id", "cluster_id", "segment_id", "embedding")
        .toPandas()
    )
    x = np.vstack(sample["embedding"].to_numpy())
    evaluator = ClusteringEvaluator(
        featuresCol=FEATURES, predictionCol="cluster_id", distanceMeasure="cosine"
    )
    with_features = segs.join(profiles, "user_id").select(
        "cluster_id", array_to_vector(F.col("embedding")).alias(FEATURES)
    )
    metrics: dict[str, float] = {
        "users_clustered": total,
        "k": coarse.k,
        "segments": len(sizes),
        "segment_size_min": min(sizes),
        "segment_size_median": float(np.median(sizes)),
        "segment_size_max": max(sizes),
        "silhouette_cosine": float(evaluator.evaluate(with_features)),
        "quality_sample_users": len(sample),
    }
    for k, score in coarse.candidate_scores.items():
        metrics[f"silhouette_k{k}"] = score
    if sample["cluster_id"].nunique() > 1:
        metrics["davies_bouldin"] = float(davies_bouldin_score(x, sample["cluster_id"]))
        metrics["calinski_harabasz"] = float(calinski_harabasz_score(x, sample["cluster_id"]))
    if truth:
        metrics.update(score_against_truth(spark, segs, truth, as_of, cfg.privacy))
    return metrics


def score_against_truth(
    spark: SparkSession,
    segs: DataFrame,
    truth_path: str,
    as_of,
    privacy: PrivacyConfig | None = None,
) -> dict[str, float]:
    """ARI/NMI of coarse clusters vs the planted area and of segments vs (area, sub-style).

    A user whose planted drift happened before ``as_of`` is scored on the new interest.
    """
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    truth = read_truth(truth_path, privacy)
    joined = (
        segs.select("user_id", "cluster_id", "segment_id")
        .toPandas()
        .merge(truth, on="user_id", how="inner")
    )
    if joined.empty:
        return {"truth_users": 0}
    as_of_ts = pd.Timestamp(as_of)
    as_of_ts = as_of_ts.tz_localize("UTC") if as_of_ts.tzinfo is None else as_of_ts
    drifted = joined["drift_date"].notna() & (
        pd.to_datetime(joined["drift_date"], utc=True) <= as_of_ts
    )
    area = joined["area"].where(~drifted, joined["new_area"])
    style = joined["sub_style"].where(~drifted, joined["new_sub_style"])
    return {
        "truth_users": len(joined),
        "ari_cluster_vs_area": float(adjusted_rand_score(area, joined["cluster_id"])),
        "nmi_cluster_vs_area": float(normalized_mutual_info_score(area, joined["cluster_id"])),
        "nmi_segment_vs_substyle": float(
            normalized_mutual_info_score(area + "/" + style, joined["segment_id"])
        ),
        "ari_segment_vs_substyle": float(
            adjusted_rand_score(area + "/" + style, joined["segment_id"])
        ),
    }


def read_truth(path: str, privacy: PrivacyConfig | None = None) -> pd.DataFrame:
    """The generator's truth file (Parquet or CSV) as pandas; its user ids are
    pseudonymized like the stored ones when ``privacy.pseudonymize_user_ids`` is on."""
    from usersegments.privacy import pseudonym_key, pseudonymize_ids

    p = Path(path)
    if not p.exists():
        raise StoreError(f"--truth {path!r} does not exist")
    truth = pd.read_parquet(p) if p.suffix in (".parquet", ".pq") else pd.read_csv(p)
    if privacy is not None and privacy.pseudonymize_user_ids:
        truth["user_id"] = pseudonymize_ids(truth["user_id"].astype(str), pseudonym_key(privacy))
    return truth
