"""The interests stage: events x user_profiles x segments -> ``user_interests``, and
``segments.reach``."""

from __future__ import annotations

import logging

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from usersegments.cluster.features import clusterable, skipped_users
from usersegments.config import Config
from usersegments.embed import model_id, model_vectors
from usersegments.frames import to_spark
from usersegments.halflife import stored_profile_half_life, with_half_life
from usersegments.interests.assign import full_space_segments, with_segments
from usersegments.interests.events import recent_weighted_events
from usersegments.interests.local import InterestRule, interests_of_users
from usersegments.interests.metrics import interest_counts
from usersegments.interests.reach import segment_reach, with_reach
from usersegments.runlog import RunLog, StageResult
from usersegments.schema import SEGMENTS, USER_INTERESTS, conform
from usersegments.store import TableStore
from usersegments.times import max_time

log = logging.getLogger(__name__)


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
    mid = model_id(cfg.embed)
    run.model_id = run.model_id or mid
    profiles = store.read("user_profiles")
    events = store.read("events").select(
        "user_id", "event_time", "event_type", "value", "text_hash"
    )
    as_of = max_time(profiles, "as_of")
    profile_cfg = with_half_life(
        cfg.profile, stored_profile_half_life(store, cfg.profile, events, run)
    )
    users = profiles.filter(clusterable(cfg.profile.min_events)).select("user_id")
    weighted = recent_weighted_events(
        events,
        model_vectors(store, mid),
        users,
        profile_cfg,
        as_of,
        cfg.interests.max_events_per_user,
    )
    rule = InterestRule(
        distance_threshold=cfg.interests.distance_threshold,
        max_per_user=cfg.interests.max_per_user,
        min_weight=cfg.interests.min_weight,
    )
    found = interests_of_users(weighted, rule).cache()
    try:
        segments = full_space_segments(store.read("user_segments"), profiles)
        placed = with_segments(found, segments)
        rows = conform(
            placed.withColumn("run_id", F.lit(run.run_id)).withColumn("as_of", F.lit(as_of)),
            USER_INTERESTS,
        )
        store.write(rows, "user_interests", mode="overwrite")
    finally:
        found.unpersist()
    stored = store.read("user_interests")
    reach = segment_reach(stored, cfg.interests.min_weight)
    # segments is small (one row per segment): rewritten from the driver, like label does.
    segment_table = with_reach(store.read("segments").toPandas(), reach)
    store.write(to_spark(spark, segment_table, SEGMENTS), "segments", mode="overwrite")
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
