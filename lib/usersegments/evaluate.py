"""Evaluate: would these segments have predicted what users did next?

A time-based split holds out each user's last ``N`` events (``--holdout-last``,
``evaluate.holdout_last``; only users who keep ``profile.min_events`` events
for training are tested). Profiles and the two-level clustering are rebuilt
from the training events alone, in memory, with the run's config; nothing of
the stored tables is changed. Each tested user then gets the top
``evaluate.k`` items of, in turn:

- ``segment``: their segment's most popular items (what ``recommend`` writes);
- ``cluster``: their coarse cluster's most popular items;
- ``popularity``: the most popular items overall (the baseline);

minus the items they touched in training (``evaluate.exclude_seen``).
``hit_rate@K`` is the share of tested users with at least one held-out item
among their K; ``recall@K`` the mean share of each user's held-out items found.
With ``--truth``, ARI/NMI of the training clustering against the planted truth.
Every figure goes to ``run_metrics`` (stage ``evaluate``).
"""

from __future__ import annotations

import logging
from datetime import timezone

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from usersegments.cluster import cluster_users, read_truth, score_against_truth
from usersegments.config import Config, PrivacyConfig
from usersegments.embed import model_id, model_vectors
from usersegments.errors import StoreError
from usersegments.profile import profiles_from_sums, weighted_sums
from usersegments.recommend import item_scores, top_per_group, without_seen
from usersegments.runlog import RunLog, StageResult
from usersegments.store import TableStore

log = logging.getLogger(__name__)

STRATEGIES = ("segment", "cluster", "popularity")


def holdout_split(events: DataFrame, holdout_last: int, min_train_events: int) -> DataFrame:
    """``events`` with a boolean ``held_out``: the user's last ``holdout_last`` events,
    for users who keep at least ``min_train_events`` events (ties by event_id)."""
    latest_first = Window.partitionBy("user_id").orderBy(F.desc("event_time"), F.desc("event_id"))
    per_user = Window.partitionBy("user_id")
    return (
        events.withColumn("_pos", F.row_number().over(latest_first))
        .withColumn("_n", F.count(F.lit(1)).over(per_user))
        .withColumn(
            "held_out",
            (F.col("_pos") <= holdout_last) & (F.col("_n") >= min_train_events + holdout_last),
        )
        .drop("_pos", "_n")
    )


def hit_and_recall(recommended: DataFrame, held_out: DataFrame, users: DataFrame) -> dict:
    """Mean hit rate and recall over ``users`` (user_id) of ``recommended`` lists
    (user_id, item_id) against their ``held_out`` items (user_id, item_id)."""
    targets = held_out.groupBy("user_id").agg(F.countDistinct("item_id").alias("_targets"))
    hits = (
        recommended.select("user_id", "item_id")
        .join(held_out.select("user_id", "item_id").distinct(), ["user_id", "item_id"])
        .groupBy("user_id")
        .agg(F.count(F.lit(1)).alias("_hits"))
    )
    per_user = (
        users.join(targets, "user_id").join(hits, "user_id", "left").fillna(0, subset=["_hits"])
    )
    row = per_user.agg(
        F.count(F.lit(1)).alias("users"),
        F.avg((F.col("_hits") > 0).cast("double")).alias("hit_rate"),
        F.avg(F.col("_hits") / F.col("_targets")).alias("recall"),
    ).first()
    return {
        "users": row["users"],
        "hit_rate": row["hit_rate"] or 0.0,
        "recall": row["recall"] or 0.0,
    }


