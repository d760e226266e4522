"""The ingest stage: read, classify, deduplicate, write ``events`` and ``events_rejected``,
record the figures and check that no row was lost."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

from pyspark import StorageLevel
from pyspark.sql import DataFrame, Row, SparkSession
from pyspark.sql import functions as F

from usersegments.config import Config, InputConfig
from usersegments.errors import InvariantViolation
from usersegments.ingest.cleaning import (
    REJECT_REASONS,
    USER_EVENT_CAP,
    classify_events,
    deduplicate,
    finish_accepted,
    split_heavy_users,
    to_events,
    to_rejected,
)
from usersegments.ingest.readers import read_items, read_raw_events
from usersegments.ingest.rejections import check_rejections
from usersegments.ingest.sources import resolve_inputs
from usersegments.ingest.unreadable import reading
from usersegments.privacy import pseudonym_key, pseudonymize_raw
from usersegments.runlog import RunLog, StageResult
from usersegments.schema import partition_columns
from usersegments.store import TableStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Written:
    """What writing one batch did, beyond the per-reason counts of the classification."""

    inserted: int  # new rows in events
    rejects_inserted: int  # new rows in events_rejected
    in_batch_duplicates: int
    already_present: int  # accepted rows whose event_id the events table already had
    capped: int
    truncated: int
    heavy_users: int
    watermark_micros: int | None  # latest event time kept, epoch microseconds


def run_ingest(
    spark: SparkSession,
    store: TableStore,
    cfg: Config,
    run: RunLog,
    events: Sequence[str] = (),
    items: str | None = None,
    batch: DataFrame | None = None,
) -> StageResult:
    """Ingest ``events`` (+ optional ``items`` catalog) into ``events`` and ``events_rejected``.

    ``batch``, instead of ``events``: rows already read as the raw frame of strings
    (``readers.raw_from_frame``), such as a stream's micro-batch; they take the same path.
    """
    icfg = cfg.input
    now = datetime.now(timezone.utc)
    # Fail on a missing key before reading anything.
    key = pseudonym_key(cfg.privacy, spark) if cfg.privacy.pseudonymize_user_ids else None
    sources = resolve_inputs(list(events), icfg.format) if batch is None else []
    catalog = read_items(spark, items, icfg) if items else None
    if batch is None:
        raw = read_raw_events(spark, sources, icfg, items_given=catalog is not None, store=store)
    else:
        raw = batch
    if key is not None:
        raw = pseudonymize_raw(raw, key)
    raw = raw.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        paths = [path for source in sources for path in source.paths]
        return _ingest(store, cfg, run, raw, catalog, now, paths)
    finally:
        raw.unpersist()


def _ingest(
    store: TableStore,
    cfg: Config,
    run: RunLog,
    raw: DataFrame,
    catalog: DataFrame | None,
    now: datetime,
    input_paths: list[str],
) -> StageResult:
    """Classify the persisted raw rows, write them, record the figures, check the invariant."""
    with reading(input_paths):
        rows_read = raw.count()
    classified = classify_events(raw, catalog, cfg.input, now).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        by_reason = {
            r["reject_reason"]: r["count"]
            for r in classified.groupBy("reject_reason").count().collect()
        }
        written = _write(store, cfg.input, run.run_id, classified, rows_read, by_reason, now)
    finally:
        classified.unpersist()
    metrics = _metrics(rows_read, by_reason, written)
    run.record_all("ingest", metrics)
    check_invariant(metrics)
    log.info(
        "ingest: read %d, accepted %d, rejected %d, duplicates %d",
        rows_read,
        written.inserted,
        metrics["rejected"],
        metrics["duplicates"],
    )
    tables = {name: store.version(name) for name in ("events", "events_rejected")}
    return StageResult(stage="ingest", tables=tables, metrics=metrics)


def _write(
    store: TableStore,
    icfg: InputConfig,
    run_id: str,
    classified: DataFrame,
    rows_read: int,
    by_reason: dict[str | None, int],
    now: datetime,
) -> _Written:
    """Deduplicate and cap the accepted rows, merge the rejects into the quarantine, check
    the rejected share (``check_rejections`` may stop the run there), then merge the events.
    """
    # One shuffle by user serves the deduplication and the heavy-user cap (see deduplicate).
    accepted = finish_accepted(classified, icfg.max_text_chars).repartition("user_id")
    unique = deduplicate(accepted)
    kept, capped = split_heavy_users(unique, icfg.max_events_per_user, icfg.cap_heavy_users)
    kept = kept.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        figures = _kept_figures(kept)
        kept_rows = int(figures["kept"])
        unique_rows = int(unique.count()) if icfg.cap_heavy_users else kept_rows
        capped_rows = unique_rows - kept_rows
        within = _batch_months(store, kept)
        # Counted before the merge below adds this batch's rows to events.
        already_present = _count_present(store, kept, within)
        rejected = classified.filter(F.col("reject_reason").isNotNull())
        if capped_rows:
            rejected = rejected.unionByName(
                capped.select(*rejected.columns), allowMissingColumns=False
            )
        quarantine = to_rejected(rejected, run_id, now)
        merged_rejects = store.merge(
            quarantine, "events_rejected", on=["reject_id"], when_matched="ignore"
        )
        rejected_rows = sum(v for k, v in by_reason.items() if k is not None) + capped_rows
        check_rejections(rows_read, rejected_rows, quarantine, icfg, now)
        merged_events = store.merge(
            in_table_columns(store, to_events(kept, run_id), "events"),
            "events",
            on=["event_id"],
            when_matched="ignore",
            partition_by=partition_columns("events"),
            within=within,
            # deduplicate kept one row per event_id, a hash that is never null.
            keys_unique=True,
        )
    finally:
        kept.unpersist()
    return _Written(
        inserted=merged_events.inserted,
        rejects_inserted=merged_rejects.inserted,
        in_batch_duplicates=int(by_reason.get(None, 0)) - unique_rows,
        already_present=already_present,
        capped=capped_rows,
        truncated=int(figures["truncated"] or 0),
        heavy_users=int(figures["heavy_users"] or 0),
        watermark_micros=figures["watermark_micros"],
    )


def in_table_columns(store: TableStore, frame: DataFrame, name: str) -> DataFrame:
    """``frame`` with the columns of table ``name`` when it exists: a table keeps the
    columns and partitioning it was created with (an events table from before
    ``event_month`` gets no such column), a new one takes the contract's."""
    if not store.exists(name):
        return frame
    return frame.select(*[F.col(f"`{c}`") for c in store.schema(name).fieldNames()])


