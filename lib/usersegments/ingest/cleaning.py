"""Classifying raw rows (accepted or rejected with a reason), deduplicating, capping heavy
users, and shaping rows into the ``events`` and ``events_rejected`` (quarantine) contracts.

Pure: DataFrame in, DataFrame out; nothing here reads or writes a table.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from usersegments.config import InputConfig
from usersegments.ingest.parsing import normalize_text_column, parse_event_time
from usersegments.ingest.readers import RAW_COLUMNS
from usersegments.schema import EVENTS, EVENTS_REJECTED, conform
from usersegments.times import setting_utc

SEPARATOR = "\u001f"  # unit separator: cannot occur in normalised text
# Between an item's text and the event's own in one event's text ("item | review").
TEXT_PART_SEPARATOR = " | "

# Stable reject reason codes, in the order they are checked (first match wins).
MALFORMED_ROW = "malformed_row"
MISSING_USER_ID = "missing_user_id"
BAD_EVENT_TIME = "bad_event_time"
INVALID_ENCODING = "invalid_encoding"
BAD_VALUE = "bad_value"
EMPTY_TEXT = "empty_text"
USER_EVENT_CAP = "user_event_cap"
REJECT_REASONS = (
    MALFORMED_ROW,
    MISSING_USER_ID,
    BAD_EVENT_TIME,
    INVALID_ENCODING,
    BAD_VALUE,
    EMPTY_TEXT,
    USER_EVENT_CAP,
)


def classify_events(
    raw: DataFrame, items: DataFrame | None, cfg: InputConfig, now: datetime
) -> DataFrame:
    """Parse and clean raw rows and give each a ``reject_reason`` (null = accepted).

    Keeps the raw string columns (``raw_*``) so a rejected row stores what arrived.
    """
    df = _parse_raw(raw, cfg)
    if items is not None:
        df = df.join(items, on="item_id", how="left")
    else:
        df = df.withColumn("item_text", F.lit(None).cast("string")).withColumn(
            "category", F.lit(None).cast("string")
        )
    text = _combine_text(F.col("item_text"), F.col("event_text"), cfg.text_source)
    df = df.withColumn("_full_text", F.when(text != "", text))
    return df.withColumn("reject_reason", _reject_reason(cfg, now))


def _parse_raw(raw: DataFrame, cfg: InputConfig) -> DataFrame:
    """The raw columns as ``raw_*`` next to their parsed, typed and normalised values."""
    df = raw.select(*[F.col(c).alias(f"raw_{c}") for c in RAW_COLUMNS], "raw_record", "source")
    user_id = F.trim(F.col("raw_user_id"))
    event_type = F.lower(F.trim(F.col("raw_event_type")))
    item_id = F.trim(F.col("raw_item_id"))
    raw_value = F.trim(F.col("raw_value"))
    value = raw_value.try_cast("double")
    return df.select(
        "*",
        F.when(user_id != "", user_id).alias("user_id"),
        parse_event_time(F.col("raw_event_time"), cfg.timezone).alias("event_time"),
        F.when(event_type != "", event_type)
        .otherwise(F.lit(cfg.default_event_type))
        .alias("event_type"),
        F.when(item_id != "", item_id).alias("item_id"),
        normalize_text_column(F.col("raw_text"), cfg.lowercase).alias("event_text"),
        value.alias("value"),
        (
            (raw_value.isNotNull() & (raw_value != ""))
            & (value.isNull() | F.isnan(value) | (F.abs(value) == float("inf")))
        ).alias("_bad_value"),
    )


def _reject_reason(cfg: InputConfig, now: datetime) -> Column:
    """The first reason, in REJECT_REASONS order, a parsed row cannot be kept (null: none)."""
    earliest = setting_utc(cfg.min_time)
    latest = now + timedelta(hours=cfg.future_tolerance_hours)
    return (
        F.when(F.col("raw_record").isNotNull(), F.lit(MALFORMED_ROW))
        .when(F.col("user_id").isNull(), F.lit(MISSING_USER_ID))
        .when(
            F.col("event_time").isNull()
            | (F.col("event_time") < F.lit(earliest))
            | (F.col("event_time") > F.lit(latest)),
            F.lit(BAD_EVENT_TIME),
        )
        .when(
            F.coalesce(F.col("raw_text").contains("\ufffd"), F.lit(False)), F.lit(INVALID_ENCODING)
        )
        .when(F.col("_bad_value"), F.lit(BAD_VALUE))
        .when(F.col("_full_text").isNull(), F.lit(EMPTY_TEXT))
    )


def _combine_text(item_text: Column, event_text: Column, source: str) -> Column:
    """The event's text from the catalog's and its own, as ``input.text_source`` says."""
    item_text = F.when(item_text != "", item_text)
    event_text = F.when(event_text != "", event_text)
    if source == "item":
        return item_text
    if source == "event":
        return event_text
    first, second = (
        (item_text, event_text) if source == "item_then_event" else (event_text, item_text)
    )
    # An event that repeats its item's text (a review titled as the product) says it once;
    # case apart, as the uncased default model reads both the same.
    same = F.lower(first) == F.lower(second)
    return F.when(first.isNull() | second.isNull() | same, F.coalesce(first, second)).otherwise(
        F.concat_ws(TEXT_PART_SEPARATOR, first, second)
    )


def finish_accepted(classified: DataFrame, max_text_chars: int) -> DataFrame:
    """Accepted rows with truncated text, text_hash, event_id, event_date and event_month."""
    accepted = classified.filter(F.col("reject_reason").isNull())
    text = F.col("_full_text")
    accepted = accepted.withColumn("_truncated", F.length(text) > max_text_chars).withColumn(
        "text", F.substring(text, 1, max_text_chars)
    )
    identity = F.concat_ws(
        SEPARATOR,
        F.col("user_id"),
        F.date_format(F.col("event_time"), "yyyy-MM-dd'T'HH:mm:ss.SSSSSS"),
        F.col("event_type"),
        F.coalesce(F.col("item_id"), F.lit("\u0000")),
        F.col("text"),
    )
    return accepted.withColumns(
        {
            "text_hash": F.sha2(F.col("text"), 256),
            "event_id": F.sha2(identity, 256),
            "event_date": F.to_date(F.col("event_time")),
            "event_month": F.trunc(F.to_date(F.col("event_time")), "month"),
        }
    )


def deduplicate(accepted: DataFrame) -> DataFrame:
    """One row per event_id; among exact duplicates keep the one with the largest value.

    Rows are partitioned by user, then event: an event_id hashes its user id, so this
    finds the same duplicates as the event_id alone, and the heavy-user cap's windows
    (per user, next) reuse the same shuffle instead of making a second one.
    """
    pick = Window.partitionBy("user_id", "event_id").orderBy(
        F.col("value").desc_nulls_last(), F.col("source").asc_nulls_last()
    )
    return accepted.withColumn("_n", F.row_number().over(pick)).filter("_n = 1").drop("_n")


def split_heavy_users(events: DataFrame, max_events: int, cap: bool) -> tuple[DataFrame, DataFrame]:
    """Flag users above ``max_events``; with ``cap`` move their oldest extra events out.

    Returns (kept events with ``_heavy`` flag, capped rows with reason ``user_event_cap``).
    """
    per_user = Window.partitionBy("user_id")
    newest_first = Window.partitionBy("user_id").orderBy(
        F.col("event_time").desc(), F.col("event_id")
    )
    flagged = events.withColumn("_user_events", F.count(F.lit(1)).over(per_user)).withColumn(
        "_heavy", F.col("_user_events") > max_events
    )
    if not cap:
        return flagged, flagged.limit(0).withColumn("reject_reason", F.lit(USER_EVENT_CAP))
    ranked = flagged.withColumn("_rank", F.row_number().over(newest_first))
    kept = ranked.filter(F.col("_rank") <= max_events).drop("_rank")
    capped = (
        ranked.filter(F.col("_rank") > max_events)
        .drop("_rank")
        .withColumn("reject_reason", F.lit(USER_EVENT_CAP))
    )
    return kept, capped


def to_events(accepted: DataFrame, run_id: str) -> DataFrame:
    """Accepted rows in the ``events`` table contract."""
    return conform(accepted.withColumn("run_id", F.lit(run_id)), EVENTS)


def to_rejected(rejected: DataFrame, run_id: str, now: datetime) -> DataFrame:
    """Rejected rows in the ``events_rejected`` contract, identical rows counted once.

    ``reject_id`` hashes the raw values, reason and source, so re-ingesting a file
    adds no reject twice while ``occurrences`` keeps how many rows were identical.
    """
    raw_cols = [F.col(f"raw_{c}").alias(c) for c in RAW_COLUMNS]
    rows = rejected.select(*raw_cols, "raw_record", "reject_reason", "source")
    identity = F.concat_ws(
        SEPARATOR,
        *[F.coalesce(F.col(c), F.lit("\u0000")) for c in (*RAW_COLUMNS, "raw_record")],
        F.col("reject_reason"),
        F.coalesce(F.col("source"), F.lit("")),
    )
    grouped = (
        rows.withColumn("reject_id", F.sha2(identity, 256))
        .groupBy("reject_id")
        .agg(
            *[F.first(c, ignorenulls=False).alias(c) for c in rows.columns],
            F.count(F.lit(1)).alias("occurrences"),
        )
    )
    return conform(
        grouped.withColumn("run_id", F.lit(run_id)).withColumn("rejected_at", F.lit(now)),
        EVENTS_REJECTED,
    )
