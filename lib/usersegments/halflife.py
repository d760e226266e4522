"""Half-lives of the time decays, fixed in the config or derived from the log (``auto``).

``profile.half_life_days = auto``: the **median active span** (time between the first
and the last event) of the users with at least ``profile.min_events`` events (and at
least 2) whose events are not all at one instant. Why: a profile's decay is anchored
at the user's own latest event, so the half-life only sets how a user's older events
weigh against their newer ones. With the median span, the typical user's first event
still weighs half as much as their latest: their whole history shapes the vector and
recent behaviour leads, whatever the log's time scale (hours of clicks or decades of
reviews). Users whose events share one instant (a bulk import, date-only times) say
nothing about the time scale, so they are not measured; without them the median is
always at least the typical gap between a user's events (a span is at least each of
its gaps), so one event never outweighs all before it.

``recommend.half_life_days = auto``: the **median age of the log's events** at its latest
event. Item popularity is "what members are into now"; with this half-life the most
recent half of the log's activity weighs at least half as much as the newest events, so
the scores follow where the log's activity is (a log whose activity grew gets a short
half-life, an even log a long one) and never decay to nothing within the log.

Either falls back to the log's whole span when its statistic is 0 (no user to measure,
or every event at the latest instant), and to ``IDLE_HALF_LIFE_DAYS`` when the whole
log is one instant (every age is then 0, so any half-life gives the same weights).

The profile half-life a full run used is recorded in ``run_metrics`` (stage ``profile``,
metric ``half_life_days``) and read back by the steps that work on its sums (update's
fold, label), so an update never re-derives a different one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from usersegments.config import ProfileConfig, RecommendConfig
from usersegments.runlog import RunLog
from usersegments.store import TableStore

log = logging.getLogger(__name__)

SECONDS_PER_DAY = 86_400.0
# Used only when every event of the log has the same time: all ages are 0 then, so the
# value never changes a weight; it only has to be a valid positive number.
IDLE_HALF_LIFE_DAYS = 1.0
# Accuracy of Spark's approximate percentiles (the default of percentile_approx).
PERCENTILE_ACCURACY = 10_000


@dataclass(frozen=True)
class HalfLife:
    """A resolved half-life: its days, whether it was derived (``auto``), and the
    statistics it came from (name -> days or count), for ``run_metrics``."""

    days: float
    auto: bool
    basis: dict[str, float] = field(default_factory=dict)

    def metrics(self, prefix: str = "half_life") -> dict[str, float]:
        """``run_metrics`` entries: ``<prefix>_days``, ``<prefix>_auto`` and the basis."""
        out = {f"{prefix}_days": self.days, f"{prefix}_auto": int(self.auto)}
        out.update({f"{prefix}_basis.{k}": v for k, v in self.basis.items()})
        return out


def _median(column: F.Column) -> F.Column:
    return F.percentile_approx(column, 0.5, PERCENTILE_ACCURACY)


def _seconds(column: str) -> F.Column:
    return F.col(column).cast("double")


def _log_span_days(events: DataFrame) -> float:
    row = events.agg(
        (F.max(_seconds("event_time")) - F.min(_seconds("event_time"))).alias("span")
    ).first()
    return float(row["span"] or 0.0) / SECONDS_PER_DAY


def _with_fallback(days: float, events: DataFrame, basis: dict[str, float]) -> HalfLife:
    """``days`` when positive, else the log's span, else ``IDLE_HALF_LIFE_DAYS``."""
    if days <= 0:
        days = _log_span_days(events)
        basis["log_span_days"] = days
    if days <= 0:
        days = IDLE_HALF_LIFE_DAYS
    return HalfLife(days=days, auto=True, basis=basis)


