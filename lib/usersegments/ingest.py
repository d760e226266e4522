"""Ingest: raw event files -> ``events`` (clean, typed, deduplicated) + ``events_rejected``.

Nothing is lost: every row read is accepted, rejected with a stable reason
code, or counted as a duplicate, and ``rows read = accepted + rejected +
duplicates`` is checked at the end of every run.

Every input format first becomes one *raw* frame of strings (the columns of
the input contract, the reader's corrupt-record text and the source file), so
one parser serves CSV, JSON lines, Parquet and Delta alike and a rejected row
keeps exactly the values that arrived.
"""

from __future__ import annotations

import csv
import glob
import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from usersegments.config import Config, InputConfig
from usersegments.errors import InputError, InvariantViolation
from usersegments.privacy import pseudonym_key, pseudonymize_raw
from usersegments.runlog import RunLog, StageResult
from usersegments.schema import EVENTS, EVENTS_REJECTED, conform
from usersegments.store import TableStore

log = logging.getLogger(__name__)

RAW_COLUMNS = ("user_id", "event_time", "event_type", "item_id", "text", "value")
CORRUPT = "_corrupt_record"
SEPARATOR = "\u001f"  # unit separator: cannot occur in normalised text

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

_EXTENSIONS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
}
# Zero-width and bidirectional formatting marks: invisible, and they split words.
_FORMAT_CHARS = r"[\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]"
_CONTROL_CHARS = r"[\x00-\x1f\x7f-\x9f]"
_ZONELESS = (
    r"^(\d{4})-(\d{1,2})-(\d{1,2})(?:[T ](\d{1,2}):(\d{1,2})(?::(\d{1,2}(?:\.\d{1,6})?)\d*)?)?$"
)
_HAS_ZONE = r"(Z|z|[+-]\d{2}(:?\d{2})?|UTC|GMT|[A-Za-z]+/[A-Za-z_]+)$"
_NUMBER = r"^[+-]?\d+(\.\d+)?([eE][+-]?\d+)?$"


@dataclass(frozen=True)
class InputSource:
    """One group of input files read with one reader call."""

    paths: tuple[str, ...]
    format: str


# ---------------------------------------------------------------------------
# Finding and reading the inputs


def resolve_inputs(paths: Sequence[str], fmt: str = "auto") -> list[InputSource]:
    """Expand globs and folders into groups of files of one format and one header/schema.

    Raises ``InputError`` for a path that matches nothing or whose format is unknown.
    """
    if not paths:
        raise InputError("no input given: pass --events PATH (files, folders or globs)")
    sources: list[InputSource] = []
    for given in paths:
        if "://" in given and not given.startswith("file://"):
            sources.append(InputSource((given,), _format_of(given, fmt)))
            continue
        local = given[len("file://") :] if given.startswith("file://") else given
        matches = sorted(glob.glob(os.path.expanduser(local)))
        if not matches:
            raise InputError(f"--events {given!r} matches no file or folder")
        for match in matches:
            sources.extend(_sources_for_local(match, fmt))
    return _group_by_layout(sources)


def _sources_for_local(path: str, fmt: str) -> list[InputSource]:
    p = Path(path)
    if p.is_dir():
        if (p / "_delta_log").is_dir() or fmt == "delta":
            return [InputSource((str(p),), "delta")]
        files = sorted(
            str(f)
            for f in p.rglob("*")
            if f.is_file() and not f.name.startswith(("_", ".")) and _known_file(f.name, fmt)
        )
        if not files:
            raise InputError(f"folder {path!r} holds no event files (.parquet, .csv, .jsonl)")
        return [InputSource((f,), _format_of(f, fmt)) for f in files if not _empty_file(f)]
    source = InputSource((str(p),), _format_of(str(p), fmt))
    return [] if _empty_file(str(p)) else [source]


def _empty_file(path: str) -> bool:
    """A zero-byte file holds no rows (a writer may have only created it): skipped."""
    if os.path.getsize(path) > 0:
        return False
    log.warning("ingest: %s is empty (0 bytes): it holds no rows and is skipped", path)
    return True


def _known_file(name: str, fmt: str) -> bool:
    return fmt != "auto" or _extension_format(name) is not None


def _extension_format(name: str) -> str | None:
    base = name[:-3] if name.endswith(".gz") else name
    return _EXTENSIONS.get(Path(base).suffix.lower())