def _kept_figures(kept: DataFrame) -> Row:
    """Rows kept, texts truncated, heavy users and the latest event time, in one pass."""
    return kept.agg(
        F.count(F.lit(1)).alias("kept"),
        F.sum(F.col("_truncated").cast("long")).alias("truncated"),
        F.countDistinct(F.when(F.col("_heavy"), F.col("user_id"))).alias("heavy_users"),
        # Epoch microseconds: an instant neither the session's nor the driver's zone shifts.
        F.max(F.unix_micros(F.col("event_time"))).alias("watermark_micros"),
    ).first()


def _batch_months(store: TableStore, kept: DataFrame) -> dict[str, list[str]] | None:
    """The partition values (``schema.partition_columns``: the events' month) of the
    kept rows, as text: the only partitions of ``events`` that can hold one of their ids
    (an event id covers the event's time), so a batch of recent events reads those
    months, not the whole history. None when the table does not exist yet or lacks the
    columns (a table from before ``event_month``). One value per month of the batch
    reaches the driver."""
    if not store.exists("events"):
        return None
    stored = store.schema("events").fieldNames()
    columns = [c for c in partition_columns("events") if c in stored]
    if not columns:
        return None
    rows = kept.select(*columns).distinct().collect()
    return {c: sorted({str(row[c]) for row in rows}) for c in columns}


def _count_present(store: TableStore, kept: DataFrame, within: dict[str, list[str]] | None) -> int:
    """How many of the kept rows the events table holds already (a re-ingest), reading
    only the partitions ``within`` names when given."""
    if not store.exists("events"):
        return 0
    existing = store.read("events")
    for column, values in (within or {}).items():
        existing = existing.filter(F.col(column).isin(values))
    return kept.join(existing.select("event_id"), on="event_id", how="left_semi").count()


def _metrics(rows_read: int, by_reason: dict[str | None, int], written: _Written) -> dict:
    """The figures the run records under ``ingest``: totals, then one per reject reason."""
    rejected_rows = sum(v for k, v in by_reason.items() if k is not None) + written.capped
    metrics = {
        "rows_read": rows_read,
        "accepted": written.inserted,
        "rejected": rejected_rows,
        "duplicates": written.in_batch_duplicates + written.already_present,
        "duplicates_in_batch": written.in_batch_duplicates,
        "already_present": written.already_present,
        "texts_truncated": written.truncated,
        "heavy_users": written.heavy_users,
        "capped_events": written.capped,
        "rejects_inserted": written.rejects_inserted,
    }
    for reason in REJECT_REASONS:
        count = written.capped if reason == USER_EVENT_CAP else int(by_reason.get(reason, 0))
        metrics[f"rejected.{reason}"] = count
    if written.watermark_micros is not None:
        metrics["watermark_epoch_s"] = written.watermark_micros / 1_000_000
    return metrics


def check_invariant(metrics: dict[str, float]) -> None:
    """Fail loudly unless rows read = accepted + rejected + duplicates."""
    read = metrics["rows_read"]
    accounted = metrics["accepted"] + metrics["rejected"] + metrics["duplicates"]
    if read != accounted:
        raise InvariantViolation(
            f"ingest lost or invented rows: read {read:.0f} but accepted {metrics['accepted']:.0f}"
            f" + rejected {metrics['rejected']:.0f} + duplicates {metrics['duplicates']:.0f}"
            f" = {accounted:.0f}; nothing was hidden, please report this with the input"
        )
