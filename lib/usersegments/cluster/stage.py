"""The cluster stage: ``user_profiles`` -> ``user_segments`` + ``segments``, and the
quality figures it records in ``run_metrics``."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
from pyspark.ml.evaluation import ClusteringEvaluator
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from usersegments.cluster.assign import settle_to_nearest
from usersegments.cluster.coarse import CoarseResult, fit_coarse
from usersegments.cluster.features import (
    FEATURES,
    MEMBER,
    clustering_population,
    reduce_dimensions,
    skipped_users,
)
from usersegments.cluster.local import fine_segments
from usersegments.cluster.segments import enforce_min_size, segment_rows
from usersegments.config import Config
from usersegments.errors import InputError
from usersegments.frames import fit_partitions
from usersegments.runlog import RunLog, StageResult
from usersegments.schema import USER_SEGMENTS, conform
from usersegments.store import TableStore
from usersegments.times import max_time

log = logging.getLogger(__name__)


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
    as_of: datetime | None
    _cached: list[DataFrame]
    skipped: dict[str, int] = field(default_factory=dict)
    fit_only: int = 0  # users of too few events who informed the coarse fit, unplaced

    def release(self) -> None:
        """Drop the cached frames."""
        for frame in self._cached:
            frame.unpersist()


@dataclass
class _Population:
    """The coarse fit's rows (``clustering_population``; PCA-reduced when configured),
    how many there are, how many of them are members, and the users left out of
    segments by reason (``skipped_users``)."""

    rows: DataFrame
    fit_rows: int
    members: int
    skipped: dict[str, int]


def _users_to_cluster(profiles: DataFrame, cfg: Config) -> _Population:
    """The population of the coarse fit; fewer than 2 members is an ``InputError``."""
    min_events = cfg.profile.min_events
    users = clustering_population(profiles, min_events, cfg.cluster.fit_few_event_users)
    counts = users.agg(F.count(F.lit(1)), F.sum(F.col(MEMBER).cast("long"))).first()
    fit_rows, total = int(counts[0]), int(counts[1] or 0)
    skipped = skipped_users(profiles, min_events)
    if skipped["zero_vector"]:
        log.warning(
            "cluster: %d users with enough events have a zero or non-finite interest vector "
            "(every event weighs 0?) and are left out (users_skipped.zero_vector)",
            skipped["zero_vector"],
        )
    if total < 2:
        unusable = (
            f" ({skipped['zero_vector']} more have a zero interest vector)"
            if skipped["zero_vector"]
            else ""
        )
        raise InputError(
            f"{total} users have at least profile.min_events={cfg.profile.min_events} events"
            f"{unusable}; clustering needs at least 2 (ingest more events or lower "
            "profile.min_events)"
        )
    if cfg.profile.pca_dims:
        users = reduce_dimensions(
            users, cfg.profile.pca_dims, cfg.cluster.sample_size, cfg.cluster.seed, fit_rows
        )
    return _Population(users, fit_rows, total, skipped)


def cluster_users(
    spark: SparkSession,
    profiles: DataFrame,
    cfg: Config,
    run_id: str,
) -> ClusterOutput:
    """Coarse clusters and fine segments of every profile with enough events
    (``profiles`` follows the ``user_profiles`` contract); with
    ``cluster.fit_few_event_users`` the other usable profiles inform the coarse fit."""
    as_of = max_time(profiles, "as_of")
    population = _users_to_cluster(profiles, cfg)
    # At most cluster.sample_size users a partition: the auto-k fit holds that many.
    users = fit_partitions(
        population.rows, spark, population.fit_rows, cfg.cluster.sample_size
    ).cache()
    try:
        coarse = fit_coarse(users, cfg, population.fit_rows)
    except BaseException:
        users.unpersist()
        raise
    # Cached: the sub-grouping reads the members' coarse assignment several times (sizes,
    # samples, the nearest sub-centroid, the features joined back).
    assigned = (
        coarse.assign(users.filter(F.col(MEMBER)))
        .select(
            "user_id",
            F.col("cluster_id").cast("int").alias("cluster_id"),
            vector_to_array(F.col(FEATURES), dtype="float32").alias(FEATURES),
        )
        .cache()
    )
    min_size = cfg.privacy.min_segment_size
    fine = fine_segments(assigned, cfg.cluster.sub, min_size, cfg.cluster.seed).cache()
    cached = [users, assigned, fine]
    final = settle_to_nearest(enforce_min_size(fine, min_size), min_size, cached).cache()
    segments = segment_rows(final, run_id).cache()
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
        total=population.members,
        as_of=as_of,
        _cached=[*cached, final, segments],
        skipped=population.skipped,
        fit_only=population.fit_rows - population.members,
    )


def run_cluster(
    spark: SparkSession, store: TableStore, cfg: Config, run: RunLog, truth: str | None = None
) -> StageResult:
    """Cluster every profile with enough events into coarse clusters and fine segments."""
    out = cluster_users(spark, store.read("user_profiles"), cfg, run.run_id)
    try:
        store.write(out.user_segments, "user_segments", mode="overwrite")
        store.write(out.segments, "segments", mode="overwrite")
    finally:
        out.release()
    metrics = _quality(spark, store, cfg, out.coarse, out.total, truth, out.as_of)
    metrics.update({f"users_skipped.{reason}": n for reason, n in out.skipped.items()})
    metrics["users_fit_only"] = out.fit_only
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


def _quality(
    spark: SparkSession,
    store: TableStore,
    cfg: Config,
    coarse: CoarseResult,
    total: int,
    truth: str | None,
    as_of: datetime | None,
) -> dict[str, float]:
    """Sizes, cosine silhouette, Davies-Bouldin and Calinski-Harabasz of the stored
    clustering (the last two on a sample), plus ARI/NMI against ``truth`` when given."""
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
        "coarse_refine_passes": coarse.refine_passes,
        "coarse_member_refine_passes": coarse.member_refine_passes,
        "segments": len(sizes),
        "segment_size_min": min(sizes),
        "segment_size_median": float(np.median(sizes)),
        "segment_size_max": max(sizes),
        "silhouette_cosine": float(evaluator.evaluate(with_features)),
        "quality_sample_users": len(sample),
    }
    for k, score in coarse.candidate_scores.items():
        metrics[f"silhouette_k{k}"] = score
    metrics["coarse_restart_chosen"] = coarse.restart_chosen
    for restart, cohesion in enumerate(coarse.restart_cohesion):
        metrics[f"coarse_restart{restart}_cohesion"] = cohesion
    if sample["cluster_id"].nunique() > 1:
        metrics["davies_bouldin"] = float(davies_bouldin_score(x, sample["cluster_id"]))
        metrics["calinski_harabasz"] = float(calinski_harabasz_score(x, sample["cluster_id"]))
    if truth:
        # Imported here: evaluate re-clusters through this package, so a top-level
        # import would make the two packages import each other.
        from usersegments.evaluate.truth import score_against_truth

        metrics.update(score_against_truth(spark, segs, truth, as_of, cfg.privacy))
    return metrics
