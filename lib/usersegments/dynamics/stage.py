"""The ``update`` stage: one run of idempotent reconciliations (see the package docs)."""

from __future__ import annotations

import logging
from datetime import datetime

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from usersegments.config import Config
from usersegments.dynamics.assign import previous_segments, reassign, stale_users
from usersegments.dynamics.changes import EventsRead, events_to_fold, version_to_record
from usersegments.dynamics.drift import novelty, refresh_sizes, size_change
from usersegments.dynamics.fold import PENDING_COLUMNS, fold_pending
from usersegments.dynamics.history import reconcile_history
from usersegments.dynamics.recluster import recluster
from usersegments.embed import model_id, model_vectors
from usersegments.interests.refresh import refresh_interests
from usersegments.profile import EVENTS_VERSION
from usersegments.runlog import RunLog, StageResult
from usersegments.store import TableStore
from usersegments.times import max_time

log = logging.getLogger(__name__)

REQUIRED_TABLES = ("user_profiles", "user_segments", "segments", "events", "text_embeddings")
UPDATED_TABLES = ("user_profiles", "user_segments", "segments", "segment_history")
# Updated when a full run wrote it (the update recomputes the interests of changed users).
OPTIONAL_TABLES = ("user_interests",)


def run_update(
    spark: SparkSession,
    store: TableStore,
    cfg: Config,
    run: RunLog,
    recluster_now: bool = False,
) -> StageResult:
    """Fold pending events into profiles, reassign changed users, keep history, measure
    drift, re-cluster with stable ids when drift is high (or when asked), and recompute
    the interests of the users with new events (``interests.refresh``)."""
    store.require(*REQUIRED_TABLES, fix="run `usersegments run` before `update`")
    mid = model_id(cfg.embed)
    run.model_id = run.model_id or mid
    vectors = model_vectors(store, mid)
    segments_before = store.read("segments").toPandas()
    with events_to_fold(store, run, PENDING_COLUMNS, cfg.update.read_changes) as read:
        metrics, as_of = fold_and_reassign(store, cfg, run, vectors, segments_before, read)
        metrics.update(
            novelty(read.frame, vectors, segments_before, run.run_id, cfg.update.novelty_distance)
        )
    moved_share = metrics.get("moved_share", 0.0)
    metrics.update(resegment(spark, store, cfg, run, segments_before, recluster_now, moved_share))
    # After the segments are final: interests are placed at them, reach counts them.
    metrics.update(refresh_interests(spark, store, cfg, run, bool(metrics["reclustered"])))
    metrics.update(size_change(segments_before, store))
    metrics["history_rows_merged"] = reconcile_history(store, as_of, run.run_id)
    run.record_all("update", metrics)
    tables = {t: store.version(t) for t in UPDATED_TABLES}
    tables.update({t: store.version(t) for t in OPTIONAL_TABLES if store.exists(t)})
    return StageResult(stage="update", tables=tables, metrics=metrics)


def fold_and_reassign(
    store: TableStore,
    cfg: Config,
    run: RunLog,
    vectors: DataFrame,
    segments_before: pd.DataFrame,
    read: EventsRead,
) -> tuple[dict[str, float], datetime]:
    """Fold the pending events of ``read`` into the profiles, record the events version
    the profiles now hold, and reassign the stale users; (figures, the update's as_of)."""
    previous = previous_segments(store).cache()
    try:
        previous.count()
        baseline_as_of = max_time(previous, "prev_as_of")
        reconcile_history(store, baseline_as_of, run.run_id)  # seeds it on the first update
        folded = fold_pending(store, cfg, run, vectors, read.frame)
        # Queued now, written to run_metrics after the fold's commit: never ahead of it.
        run.record("update", EVENTS_VERSION, version_to_record(read, folded.unembedded))
        metrics: dict[str, float] = {
            "events_folded": folded.events,
            "users_folded": folded.users,
            **read.metrics(),
        }
        as_of, reassigned = reassign_stale(store, cfg, run, previous, segments_before, folded.as_of)
        metrics.update(reassigned)
        metrics["mean_distance_full_run"] = float(
            previous.agg(F.avg("prev_distance")).first()[0] or 0.0
        )
    finally:
        previous.unpersist()
    return metrics, as_of or baseline_as_of


def reassign_stale(
    store: TableStore,
    cfg: Config,
    run: RunLog,
    previous: DataFrame,
    segments: pd.DataFrame,
    as_of: datetime | None,
) -> tuple[datetime | None, dict[str, float]]:
    """Reassign every user whose profile is newer than their segment row.

    Returns the update's as_of (``as_of``, or when no event was folded the stale
    profiles' latest as_of) and the reassignment figures.
    """
    stale = stale_users(store, cfg.profile.min_events).cache()
    try:
        reassigned = stale.count()
        if as_of is None:
            as_of = max_time(stale, "as_of")
        metrics: dict[str, float] = {"users_reassigned": reassigned}
        if reassigned:
            metrics.update(reassign(store, cfg.update, run.run_id, stale, previous, segments))
    finally:
        stale.unpersist()
    return as_of, metrics


def resegment(
    spark: SparkSession,
    store: TableStore,
    cfg: Config,
    run: RunLog,
    segments_before: pd.DataFrame,
    recluster_now: bool,
    moved_share: float,
) -> dict[str, float]:
    """Re-cluster when asked or when the moved share exceeds ``update.recluster_threshold``,
    else only refresh segment sizes; the re-clustering's figures and ``reclustered``."""
    reclustered = recluster_now or moved_share > cfg.update.recluster_threshold
    metrics: dict[str, float] = {}
    if reclustered:
        log.info(
            "update: re-clustering (%s)",
            "--recluster" if recluster_now else f"moved share {moved_share:.3f} > threshold",
        )
        metrics.update(recluster(spark, store, cfg, run))
    else:
        refresh_sizes(spark, store, segments_before)
    metrics["reclustered"] = int(reclustered)
    return metrics