def _format_of(path: str, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    found = _extension_format(path)
    if found is None:
        raise InputError(
            f"cannot tell the format of {path!r} from its extension; set input.format "
            "(--format) to parquet, csv, jsonl or delta"
        )
    return found


def _group_by_layout(sources: list[InputSource]) -> list[InputSource]:
    """Merge single files of one format whose header (CSV) or schema (Parquet) agree."""
    groups: dict[tuple[str, str], list[str]] = {}
    singles: list[InputSource] = []
    for source in sources:
        path = source.paths[0]
        if source.format == "delta" or "://" in path:
            singles.append(source)
            continue
        key = (source.format, _layout_signature(path, source.format))
        groups.setdefault(key, []).append(path)
    return singles + [InputSource(tuple(paths), key[0]) for key, paths in groups.items()]


def _layout_signature(path: str, fmt: str) -> str:
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            return str(pq.read_schema(path))
        except (OSError, ValueError) as exc:
            raise unreadable_input(path, exc) from exc
    try:
        if fmt == "csv":
            with open(path, newline="", encoding="utf-8", errors="replace") as handle:
                return "|".join(next(csv.reader(handle), []))
    except (OSError, ValueError, StopIteration) as exc:
        # A file whose header cannot be read is its own group; Spark reports it.
        return f"unreadable:{path}:{exc}"
    return "any"  # JSON lines: Spark merges inferred schemas itself


def read_raw_events(
    spark: SparkSession,
    sources: list[InputSource],
    cfg: InputConfig,
    items_given: bool,
    store: TableStore | None = None,
) -> DataFrame:
    """Read every source into one frame of strings: RAW_COLUMNS, raw_record, source.

    No source (every file given was empty) reads as no rows.
    """
    frames = []
    for source in sources:
        with reading(source.paths):
            frames.append(_to_raw(_read_source(spark, source, store), source, cfg, items_given))
    if not frames:
        schema = ", ".join(f"{c} string" for c in (*RAW_COLUMNS, "raw_record", "source"))
        return spark.createDataFrame([], schema)
    raw = frames[0]
    for frame in frames[1:]:
        raw = raw.unionByName(frame)
    return raw


def _read_source(spark: SparkSession, source: InputSource, store: TableStore | None) -> DataFrame:
    paths = list(source.paths)
    if source.format == "csv":
        header = spark.read.option("header", True).option("multiLine", True).csv(paths[0]).columns
        schema = T.StructType(
            [T.StructField(c, T.StringType()) for c in header]
            + [T.StructField(CORRUPT, T.StringType())]
        )
        df = (
            spark.read.option("header", True)
            .option("multiLine", True)
            .option("escape", '"')
            .option("mode", "PERMISSIVE")
            .option("columnNameOfCorruptRecord", CORRUPT)
            .schema(schema)
            .csv(paths)
        )
    elif source.format == "jsonl":
        df = (
            spark.read.option("mode", "PERMISSIVE")
            .option("columnNameOfCorruptRecord", CORRUPT)
            .option("primitivesAsString", True)
            .json(paths)
        )
    elif source.format == "parquet":
        df = spark.read.option("mergeSchema", True).parquet(*paths)
    elif source.format == "delta":
        if store is None:
            raise InputError(f"reading the Delta table {paths[0]!r} needs a table store")
        return store.read_path(paths[0]).withColumn("source", F.lit(paths[0]))
    else:
        raise InputError(f"unknown input format {source.format!r}")
    return df.withColumn("source", F.col("_metadata.file_path"))


# What Spark says when a file cannot be decoded (Parquet footer or pages, compression).
_UNREADABLE_MARKERS = ("FAILED_READ_FILE", "is not a Parquet file", "CANNOT_READ_FILE")


def unreadable_input(path: str, exc: BaseException) -> InputError:
    """The error for an input file that cannot be decoded: corrupt or half-written."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    telling = [line for line in lines if any(m in line for m in _UNREADABLE_MARKERS)]
    reason = (telling or lines or [type(exc).__name__])[0][:300]
    return InputError(
        f"input file {path} cannot be read ({reason}): it is corrupt or half-written. Remove or "
        "replace it, or wait until its writer has finished, then rerun; nothing was written"
    )


@contextmanager
def reading(paths: Sequence[str]) -> Iterator[None]:
    """Turn Spark's failure to decode one of ``paths`` into an ``InputError`` naming it."""
    try:
        yield
    except InputError:
        raise
    except Exception as exc:
        text = str(exc)
        if not any(marker in text for marker in _UNREADABLE_MARKERS):
            raise
        named = [p for p in paths if p in text or p.replace("file://", "") in text]
        where = named[0] if named else ", ".join(paths)
        raise unreadable_input(where, exc) from exc


def _to_raw(df: DataFrame, source: InputSource, cfg: InputConfig, items_given: bool) -> DataFrame:
    mapping = cfg.columns.model_dump()
    where = (
        source.paths[0]
        if len(source.paths) == 1
        else f"{source.paths[0]} (+{len(source.paths) - 1} more)"
    )
    present = [c for c in df.columns if c not in (CORRUPT, "source")]
    for required in ("user_id", "event_time"):
        if mapping[required] not in df.columns:
            raise InputError(
                f"events in {where} have no column {mapping[required]!r} for {required}: map it "
                f"with input.columns.{required} (columns found: {present})"
            )
    if mapping["text"] not in df.columns and not (items_given and mapping["item_id"] in df.columns):
        raise InputError(
            f"events in {where} have no text column {mapping['text']!r} and no item catalog to "
            "supply text: map input.columns.text, or pass --items with input.columns.item_id mapped"
        )
    columns = [
        (
            _as_string(df, mapping[name])
            if mapping[name] in df.columns
            else F.lit(None).cast("string")
        ).alias(name)
        for name in RAW_COLUMNS
    ]
    corrupt = F.col(CORRUPT) if CORRUPT in df.columns else F.lit(None).cast("string")
    return df.select(*columns, corrupt.alias("raw_record"), F.col("source").cast("string"))


def _as_string(df: DataFrame, name: str) -> Column:
    """A column as text that parses back to the same value (times with their zone)."""
    dtype = df.schema[name].dataType
    col = F.col(f"`{name}`")
    if isinstance(dtype, T.TimestampType):
        return F.date_format(col, "yyyy-MM-dd'T'HH:mm:ss.SSSSSSXXX")
    if isinstance(dtype, T.TimestampNTZType):
        return F.date_format(col, "yyyy-MM-dd'T'HH:mm:ss.SSSSSS")
    return col.cast("string")


def read_items(spark: SparkSession, path: str, cfg: InputConfig) -> DataFrame:
    """The item catalog as (item_id, item_text, category), one row per item id."""
    frames = [_read_source(spark, source, None) for source in resolve_inputs([path], "auto")]
    df = frames[0]
    for frame in frames[1:]:
        df = df.unionByName(frame, allowMissingColumns=True)
    mapping = cfg.item_columns
    for key in ("item_id", "text"):
        name = getattr(mapping, key)
        if name not in df.columns:
            found = [c for c in df.columns if c not in (CORRUPT, "source")]
            raise InputError(
                f"item catalog {path!r} has no column {name!r} for {key}: map it with "
                f"input.item_columns.{key} (columns found: {found})"
            )
    category = (
        F.col(f"`{mapping.category}`").cast("string")
        if mapping.category in df.columns
        else F.lit(None).cast("string")
    )
    items = df.select(
        F.trim(F.col(f"`{mapping.item_id}`").cast("string")).alias("item_id"),
        normalize_text_column(F.col(f"`{mapping.text}`").cast("string"), cfg.lowercase).alias(
            "item_text"
        ),
        category.alias("category"),
    ).filter(F.col("item_id").isNotNull() & (F.col("item_id") != ""))
    # One row per item: the catalog may repeat an id; keep a deterministic choice.
    pick = Window.partitionBy("item_id").orderBy(F.col("item_text").asc_nulls_last())
    return items.withColumn("_n", F.row_number().over(pick)).filter("_n = 1").drop("_n")


# ---------------------------------------------------------------------------
# Cleaning and classifying rows (pure: DataFrame in, DataFrame out)


def normalize_texts(texts: pd.Series, lowercase: bool = False) -> pd.Series:
    """NFKC, control and formatting characters removed, whitespace collapsed, trimmed."""
    out = texts.astype("string")
    out = out.str.normalize("NFKC")
    out = out.str.replace(_FORMAT_CHARS, "", regex=True)
    out = out.str.replace(_CONTROL_CHARS, " ", regex=True)
    out = out.str.replace(r"\s+", " ", regex=True).str.strip()
    if lowercase:
        out = out.str.lower()
    return out.astype(object).where(out.notna(), None)


def normalize_text_column(col: Column, lowercase: bool) -> Column:
    """``normalize_texts`` as a vectorised pandas UDF over a string column."""

    @F.pandas_udf(T.StringType())
    def _normalize(texts: pd.Series) -> pd.Series:
        return normalize_texts(texts, lowercase)

    return _normalize(col)


def parse_event_time(raw: Column, timezone_name: str) -> Column:
    """Parse a string time: ISO-8601 with or without zone, or epoch s/ms/µs/ns by magnitude.

    Zone-less times are taken in ``timezone_name``. Returns null when unparseable.
    """
    s = F.trim(raw)
    number = s.try_cast("double")
    magnitude = F.abs(number)
    seconds = (
        F.when(magnitude < 1e11, number)
        .when(magnitude < 1e14, number / 1e3)
        .when(magnitude < 1e17, number / 1e6)
        .when(magnitude < 1e20, number / 1e9)
    )
    epoch = F.when(s.rlike(_NUMBER) & ~F.isnan(number), F.timestamp_seconds(seconds))
    parts = [F.regexp_extract(s, _ZONELESS, i) for i in range(1, 7)]

    def part(i: int, default: str) -> Column:
        return F.when(parts[i] == "", F.lit(default)).otherwise(parts[i])

    zoneless = F.try_make_timestamp(
        parts[0].try_cast("int"),
        parts[1].try_cast("int"),
        parts[2].try_cast("int"),
        part(3, "0").try_cast("int"),
        part(4, "0").try_cast("int"),
        part(5, "0").try_cast("decimal(16,6)"),
        F.lit(timezone_name),
    )
    zoned = F.when(s.rlike(_HAS_ZONE), s.try_cast("timestamp"))
    return F.when(s.rlike(_NUMBER), epoch).when(s.rlike(_ZONELESS), zoneless).otherwise(zoned)


def classify_events(
    raw: DataFrame, items: DataFrame | None, cfg: InputConfig, now: datetime
) -> DataFrame:
    """Parse and clean raw rows and give each a ``reject_reason`` (null = accepted).

    Keeps the raw string columns (``raw_*``) so a rejected row stores what arrived.
    """
    df = raw.select(*[F.col(c).alias(f"raw_{c}") for c in RAW_COLUMNS], "raw_record", "source")
    user_id = F.trim(F.col("raw_user_id"))
    event_type = F.lower(F.trim(F.col("raw_event_type")))
    item_id = F.trim(F.col("raw_item_id"))
    raw_value = F.trim(F.col("raw_value"))
    value = raw_value.try_cast("double")
    df = df.select(
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
    if items is not None:
        df = df.join(items, on="item_id", how="left")
    else:
        df = df.withColumn("item_text", F.lit(None).cast("string")).withColumn(
            "category", F.lit(None).cast("string")
        )
    text = _combine_text(F.col("item_text"), F.col("event_text"), cfg.text_source)
    df = df.withColumn("_full_text", F.when(text != "", text))
    earliest = cfg.min_time if cfg.min_time.tzinfo else cfg.min_time.replace(tzinfo=timezone.utc)
    latest = now + timedelta(hours=cfg.future_tolerance_hours)
    reason = (
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
    return df.withColumn("reject_reason", reason)


def _combine_text(item_text: Column, event_text: Column, source: str) -> Column:
    item_text = F.when(item_text != "", item_text)
    event_text = F.when(event_text != "", event_text)
    if source == "item":
        return item_text
    if source == "event":
        return event_text
    first, second = (
        (item_text, event_text) if source == "item_then_event" else (event_text, item_text)
    )
    return F.when(first.isNull() | second.isNull(), F.coalesce(first, second)).otherwise(
        F.concat_ws(" | ", first, second)
    )


def finish_accepted(classified: DataFrame, max_text_chars: int) -> DataFrame:
    """Accepted rows with truncated text, text_hash, event_id and event_date."""
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
        }
    )


def deduplicate(accepted: DataFrame) -> DataFrame:
    """One row per event_id; among exact duplicates keep the one with the largest value."""
    pick = Window.partitionBy("event_id").orderBy(
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


# ---------------------------------------------------------------------------
# The stage


def run_ingest(
    spark: SparkSession,
    store: TableStore,
    cfg: Config,
    run: RunLog,
    events: Sequence[str] = (),
    items: str | None = None,
) -> StageResult:
    """Ingest ``events`` (+ optional ``items`` catalog) into ``events`` and ``events_rejected``."""
    icfg = cfg.input
    now = datetime.now(timezone.utc)
    # Fail on a missing key before reading anything.
    key = pseudonym_key(cfg.privacy, spark) if cfg.privacy.pseudonymize_user_ids else None
    sources = resolve_inputs(list(events), icfg.format)
    catalog = read_items(spark, items, icfg) if items else None
    raw = read_raw_events(spark, sources, icfg, items_given=catalog is not None, store=store)
    if key is not None:
        raw = pseudonymize_raw(raw, key)
    raw = raw.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        paths = [path for source in sources for path in source.paths]
        return _ingest(spark, store, cfg, run, raw, catalog, now, paths)
    finally:
        raw.unpersist()


def _ingest(spark, store, cfg, run, raw, catalog, now, input_paths) -> StageResult:
    icfg = cfg.input
    with reading(input_paths):
        rows_read = raw.count()
    classified = classify_events(raw, catalog, icfg, now).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        by_reason = {
            r["reject_reason"]: r["count"]
            for r in classified.groupBy("reject_reason").count().collect()
        }
        accepted = finish_accepted(classified, icfg.max_text_chars)
        unique = deduplicate(accepted)
        kept, capped = split_heavy_users(unique, icfg.max_events_per_user, icfg.cap_heavy_users)
        kept = kept.persist(StorageLevel.MEMORY_AND_DISK)
        try:
            figures = kept.agg(
                F.count(F.lit(1)).alias("kept"),
                F.sum(F.col("_truncated").cast("long")).alias("truncated"),
                F.countDistinct(F.when(F.col("_heavy"), F.col("user_id"))).alias("heavy_users"),
                F.max("event_time").alias("watermark"),
            ).first()
            kept_rows = int(figures["kept"])
            accepted_rows = int(by_reason.get(None, 0))
            unique_rows = int(unique.count()) if icfg.cap_heavy_users else kept_rows
            capped_rows = unique_rows - kept_rows
            in_batch_duplicates = accepted_rows - unique_rows
            already_present = _count_present(store, kept)

            rejected = classified.filter(F.col("reject_reason").isNotNull())
            if capped_rows:
                rejected = rejected.unionByName(
                    capped.select(*rejected.columns), allowMissingColumns=False
                )
            merged_rejects = store.merge(
                to_rejected(rejected, run.run_id, now),
                "events_rejected",
                on=["reject_id"],
                when_matched="ignore",
            )
            result = store.merge(
                to_events(kept, run.run_id),
                "events",
                on=["event_id"],
                when_matched="ignore",
                partition_by=["event_date"],
            )
        finally:
            kept.unpersist()
    finally:
        classified.unpersist()

    rejected_rows = sum(v for k, v in by_reason.items() if k is not None) + capped_rows
    duplicates = in_batch_duplicates + already_present
    metrics = {
        "rows_read": rows_read,
        "accepted": result.inserted,
        "rejected": rejected_rows,
        "duplicates": duplicates,
        "duplicates_in_batch": in_batch_duplicates,
        "already_present": already_present,
        "texts_truncated": int(figures["truncated"] or 0),
        "heavy_users": int(figures["heavy_users"] or 0),
        "capped_events": capped_rows,
        "rejects_inserted": merged_rejects.inserted,
    }
    for reason in REJECT_REASONS:
        count = capped_rows if reason == USER_EVENT_CAP else int(by_reason.get(reason, 0))
        metrics[f"rejected.{reason}"] = count
    if figures["watermark"] is not None:
        metrics["watermark_epoch_s"] = figures["watermark"].timestamp()
    run.record_all("ingest", metrics)
    check_invariant(metrics)
    log.info(
        "ingest: read %d, accepted %d, rejected %d, duplicates %d",
        rows_read,
        result.inserted,
        rejected_rows,
        duplicates,
    )
    tables = {name: store.version(name) for name in ("events", "events_rejected")}
    return StageResult(stage="ingest", tables=tables, metrics=metrics)


def _count_present(store: TableStore, kept: DataFrame) -> int:
    if not store.exists("events"):
        return 0
    existing = store.read("events").select("event_id")
    return kept.join(existing, on="event_id", how="left_semi").count()


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
