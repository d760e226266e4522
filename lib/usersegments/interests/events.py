"""The events interests are found in: each clusterable user's most recent events with
their vectors and the profile's event weights (type x time decay x value)."""

from __future__ import annotations

from datetime import datetime

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from usersegments.config import ProfileConfig
from usersegments.profile import event_weight, usable_vector, user_anchor


def recent_weighted_events(
    events: DataFrame,
    vectors: DataFrame,
    users: DataFrame,
    profile: ProfileConfig,
    as_of: datetime,
    max_events: int,
    broadcast: bool = False,
) -> DataFrame:
    """user_id, event_time, text_hash, weight, embedding: the events of ``users``
    (user_id) that have a usable vector, weighted as the profile weighs them, capped to
    each user's ``max_events`` most recent.

    The decay is anchored at the user's latest event (``user_anchor``) before the cap,
    as in the profile; the cap keeps the most recent events, so the anchor is the same.
    ``profile.half_life_days`` must be resolved. With ``broadcast`` the vectors join
    last from a broadcast, so the rows stay partitioned by user_id (``apply_per_key``'s
    ``partitioned``).
    """
    usable = vectors.filter(usable_vector("embedding"))
    hashes = usable.select("text_hash")
    # The users, weights and the cap on the small event rows, the vectors last. The users'
    # semi join comes before the anchor window: Spark does not push it below the window,
    # so an update recomputing a few users' interests would otherwise shuffle and sort
    # every event by user. A small ``users`` (a materialised cache) is broadcast and
    # filters the scan; a large one is joined by user_id, a partitioning the window then
    # reuses, so events are still shuffled once by user_id. With ``broadcast`` nothing
    # after the window shuffles again.
    with_vectors = events.join(
        F.broadcast(hashes) if broadcast else hashes, "text_hash", "left_semi"
    )
    weighted = with_vectors.join(users, "user_id", "left_semi").select(
        "user_id",
        "event_time",
        "text_hash",
        event_weight(profile, user_anchor(as_of)).alias("weight"),
    )
    # Newest first; text_hash breaks ties, so the cap keeps the same events every run.
    recency = Window.partitionBy("user_id").orderBy(F.desc("event_time"), F.asc("text_hash"))
    capped = weighted.withColumn("_recent", F.row_number().over(recency)).filter(
        F.col("_recent") <= max_events
    )
    return capped.join(F.broadcast(usable) if broadcast else usable, "text_hash", "inner").select(
        "user_id", "event_time", "text_hash", "weight", "embedding"
    )
