"""The interests stage: events x user_profiles x segments -> ``user_interests``, and
``segments.reach``; ``interest_rows``, which the update's refresh shares."""

from __future__ import annotations

import logging
from datetime import datetime

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from usersegments.cluster.features import clusterable, skipped_users
from usersegments.config import Config
from usersegments.embed import model_id, model_vectors
from usersegments.embed.stage import vectors_fit_broadcast
from usersegments.halflife import stored_profile_half_life, with_half_life
from usersegments.interests.assign import placement_segments, with_segments
from usersegments.interests.events import recent_weighted_events
from usersegments.interests.local import InterestRule, interests_of_users
from usersegments.interests.metrics import interest_counts
from usersegments.interests.reach import refresh_reach
from usersegments.runlog import RunLog, StageResult
from usersegments.schema import USER_INTERESTS, conform
from usersegments.store import TableStore
from usersegments.times import max_time

log = logging.getLogger(__name__)


def interest_rule(cfg: Config) -> InterestRule:
    """The ``interests.*`` settings ``user_interests`` applies to one user's events."""
    return InterestRule(
        distance_threshold=cfg.interests.distance_threshold,
        max_per_user=cfg.interests.max_per_user,
        min_weight=cfg.interests.min_weight,
    )


def found_interests(
    store: TableStore, cfg: Config, run: RunLog, users: DataFrame, as_of: datetime
) -> DataFrame:
    """The interests (``INTEREST_SCHEMA``) of ``users`` (user_id) in their recent events,
    weighed as the stored profiles weigh events: the half-life they were built with
    (``halflife.stored_profile_half_life``), decayed to ``as_of``. The vectors are
    broadcast when they fit ``spark.broadcast_vectors_mb``. Lazy: Ward runs per user
    when it is evaluated, so cache it when it is used twice."""
    mid = model_id(cfg.embed)
    events = store.read("events").select(
        "user_id", "event_time", "event_type", "value", "text_hash"
    )
    profile_cfg = with_half_life(
        cfg.profile, stored_profile_half_life(store, cfg.profile, events, run)
    )
    broadcast = vectors_fit_broadcast(store, mid, cfg.spark.broadcast_vectors_mb)
    log.info("interests: vectors joined by %s", "broadcast" if broadcast else "shuffle")
    weighted = recent_weighted_events(
        events,
        model_vectors(store, mid),
        users,
        profile_cfg,
        as_of,
        cfg.interests.max_events_per_user,
        broadcast=broadcast,
    )
    return interests_of_users(weighted, interest_rule(cfg), partitioned=broadcast)


def interest_rows(
    store: TableStore,
    found: DataFrame,
    profiles: DataFrame,
    cfg: Config,
    run_id: str,
    as_of: datetime,
) -> DataFrame:
    """``user_interests`` rows of the ``found`` interests, each at the nearest segment
    (``placement_segments``: centroids in the model's space)."""
    segments = placement_segments(store, profiles, cfg.profile.pca_dims)
    placed = with_segments(found, segments)
    return conform(
        placed.withColumn("run_id", F.lit(run_id)).withColumn("as_of", F.lit(as_of)),
        USER_INTERESTS,
    )


def run_interests(spark: SparkSession, store: TableStore, cfg: Config, run: RunLog) -> StageResult:
    """Find each clustered user's interests in their own recent events, weigh them as the
    profile weighs events, place each at its nearest segment; overwrite ``user_interests``
    and fill ``segments.reach``.

    The decay uses the half-life the stored profiles were built with
    (``halflife.stored_profile_half_life``) and their ``as_of``.
    """
    store.require(
        "segments",
        "user_profiles",
        "user_segments",
        "events",
        "text_embeddings",
        fix="run `usersegments run` (or `usersegments cluster`) first",
    )
    run.model_id = run.model_id or model_id(cfg.embed)
    profiles = store.read("user_profiles")
    as_of = max_time(profiles, "as_of")
    users = profiles.filter(clusterable(cfg.profile.min_events)).select("user_id")
    found = found_interests(store, cfg, run, users, as_of).cache()
    try:
        rows = interest_rows(store, found, profiles, cfg, run.run_id, as_of)
        store.write(rows, "user_interests", mode="overwrite")
    finally:
        found.unpersist()
    stored = store.read("user_interests")
    refresh_reach(spark, store, cfg.interests.min_weight)
    metrics = interest_counts(stored, cfg.interests.max_per_user)
    skipped = skipped_users(profiles, cfg.profile.min_events)
    metrics.update({f"users_skipped.{reason}": n for reason, n in skipped.items()})
    run.record_all("interests", metrics)
    log.info(
        "interests: %d users, %.2f interests per user",
        metrics["users_with_interests"],
        metrics["interests_per_user_mean"],
    )
    return StageResult(
        stage="interests",
        tables={t: store.version(t) for t in ("user_interests", "segments")},
        metrics=metrics,
    )