def run_evaluate(
    spark: SparkSession,
    store: TableStore,
    cfg: Config,
    run: RunLog,
    holdout_last: int | None = None,
    truth: str | None = None,
) -> StageResult:
    """Hold out each user's last events, re-segment on the rest, score the recommendations."""
    for table in ("events", "text_embeddings"):
        if not store.exists(table):
            raise StoreError(f"{table} does not exist: run `usersegments run` first")
    ecfg = cfg.evaluate
    n_out = holdout_last if holdout_last is not None else ecfg.holdout_last
    if n_out < 1:
        raise StoreError(f"--holdout-last must be >= 1, got {n_out}")
    mid = model_id(cfg.embed)
    run.model_id = run.model_id or mid
    columns = ["event_id", "user_id", "event_time", "event_type", "item_id", "value", "text_hash"]
    split = holdout_split(store.read("events").select(*columns), n_out, cfg.profile.min_events)
    split = split.cache()
    vectors = model_vectors(store, mid)
    train = split.filter(~F.col("held_out"))
    held_out = split.filter(F.col("held_out") & F.col("item_id").isNotNull()).select(
        "user_id", "item_id"
    )
    try:
        as_of = train.agg(F.max("event_time")).first()[0]
        if as_of is None:
            raise StoreError("events is empty: ingest events before evaluating")
        as_of = as_of if as_of.tzinfo else as_of.replace(tzinfo=timezone.utc)
        profiles = profiles_from_sums(
            weighted_sums(train, vectors, cfg.profile, as_of), as_of, run.run_id
        ).cache()
        clustered = cluster_users(spark, profiles, cfg, run.run_id)
        try:
            metrics = _score(clustered.user_segments, train, held_out, cfg, as_of)
            metrics["holdout_last"] = n_out
            metrics["k"] = ecfg.k
            metrics["coarse_clusters"] = clustered.coarse.k
            metrics["segments"] = clustered.segments.count()
            if truth:
                metrics.update(
                    score_against_truth(
                        spark, clustered.user_segments, truth, clustered.as_of, cfg.privacy
                    )
                )
        finally:
            clustered.release()
            profiles.unpersist()
    finally:
        split.unpersist()
    run.record_all("evaluate", metrics)
    k = ecfg.k
    log.info(
        "evaluate: hit_rate@%d segment %.3f, cluster %.3f, popularity %.3f over %d users",
        k,
        metrics[f"hit_rate@{k}.segment"],
        metrics[f"hit_rate@{k}.cluster"],
        metrics[f"hit_rate@{k}.popularity"],
        metrics["users_tested"],
    )
    return StageResult(stage="evaluate", metrics=metrics)


def _score(user_segments: DataFrame, train: DataFrame, held_out: DataFrame, cfg: Config, as_of):
    ecfg = cfg.evaluate
    groups = user_segments.select(
        "user_id", "segment_id", F.col("cluster_id").cast("string").alias("cluster_id")
    ).withColumn("everyone", F.lit("all"))
    tested = groups.select("user_id").join(held_out.select("user_id").distinct(), "user_id")
    seen = train.filter(F.col("item_id").isNotNull()).select("user_id", "item_id")
    if not ecfg.exclude_seen:
        seen = seen.limit(0)
    metrics: dict[str, float] = {}
    for strategy, column in zip(STRATEGIES, ("segment_id", "cluster_id", "everyone"), strict=True):
        candidates = top_per_group(
            item_scores(train, groups, column, cfg, as_of), column, ecfg.candidates
        )
        recommended = without_seen(
            candidates, groups.select("user_id", column), seen, column, ecfg.k
        )
        figures = hit_and_recall(recommended, held_out, tested)
        metrics[f"hit_rate@{ecfg.k}.{strategy}"] = figures["hit_rate"]
        metrics[f"recall@{ecfg.k}.{strategy}"] = figures["recall"]
        metrics["users_tested"] = figures["users"]
    return metrics


def drift_recovery(
    store: TableStore, truth_path: str, drift_date, privacy: PrivacyConfig | None = None
) -> dict[str, float]:
    """Where the generator's planted drifters are after an update.

    A segment's planted area is the most common current area of its members (the
    new area for users who drifted). Returns the share of drifted users whose
    segment's area is their new area, and the share of the other users whose
    segment changed since ``drift_date`` (a closed ``segment_history`` row).
    """
    truth = read_truth(truth_path, privacy)
    members = store.read("user_segments").select("user_id", "segment_id").toPandas()
    joined = members.merge(truth, on="user_id")
    drifted = joined["new_area"].notna()
    joined["current_area"] = joined["area"].where(~drifted, joined["new_area"])
    dominant = joined.groupby("segment_id")["current_area"].agg(lambda s: s.value_counts().index[0])
    in_new = joined.loc[drifted, "segment_id"].map(dominant) == joined.loc[drifted, "new_area"]
    moved: set[str] = set()
    if store.exists("segment_history"):
        moved = {
            r["user_id"]
            for r in store.read("segment_history")
            .filter(F.col("valid_to").isNotNull() & (F.col("valid_to") >= F.lit(drift_date)))
            .select("user_id")
            .distinct()
            .collect()
        }
    stable = joined.loc[~drifted]
    stable_moved = stable["user_id"].isin(moved)
    # A stable user who moved into a segment of their own planted area was corrected
    # (their first window was too sparse); one who moved elsewhere drifted falsely.
    moved_away = stable_moved & (stable["segment_id"].map(dominant) != stable["area"])
    return {
        "drifted_users": int(drifted.sum()),
        "drifted_in_new_area_share": float(in_new.mean()) if drifted.any() else 0.0,
        "stable_users": len(stable),
        "stable_moved_share": float(stable_moved.mean()) if len(stable) else 0.0,
        "stable_moved_away_share": float(moved_away.mean()) if len(stable) else 0.0,
    }
