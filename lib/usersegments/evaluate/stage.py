"""The evaluate stage: re-segment on the training events in memory, score the held-out
events, record every figure in ``run_metrics``; stored tables stay untouched."""

from __future__ import annotations

import logging

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from usersegments import halflife
from usersegments.cluster.stage import cluster_users
from usersegments.config import Config
from usersegments.embed import model_id, model_vectors
from usersegments.errors import InputError
from usersegments.evaluate.holdout import holdout_split, score_strategies, tested_and_seen
from usersegments.evaluate.interests import blended_versus_primary, training_interests
from usersegments.evaluate.truth import score_against_truth
from usersegments.profile import profiles_from_sums, weighted_sums
from usersegments.recommend import with_recommend_half_life
from usersegments.runlog import RunLog, StageResult
from usersegments.store import TableStore
from usersegments.times import max_time

log = logging.getLogger(__name__)

EVENT_COLUMNS = ("event_id", "user_id", "event_time", "event_type", "item_id", "value", "text_hash")


def holdout_count(option: int | None, cfg: Config, section: str = "evaluate") -> int:
    """The events held out per user: ``--holdout-last`` when given, else
    ``<section>.holdout_last`` (``evaluate`` or ``tune``); below 1 is an ``InputError``."""
    configured = getattr(cfg, section).holdout_last
    n_out = option if option is not None else configured
    if n_out < 1:
        raise InputError(
            f"--holdout-last ({section}.holdout_last) must be >= 1, got {n_out}: "
            f"hold out at least one event per user (the default is {configured})"
        )
    return n_out


def run_evaluate(
    spark: SparkSession,
    store: TableStore,
    cfg: Config,
    run: RunLog,
    holdout_last: int | None = None,
    truth: str | None = None,
) -> StageResult:
    """Hold out each user's last events, re-segment on the rest, score the recommendations."""
    n_out = holdout_count(holdout_last, cfg)  # a bad option fails before any table is read
    store.require("events", "text_embeddings", fix="run `usersegments run` first")
    mid = model_id(cfg.embed)
    run.model_id = run.model_id or mid
    events = store.read("events").select(*EVENT_COLUMNS)
    split = holdout_split(events, n_out, cfg.profile.min_events).cache()
    try:
        metrics = _evaluate_split(spark, store, cfg, run, split, n_out, truth)
    finally:
        split.unpersist()
    run.record_all("evaluate", metrics)
    k = cfg.evaluate.k
    log.info(
        "evaluate: hit_rate@%d segment %.3f, cluster %.3f, popularity %.3f over %d users; "
        "users with several interests: blended %.3f, primary segment %.3f over %d",
        k,
        metrics[f"hit_rate@{k}.segment"],
        metrics[f"hit_rate@{k}.cluster"],
        metrics[f"hit_rate@{k}.popularity"],
        metrics["users_tested"],
        metrics[f"hit_rate@{k}.blended_multi"],
        metrics[f"hit_rate@{k}.segment_multi"],
        metrics["users_tested_multi"],
    )
    return StageResult(stage="evaluate", metrics=metrics)


def _evaluate_split(
    spark: SparkSession,
    store: TableStore,
    cfg: Config,
    run: RunLog,
    split: DataFrame,
    n_out: int,
    truth: str | None,
) -> dict[str, float]:
    """Profiles and clustering from the training rows of ``split``, then the figures."""
    vectors = model_vectors(store, model_id(cfg.embed))
    train = split.filter(~F.col("held_out"))
    held_out = split.filter(F.col("held_out") & F.col("item_id").isNotNull()).select(
        "user_id", "item_id"
    )
    as_of = max_time(train, "event_time")
    if as_of is None:
        raise InputError("the events table is empty: ingest events before evaluating")
    # Re-segmenting on the training events is a full run on them: auto half-lives are
    # derived from them as a full run would.
    profile_half_life = halflife.profile_half_life(cfg.profile, train)
    recommend_half_life = halflife.recommend_half_life(cfg.recommend, train)
    cfg = with_recommend_half_life(cfg, recommend_half_life.days)
    train_profile = halflife.with_half_life(cfg.profile, profile_half_life.days)
    sums = weighted_sums(train, vectors, train_profile, as_of)
    profiles = profiles_from_sums(sums, as_of, run.run_id).cache()
    clustered = cluster_users(spark, profiles, cfg, run.run_id)
    try:
        metrics = score_strategies(clustered.user_segments, train, held_out, cfg, as_of)
        tested, seen = tested_and_seen(clustered.user_segments, train, held_out, cfg)
        interests = training_interests(
            train, vectors, tested, clustered.user_segments, profiles, train_profile, cfg, as_of
        )
        metrics.update(
            blended_versus_primary(
                interests, clustered.user_segments, train, held_out, tested, seen, cfg, as_of
            )
        )
        metrics["holdout_last"] = n_out
        metrics["profile_half_life_days"] = profile_half_life.days
        metrics["recommend_half_life_days"] = recommend_half_life.days
        metrics["k"] = cfg.evaluate.k
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
    return metrics