def derive_profile_half_life(events: DataFrame, min_events: int) -> HalfLife:
    """The ``auto`` profile half-life of ``events`` (user_id, event_time); see the module.

    Two aggregations (per user, then over users); only a few numbers reach the driver.
    """
    per_user = events.groupBy("user_id").agg(
        F.count(F.lit(1)).alias("_n"),
        (F.max(_seconds("event_time")) - F.min(_seconds("event_time"))).alias("_span"),
    )
    enough = per_user.filter(F.col("_n") >= max(min_events, 2))
    row = enough.agg(
        F.sum((F.col("_span") > 0).cast("long")).alias("users"),
        F.sum((F.col("_span") <= 0).cast("long")).alias("single_instant"),
        _median(F.when(F.col("_span") > 0, F.col("_span"))).alias("span"),
    ).first()
    span = float(row["span"] or 0.0) / SECONDS_PER_DAY
    basis = {
        "users_measured": float(row["users"] or 0),
        "users_single_instant": float(row["single_instant"] or 0),
        "median_active_span_days": span,
    }
    return _with_fallback(span, events, basis)


def derive_recommend_half_life(events: DataFrame) -> HalfLife:
    """The ``auto`` recommend half-life of ``events`` (event_time); see the module."""
    # One pass: the median age is the latest time plus the median of the negated times
    # (a shift keeps the order, so the percentile picks the same event).
    row = events.agg(
        F.max(_seconds("event_time")).alias("latest"),
        _median(-_seconds("event_time")).alias("negated"),
    ).first()
    if row["latest"] is None:
        return HalfLife(days=IDLE_HALF_LIFE_DAYS, auto=True)
    age = (float(row["latest"]) + float(row["negated"])) / SECONDS_PER_DAY
    return _with_fallback(age, events, {"median_event_age_days": age})


def profile_half_life(cfg: ProfileConfig, events: DataFrame) -> HalfLife:
    """``profile.half_life_days`` when it is a number, else derived from ``events``."""
    if cfg.half_life_days != "auto":
        return HalfLife(days=float(cfg.half_life_days), auto=False)
    return derive_profile_half_life(events, cfg.min_events)


def recommend_half_life(cfg: RecommendConfig, events: DataFrame) -> HalfLife:
    """``recommend.half_life_days`` when it is a number, else derived from ``events``."""
    if cfg.half_life_days != "auto":
        return HalfLife(days=float(cfg.half_life_days), auto=False)
    return derive_recommend_half_life(events)


def recorded_profile_half_life(store: TableStore, run: RunLog | None = None) -> float | None:
    """The profile half-life (days) of the latest profile stage that recorded one: this
    ``run``'s, when its profile stage queued one not flushed yet, else the latest in
    ``run_metrics``; that is the run whose sums ``user_profiles`` holds. None if none did."""
    queued = run.queued("profile", "half_life_days") if run is not None else None
    if queued is not None:
        return queued
    if not store.exists("run_metrics"):
        return None
    row = (
        store.read("run_metrics")
        .filter((F.col("stage") == "profile") & (F.col("metric") == "half_life_days"))
        .orderBy(F.desc("recorded_at"))
        .select("value")
        .first()
    )
    return None if row is None else float(row["value"])


def stored_profile_half_life(
    store: TableStore, cfg: ProfileConfig, events: DataFrame, run: RunLog | None = None
) -> float:
    """The half-life that the stored ``user_profiles`` sums were built with.

    The recorded one (``recorded_profile_half_life``); a configured number that differs
    is only logged (a full run applies it: folding with another half-life would mix two
    decays in one sum). Stores from before the half-life was recorded fall back to the
    configuration (derived from ``events`` when auto), with a warning.
    """
    recorded = recorded_profile_half_life(store, run)
    if recorded is not None:
        if cfg.half_life_days != "auto" and float(cfg.half_life_days) != recorded:
            log.warning(
                "profile.half_life_days=%s differs from the %.4g days the stored profiles "
                "were built with; the stored value is kept until the next full run",
                cfg.half_life_days,
                recorded,
            )
        return recorded
    resolved = profile_half_life(cfg, events)
    log.warning(
        "no profile half-life recorded for the stored profiles (built by an older "
        "version?): using %.4g days",
        resolved.days,
    )
    return resolved.days


def with_half_life(cfg: ProfileConfig, days: float) -> ProfileConfig:
    """``cfg`` with a resolved ``half_life_days`` (what ``profile.event_weight`` needs)."""
    return cfg.model_copy(update={"half_life_days": float(days)})
