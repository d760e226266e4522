"""Training pairs from behaviour: what the same person engages with next.

Each of a user's training events (the most recent ``finetune.max_events_per_user``)
is paired with each of the user's next ``finetune.window`` events of another text.
Pairs are unordered (the loss is symmetric), so (a, b) and (b, a) are one pair whose
weight sums both events' weights (event type x value, as profiles weigh them; no
time decay: an old co-engagement says as much about the items as a new one).
Popular texts are down-sampled the way word2vec down-samples frequent words: a pair
is kept with probability min(1, sqrt(popular_share / share)) for each of its two
texts, drawn from a hash of the pair and ``finetune.seed`` (the same data, the same
pairs). Everything runs in Spark; the pairs go to the ``finetune_pairs`` table that
the training processes read.
"""

from __future__ import annotations

import math

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from usersegments.config import FinetuneConfig, ProfileConfig
from usersegments.profile import event_weight

PAIR_COLUMNS = ("hash_a", "hash_b", "text_a", "text_b", "weight", "users")


def type_value_weight(cfg: ProfileConfig):
    """Event type weight x value transform, without time decay (an infinite half-life)."""
    return event_weight(cfg.model_copy(update={"half_life_days": math.inf}), F.col("event_time"))


def training_pairs(events: DataFrame, cfg: FinetuneConfig, profile: ProfileConfig) -> DataFrame:
    """``hash_a, hash_b, text_a, text_b, weight, users`` (hash_a < hash_b) of ``events``
    (user_id, event_time, event_type, value, text_hash, text)."""
    recent_first = Window.partitionBy("user_id").orderBy(F.desc("event_time"), F.desc("text_hash"))
    numbered = (
        events.filter(F.col("text").isNotNull() & F.col("text_hash").isNotNull())
        .withColumn("_weight", type_value_weight(profile))
        .filter(F.col("_weight") > 0)
        .withColumn("_pos", F.row_number().over(recent_first))
        .filter(F.col("_pos") <= cfg.max_events_per_user)
        .select("user_id", "_pos", "text_hash", "text", "_weight")
    )
    # The next events in time have smaller positions; an explicit offset keeps the join
    # an equi-join (a user's rows x window, never rows x rows).
    anchors = numbered.withColumn("_offset", F.explode(F.sequence(F.lit(1), F.lit(cfg.window))))
    targets = numbered.select(
        "user_id",
        F.col("_pos").alias("_target_pos"),
        F.col("text_hash").alias("_hash_b"),
        F.col("text").alias("_text_b"),
        F.col("_weight").alias("_weight_b"),
    )
    joined = anchors.join(
        targets,
        (anchors.user_id == targets.user_id)
        & (targets._target_pos == anchors._pos - anchors._offset),
    ).filter(F.col("text_hash") != F.col("_hash_b"))
    first = F.col("text_hash") < F.col("_hash_b")
    ordered = joined.select(
        anchors.user_id.alias("user_id"),
        F.when(first, F.col("text_hash")).otherwise(F.col("_hash_b")).alias("hash_a"),
        F.when(first, F.col("_hash_b")).otherwise(F.col("text_hash")).alias("hash_b"),
        F.when(first, F.col("text")).otherwise(F.col("_text_b")).alias("text_a"),
        F.when(first, F.col("_text_b")).otherwise(F.col("text")).alias("text_b"),
        (F.col("_weight") + F.col("_weight_b")).alias("weight"),
    )
    pairs = ordered.groupBy("hash_a", "hash_b").agg(
        F.first("text_a").alias("text_a"),
        F.first("text_b").alias("text_b"),
        F.sum("weight").alias("weight"),
        F.countDistinct("user_id").alias("users"),
    )
    return _down_sample_popular(pairs, numbered, cfg).select(*PAIR_COLUMNS)


def _down_sample_popular(pairs: DataFrame, numbered: DataFrame, cfg: FinetuneConfig) -> DataFrame:
    """``pairs`` less a share of those with popular texts (see the module docstring)."""
    counts = numbered.groupBy("text_hash").agg(F.count(F.lit(1)).alias("_n"))
    total = numbered.agg(F.count(F.lit(1)).alias("_total"))  # one row, crossed in
    keep = counts.crossJoin(total).select(
        "text_hash",
        F.least(F.lit(1.0), F.sqrt(F.lit(cfg.popular_share) * F.col("_total") / F.col("_n"))).alias(
            "_keep"
        ),
    )
    kept_a = keep.select(F.col("text_hash").alias("hash_a"), F.col("_keep").alias("_keep_a"))
    kept_b = keep.select(F.col("text_hash").alias("hash_b"), F.col("_keep").alias("_keep_b"))
    # A uniform draw in [0, 1) from the pair and the seed: reproducible, no driver state.
    draw = (F.abs(F.xxhash64("hash_a", "hash_b", F.lit(cfg.seed))) % 1_000_000) / 1_000_000.0
    return (
        pairs.join(kept_a, "hash_a")
        .join(kept_b, "hash_b")
        .filter(draw < F.col("_keep_a") * F.col("_keep_b"))
    )
