"""The update's interests step: recompute the interests of the users whose profile took
new events, MERGE them into ``user_interests``, refresh ``segments.reach``.

A user's interests depend only on their own recent events (decay anchored at their latest
event), so a user without new events keeps the same interests and is not touched. A user
with new events gets every interest recomputed: a new area they engage with appears, and
an area that stopped receiving events weighs less as the anchor moves on (below
``interests.min_weight`` it is dropped). Their rows are replaced as a group
(``TableStore.replace_groups``), so a user with fewer interests than before keeps no stale
row. After a re-clustering every stored interest is placed again at its nearest new segment
(the interests themselves do not change; their segment ids may).
"""

from __future__ import annotations

import logging

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from usersegments.cluster.features import clusterable
from usersegments.config import Config
from usersegments.interests.assign import placement_segments, with_segments
from usersegments.interests.reach import refresh_reach
from usersegments.interests.stage import found_interests, interest_rows
from usersegments.runlog import RunLog
from usersegments.schema import USER_INTERESTS, conform
from usersegments.store import TableStore
from usersegments.times import max_time

log = logging.getLogger(__name__)

KEY = ["user_id", "interest_rank"]


def stale_interest_users(store: TableStore, min_events: int) -> DataFrame:
    """user_id of the clusterable profiles newer than their user's interests: written by a
    run after the one that wrote their ``user_interests`` rows (for a user without rows,
    after the run that first wrote the table). The users an update folded events into,
    and those of an update that crashed before this step."""
    interests = store.read("user_interests")
    marks = interests.groupBy("user_id").agg(F.max("run_id").alias("_interests_run"))
    baseline = interests.agg(F.min("run_id")).first()[0] or ""
    return (
        store.read("user_profiles")
        .filter(clusterable(min_events))
        .join(marks, "user_id", "left")
        .filter(F.col("run_id") > F.coalesce(F.col("_interests_run"), F.lit(baseline)))
        .select("user_id")
    )


def interest_changes(users: DataFrame, old: DataFrame, new: DataFrame) -> dict[str, float]:
    """Of the recomputed ``users`` (user_id): how many had interests before, gained an
    interest (a segment none of their old interests was in) or lost one (an old interest's
    segment none of the new is in). ``old``/``new``: user_interests rows. One aggregation."""

    def segment_sets(rows: DataFrame, name: str) -> DataFrame:
        return rows.groupBy("user_id").agg(F.collect_set("segment_id").alias(name))

    none = F.array().cast("array<string>")
    joined = (
        users.join(segment_sets(old, "_old"), "user_id", "left")
        .join(segment_sets(new, "_new"), "user_id", "left")
        .withColumn("_new", F.coalesce("_new", none))
    )
    known = F.col("_old").isNotNull()
    gained = known & (F.size(F.array_except("_new", "_old")) > 0)
    lost = known & (F.size(F.array_except("_old", "_new")) > 0)
    row = joined.agg(
        F.count(F.lit(1)).alias("users"),
        F.sum(known.cast("long")).alias("known"),
        F.sum(gained.cast("long")).alias("gained"),
        F.sum(lost.cast("long")).alias("lost"),
    ).first()
    return {
        "interests_users_recomputed": int(row["users"]),
        "interests_users_new": int(row["users"]) - int(row["known"] or 0),
        "interests_users_gaining": int(row["gained"] or 0),
        "interests_users_losing": int(row["lost"] or 0),
    }


def replace_all_segments(
    store: TableStore, profiles: DataFrame, pca_dims: int | None, run_id: str
) -> int:
    """Place every stored interest at its nearest segment of the current segments
    (``placement_segments``; after a re-clustering); the rows name ``run_id``. Returns
    the rows rewritten."""
    segments = placement_segments(store, profiles, pca_dims)
    stored = store.read("user_interests").drop("segment_id", "cluster_id", "run_id")
    placed = with_segments(stored, segments).withColumn("run_id", F.lit(run_id)).cache()
    try:
        n = placed.count()
        store.write(conform(placed, USER_INTERESTS), "user_interests", mode="overwrite")
    finally:
        placed.unpersist()
    return n


def refresh_interests(
    spark: SparkSession, store: TableStore, cfg: Config, run: RunLog, reclustered: bool
) -> dict[str, float]:
    """Recompute the interests of the stale users (``stale_interest_users``), replace their
    rows, re-place every interest after a re-clustering, refresh ``segments.reach``.

    Nothing is done (an empty dict) when the store has no ``user_interests`` (no full run
    with the interests stage yet). The decay runs to the profiles' latest ``as_of``, as in
    the full stage.
    """
    if not store.exists("user_interests"):
        log.info("update: no user_interests table yet, interests left to the next full run")
        return {}
    profiles = store.read("user_profiles")
    users = stale_interest_users(store, cfg.profile.min_events).cache()
    try:
        # Materialised before the interests are planned: Spark then sees how few users an
        # update recomputes and broadcasts them into the events scan.
        users.count()
        metrics = recompute(store, cfg, run, users, profiles)
    finally:
        users.unpersist()
    if reclustered:
        metrics["interests_rows_replaced"] = replace_all_segments(
            store, profiles, cfg.profile.pca_dims, run.run_id
        )
    if reclustered or metrics["interests_users_recomputed"]:
        refresh_reach(spark, store, cfg.interests.min_weight)
    return metrics


def recompute(
    store: TableStore, cfg: Config, run: RunLog, users: DataFrame, profiles: DataFrame
) -> dict[str, float]:
    """Recompute the interests of ``users`` (user_id, cached) and replace their rows in
    ``user_interests``; the figures of ``interest_changes`` and the rows merged."""
    as_of = max_time(profiles, "as_of")
    found = found_interests(store, cfg, run, users, as_of).cache()
    rows = interest_rows(store, found, profiles, cfg, run.run_id, as_of).cache()
    try:
        old = store.read("user_interests").join(users, "user_id", "left_semi")
        # Before the merge: the old rows are the table's current version.
        metrics = interest_changes(users, old, rows)
        if not metrics["interests_users_recomputed"]:
            return metrics
        merged = store.replace_groups(rows, "user_interests", on=KEY, group=["user_id"])
    finally:
        rows.unpersist()
        found.unpersist()
    metrics.update(
        {
            "interests_rows_inserted": merged.inserted,
            "interests_rows_updated": merged.updated,
            "interests_rows_deleted": merged.deleted,
        }
    )
    return metrics
