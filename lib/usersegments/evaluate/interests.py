"""Blended per-user lists against primary-segment lists, on held-out events of the users
with several interests.

The interests are found in the training events alone (as the ``interests`` stage finds
them, Ward per user) and placed at the training clustering's segments; each such user
with at least two interests gets the top ``evaluate.k`` of, in turn, their primary
segment's list (what ``recommend`` gives a user without interests) and the lists of their
interests' segments blended by interest weight (``recommend.blended``), both minus the
items seen in training. The two hit rates say whether blending pays for these users.
"""

from __future__ import annotations

from datetime import datetime

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from usersegments.config import Config, ProfileConfig
from usersegments.evaluate.holdout import hit_and_recall
from usersegments.interests.assign import full_space_segments, with_segments
from usersegments.interests.events import recent_weighted_events
from usersegments.interests.local import interests_of_users
from usersegments.interests.stage import interest_rule
from usersegments.recommend import blended, item_scores, top_per_group, without_seen

MULTI = "multi"


def training_interests(
    train: DataFrame,
    vectors: DataFrame,
    users: DataFrame,
    user_segments: DataFrame,
    profiles: DataFrame,
    profile: ProfileConfig,
    cfg: Config,
    as_of: datetime,
) -> DataFrame:
    """user_id, segment_id, weight of every interest ``users`` (user_id) have in their
    ``train`` events (``profile``: the training half-life, resolved), each at its nearest
    segment of the training clustering (``user_segments``, ``profiles``)."""
    weighted = recent_weighted_events(
        train, vectors, users, profile, as_of, cfg.interests.max_events_per_user
    )
    found = interests_of_users(weighted, interest_rule(cfg))
    placed = with_segments(found, full_space_segments(user_segments, profiles))
    return placed.select("user_id", "segment_id", "weight")


def blended_versus_primary(
    interests: DataFrame,
    user_segments: DataFrame,
    train: DataFrame,
    held_out: DataFrame,
    tested: DataFrame,
    seen: DataFrame,
    cfg: Config,
    as_of: datetime,
) -> dict[str, float]:
    """``hit_rate@K.blended_multi``/``.segment_multi`` (and recall) over the ``tested``
    users with two interests or more, and ``users_tested_multi``.

    ``interests``: user_id, segment_id, weight (``training_interests``); lists from the
    top ``evaluate.candidates`` items of each segment in ``train``, ``seen`` left out.
    """
    k = cfg.evaluate.k
    # Read twice (who has several, and the blend): Ward runs once per user.
    interests = interests.cache()
    multi = (
        interests.groupBy("user_id")
        .agg(F.count(F.lit(1)).alias("_n"))
        .filter(F.col("_n") >= 2)
        .select("user_id")
        .join(tested, "user_id", "left_semi")
        .cache()
    )
    try:
        groups = user_segments.select("user_id", "segment_id")
        candidates = top_per_group(
            item_scores(train, groups, "segment_id", cfg, as_of),
            "segment_id",
            cfg.evaluate.candidates,
        ).cache()
        try:
            primary = without_seen(
                candidates, groups.join(multi, "user_id", "left_semi"), seen, "segment_id", k
            )
            mixed = blended(candidates, interests.join(multi, "user_id", "left_semi"), seen, k)
            figures = {
                "segment": hit_and_recall(primary, held_out, multi),
                "blended": hit_and_recall(mixed, held_out, multi),
            }
        finally:
            candidates.unpersist()
    finally:
        multi.unpersist()
        interests.unpersist()
    metrics: dict[str, float] = {f"users_tested_{MULTI}": figures["segment"]["users"]}
    for name, f in figures.items():
        metrics[f"hit_rate@{k}.{name}_{MULTI}"] = f["hit_rate"]
        metrics[f"recall@{k}.{name}_{MULTI}"] = f["recall"]
    return metrics
