"""Folding new events into the stored profile sums, without re-reading old events.

A stored sum is decayed to its user's anchor ``a0`` (``least(last_event_time, as_of)``,
see ``profile``); the pending events' sum is built the same way, at its own anchor
``ap``. Both move to the new anchor ``a1 = max(a0, ap)``:
``S_new = S_old * 2^(-(a1 - a0) / half_life) + S_pending * 2^(-(a1 - ap) / half_life)``,
the same for the total weight. That is ``S_old * decay + sum(w_i v_i)`` with every new
event weighted relative to ``a1``, including events older than ``a0`` that arrive late
(their sum is decayed by how much older its anchor is). Users without a profile get
one. The half-life is the one the stored sums were built with (recorded by the full
run, ``halflife.stored_profile_half_life``), never a re-derived one. The fold and the
``events_through`` marker are one row, so a profile never folds an event twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from usersegments.config import Config
from usersegments.halflife import stored_profile_half_life, with_half_life
from usersegments.profile import LN2, SECONDS_PER_DAY, profiles_from_sums, weighted_sums
from usersegments.runlog import RunLog
from usersegments.schema import USER_PROFILES, conform
from usersegments.store import TableStore
from usersegments.times import max_time, setting_utc

PENDING_COLUMNS = ("user_id", "event_time", "event_type", "value", "text_hash", "run_id")


def pending_events(events: DataFrame, profiles: DataFrame) -> DataFrame:
    """Events a user's profile does not hold yet: ingested by a run after the profile's
    ``events_through`` (every event of a user without a profile)."""
    through = profiles.select("user_id", F.col("events_through").alias("_through"))
    return (
        events.join(through, "user_id", "left")
        .filter(F.col("_through").isNull() | (F.col("run_id") > F.col("_through")))
        .drop("_through")
    )


def fold_profiles(
    old: DataFrame, fresh: DataFrame, half_life_days: float, as_of: datetime, run_id: str
) -> DataFrame:
    """``user_profiles`` rows for the users of ``fresh``: the old sums and the fresh sums,
    both moved to the later of their anchors (see the module).

    ``old``: user_profiles rows; ``fresh``: ``weighted_sums`` of the pending events at
    ``as_of`` (with the same half-life). Users only in ``fresh`` are new. No old event
    is read.
    """
    rate = -LN2 / (half_life_days * SECONDS_PER_DAY)
    o = old.select(
        "user_id",
        F.col("weighted_sum").alias("_o_sum"),
        F.col("weight_total").alias("_o_total"),
        F.col("n_events").alias("_o_n"),
        F.col("first_event_time").alias("_o_first"),
        F.col("last_event_time").alias("_o_last"),
        F.col("events_through").alias("_o_through"),
        F.least("last_event_time", "as_of").cast("double").alias("_o_anchor"),
    )
    fresh_anchor = F.least(F.col("last_event_time"), F.lit(as_of)).cast("double")
    joined = (
        fresh.join(o, "user_id", "left")
        .withColumn("_f_anchor", fresh_anchor)
        .withColumn("_anchor", F.greatest("_o_anchor", "_f_anchor"))
        .withColumn("_o_decay", F.exp((F.col("_anchor") - F.col("_o_anchor")) * F.lit(rate)))
        .withColumn("_f_decay", F.exp((F.col("_anchor") - F.col("_f_anchor")) * F.lit(rate)))
    )
    # The decays are O(1) per element inside the lambdas below, so Spark inlining them
    # per element costs little (unlike a norm, which is O(d)).
    fresh_part = F.transform("weighted_sum", lambda b: b * F.col("_f_decay"))
    summed = F.when(F.col("_o_sum").isNull(), fresh_part).otherwise(
        F.zip_with(
            "_o_sum", "weighted_sum", lambda a, b: a * F.col("_o_decay") + b * F.col("_f_decay")
        )
    )
    folded = joined.select(
        "user_id",
        summed.alias("weighted_sum"),
        (
            F.coalesce(F.col("_o_total") * F.col("_o_decay"), F.lit(0.0))
            + F.col("weight_total") * F.col("_f_decay")
        ).alias("weight_total"),
        (F.coalesce(F.col("_o_n"), F.lit(0)) + F.col("n_events")).alias("n_events"),
        F.least("_o_first", "first_event_time").alias("first_event_time"),
        F.greatest("_o_last", "last_event_time").alias("last_event_time"),
        F.greatest("_o_through", "events_through").alias("events_through"),
    )
    return profiles_from_sums(folded, as_of, run_id)


def fold_as_of(cfg: Config, pending: DataFrame, profiles: DataFrame) -> datetime:
    """The instant (aware UTC) the fold decays to: ``profile.as_of`` when set, else the
    latest of the pending events and the stored profiles' as_of."""
    if cfg.profile.as_of is not None:
        return setting_utc(cfg.profile.as_of)
    latest = max_time(pending, "event_time")
    stored_as_of = max_time(profiles, "as_of")
    return max(t for t in (latest, stored_as_of) if t is not None)


@dataclass(frozen=True)
class Folded:
    """What ``fold_pending`` did: events folded, users written, the as_of it decayed to
    (None when nothing was pending), and pending events left out for want of a vector."""

    events: int
    users: int
    as_of: datetime | None
    unembedded: int


def unembedded_events(pending: DataFrame, vectors: DataFrame) -> int:
    """Pending events with a text but no vector yet (a later embed may give them one):
    the fold leaves them out, so they stay pending."""
    with_text = pending.filter(F.col("text_hash").isNotNull())
    return with_text.join(vectors, "text_hash", "left_anti").count()


def fold_pending(
    store: TableStore, cfg: Config, run: RunLog, vectors: DataFrame, events: DataFrame
) -> Folded:
    """Fold the pending ones of ``events`` (``PENDING_COLUMNS``: the rows the update read,
    see ``changes``) into ``user_profiles``.

    The half-life is the stored profiles' (``halflife.stored_profile_half_life``),
    recorded as ``profile_half_life_days`` of the update.
    """
    profiles = store.read("user_profiles")
    pending = pending_events(events, profiles).cache()
    try:
        n_events = pending.count()
        if n_events == 0:
            return Folded(0, 0, None, 0)
        unembedded = unembedded_events(pending, vectors)
        as_of = fold_as_of(cfg, pending, profiles)
        # Read only by stores without a recorded half-life, which derive one from the log.
        log_events = store.read("events").select("user_id", "event_time")
        days = stored_profile_half_life(store, cfg.profile, log_events, run)
        run.record("update", "profile_half_life_days", days)
        fresh = weighted_sums(pending, vectors, with_half_life(cfg.profile, days), as_of)
        folded = fold_profiles(profiles, fresh, days, as_of, run.run_id)
        result = store.merge(conform(folded, USER_PROFILES), "user_profiles", on=["user_id"])
    finally:
        pending.unpersist()
    return Folded(n_events, result.inserted + result.updated, as_of, unembedded)
