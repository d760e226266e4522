"""The time-based holdout split and hit rate / recall of each recommender on it."""

from __future__ import annotations

from datetime import datetime

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from usersegments.config import Config
from usersegments.recommend import item_scores, top_overall, top_per_group, without_seen

STRATEGIES = ("segment", "cluster", "popularity")
# The group column of the popularity baseline: one group holding every user.
EVERYONE = "everyone"


def with_everyone(groups: DataFrame) -> DataFrame:
    """``groups`` (user_id, ...) with the ``EVERYONE`` column: one group for all users."""
    return groups.withColumn(EVERYONE, F.lit("all"))


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


def group_hit_rate(
    train: DataFrame,
    held_out: DataFrame,
    groups: DataFrame,
    column: str,
    tested: DataFrame,
    seen: DataFrame,
    cfg: Config,
    as_of: datetime,
) -> dict:
    """Hit rate and recall@``evaluate.k`` over ``tested`` users when each user gets the
    most popular ``train`` items of their group (``groups``: user_id, ``column``) minus
    the ``seen`` ones (user_id, item_id)."""
    ecfg = cfg.evaluate
    top = top_overall if column == EVERYONE else top_per_group
    candidates = top(item_scores(train, groups, column, cfg, as_of), column, ecfg.candidates)
    recommended = without_seen(candidates, groups.select("user_id", column), seen, column, ecfg.k)
    return hit_and_recall(recommended, held_out, tested)


def tested_and_seen(
    user_segments: DataFrame, train: DataFrame, held_out: DataFrame, cfg: Config
) -> tuple[DataFrame, DataFrame]:
    """The tested users (clustered, with held-out items; user_id) and the items each saw
    in training (user_id, item_id; none when ``evaluate.exclude_seen`` is off)."""
    tested = user_segments.select("user_id").join(held_out.select("user_id").distinct(), "user_id")
    seen = train.filter(F.col("item_id").isNotNull()).select("user_id", "item_id")
    if not cfg.evaluate.exclude_seen:
        seen = seen.limit(0)
    return tested, seen


def score_strategies(
    user_segments: DataFrame, train: DataFrame, held_out: DataFrame, cfg: Config, as_of: datetime
) -> dict[str, float]:
    """``hit_rate@K.<strategy>``, ``recall@K.<strategy>`` for each of ``STRATEGIES`` and
    ``users_tested``: recommendations built from ``train``, scored on ``held_out``."""
    ecfg = cfg.evaluate
    groups = with_everyone(
        user_segments.select(
            "user_id", "segment_id", F.col("cluster_id").cast("string").alias("cluster_id")
        )
    )
    tested, seen = tested_and_seen(user_segments, train, held_out, cfg)
    metrics: dict[str, float] = {}
    for strategy, column in zip(STRATEGIES, ("segment_id", "cluster_id", EVERYONE), strict=True):
        figures = group_hit_rate(train, held_out, groups, column, tested, seen, cfg, as_of)
        metrics[f"hit_rate@{ecfg.k}.{strategy}"] = figures["hit_rate"]
        metrics[f"recall@{ecfg.k}.{strategy}"] = figures["recall"]
        metrics["users_tested"] = figures["users"]
    return metrics
