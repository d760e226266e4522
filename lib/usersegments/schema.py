"""The schemas of every table usersegments writes, in one place.

These are the output contracts of ARCHITECTURE.md. Stages build their frames
and pass them through ``conform`` so a table's columns, order and types never
drift between stages, backends or releases.
"""

from __future__ import annotations

import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import (
    ArrayType,
    BooleanType,
    DateType,
    DoubleType,
    FloatType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

VECTOR = ArrayType(FloatType(), containsNull=True)


def _schema(*fields: tuple[str, object]) -> StructType:
    return StructType([StructField(name, dtype, nullable=True) for name, dtype in fields])


RUNS = _schema(
    ("run_id", StringType()),
    ("command", StringType()),
    ("started_at", TimestampType()),
    ("finished_at", TimestampType()),
    ("status", StringType()),
    ("config_json", StringType()),
    ("config_fingerprint", StringType()),
    ("model_id", StringType()),
    ("usersegments_version", StringType()),
)

RUN_METRICS = _schema(
    ("run_id", StringType()),
    ("stage", StringType()),
    ("metric", StringType()),
    ("value", DoubleType()),
    ("recorded_at", TimestampType()),
)

EVENTS = _schema(
    ("event_id", StringType()),
    ("user_id", StringType()),
    ("event_time", TimestampType()),
    ("event_type", StringType()),
    ("item_id", StringType()),
    ("text", StringType()),
    ("text_hash", StringType()),
    ("value", DoubleType()),
    ("category", StringType()),
    ("event_date", DateType()),
    ("event_month", DateType()),  # the first day of event_date's month: the partition
    ("run_id", StringType()),
)

EVENTS_REJECTED = _schema(
    ("reject_id", StringType()),
    ("user_id", StringType()),
    ("event_time", StringType()),
    ("event_type", StringType()),
    ("item_id", StringType()),
    ("text", StringType()),
    ("value", StringType()),
    ("raw_record", StringType()),
    ("reject_reason", StringType()),
    ("source", StringType()),
    ("occurrences", LongType()),
    ("run_id", StringType()),
    ("rejected_at", TimestampType()),
)

TEXTS = _schema(
    ("text_hash", StringType()),
    ("text", StringType()),
)

TEXT_EMBEDDINGS = _schema(
    ("text_hash", StringType()),
    ("model_id", StringType()),
    ("embedding", VECTOR),
    ("created_at", TimestampType()),
)

USER_PROFILES = _schema(
    ("user_id", StringType()),
    ("embedding", VECTOR),
    ("weighted_sum", VECTOR),
    ("weight_total", DoubleType()),
    ("n_events", LongType()),
    ("first_event_time", TimestampType()),
    ("last_event_time", TimestampType()),
    ("events_through", StringType()),
    ("as_of", TimestampType()),
    ("run_id", StringType()),
)

USER_SEGMENTS = _schema(
    ("user_id", StringType()),
    ("cluster_id", IntegerType()),
    ("segment_id", StringType()),
    ("distance", DoubleType()),
    ("n_events_at_entry", LongType()),
    ("run_id", StringType()),
    ("as_of", TimestampType()),
)

SEGMENTS = _schema(
    ("segment_id", StringType()),
    ("cluster_id", IntegerType()),
    ("size", LongType()),
    ("label", StringType()),
    ("keywords", ArrayType(StringType(), containsNull=True)),
    ("top_items", ArrayType(StringType(), containsNull=True)),
    ("centroid", VECTOR),
    ("cohesion", DoubleType()),
    ("reach", LongType()),
    ("run_id", StringType()),
)

USER_INTERESTS = _schema(
    ("user_id", StringType()),
    ("interest_rank", IntegerType()),
    ("weight", DoubleType()),
    ("segment_id", StringType()),
    ("cluster_id", IntegerType()),
    ("n_events", LongType()),
    ("last_event_time", TimestampType()),
    ("embedding", VECTOR),
    ("run_id", StringType()),
    ("as_of", TimestampType()),
)

SEGMENT_HISTORY = _schema(
    ("user_id", StringType()),
    ("segment_id", StringType()),
    ("valid_from", TimestampType()),
    ("valid_to", TimestampType()),
    ("run_id", StringType()),
)

SEGMENT_RECOMMENDATIONS = _schema(
    ("segment_id", StringType()),
    ("rank", IntegerType()),
    ("item_id", StringType()),
    ("text", StringType()),
    ("score", DoubleType()),
    ("run_id", StringType()),
)

SEGMENT_LINEAGE = _schema(
    ("old_segment_id", StringType()),
    ("new_segment_id", StringType()),
    ("event", StringType()),
    ("similarity", DoubleType()),
    ("users", LongType()),
    ("run_id", StringType()),
    ("recorded_at", TimestampType()),
)

TUNING_TRIALS = _schema(
    ("run_id", StringType()),
    ("trial_id", IntegerType()),
    ("settings_json", StringType()),
    ("status", StringType()),
    ("error", StringType()),
    ("objective", StringType()),
    ("score", DoubleType()),
    ("hit_rate", DoubleType()),
    ("hit_rate_popularity", DoubleType()),
    ("hit_rate_lift", DoubleType()),
    ("interest_fit", DoubleType()),
    ("silhouette_cosine", DoubleType()),
    ("nmi_segment_vs_substyle", DoubleType()),
    ("nmi_cluster_vs_area", DoubleType()),
    ("coarse_clusters", IntegerType()),
    ("segments", IntegerType()),
    ("users_tested", LongType()),
    ("seconds", DoubleType()),
    ("chosen", BooleanType()),
    ("recorded_at", TimestampType()),
)

FINETUNE_PAIRS = _schema(
    ("hash_a", StringType()),
    ("hash_b", StringType()),
    ("text_a", StringType()),
    ("text_b", StringType()),
    ("weight", DoubleType()),
    ("users", LongType()),
    ("run_id", StringType()),
)

# A user's list is their segment's list (minus what they touched), so the same columns.
USER_RECOMMENDATIONS = StructType(
    [StructField("user_id", StringType(), nullable=True), *SEGMENT_RECOMMENDATIONS.fields]
)

TABLES: dict[str, StructType] = {
    "runs": RUNS,
    "run_metrics": RUN_METRICS,
    "events": EVENTS,
    "events_rejected": EVENTS_REJECTED,
    "texts": TEXTS,
    "text_embeddings": TEXT_EMBEDDINGS,
    "user_profiles": USER_PROFILES,
    "user_segments": USER_SEGMENTS,
    "segments": SEGMENTS,
    "user_interests": USER_INTERESTS,
    "segment_history": SEGMENT_HISTORY,
    "segment_recommendations": SEGMENT_RECOMMENDATIONS,
    "user_recommendations": USER_RECOMMENDATIONS,
    "segment_lineage": SEGMENT_LINEAGE,
    "tuning_trials": TUNING_TRIALS,
    "finetune_pairs": FINETUNE_PAIRS,
}


# Delta table properties each table is created with (both backends, ``TableStore.write``).
# Set at creation only: a table made before a property was declared keeps what it had.
CHANGE_DATA_FEED = {"delta.enableChangeDataFeed": "true"}
APPEND_ONLY = {"delta.appendOnly": "true"}
TABLE_PROPERTIES: dict[str, dict[str, str]] = {
    # An update reads only the rows committed since the events version the stored
    # profiles hold (``dynamics.changes``: readChangeFeed / load_cdf), not the whole table.
    "events": CHANGE_DATA_FEED,
    # Logs and audit trails: only ever appended to (run_metrics, tuning_trials,
    # segment_lineage) or merged insert-only (events_rejected). Delta itself then
    # refuses a delete, an update or an overwrite. Not the embedding cache
    # (text_embeddings) nor texts: a cache may be rebuilt, texts may need erasing.
    "run_metrics": APPEND_ONLY,
    "events_rejected": APPEND_ONLY,
    "segment_lineage": APPEND_ONLY,
    "tuning_trials": APPEND_ONLY,
}

# The columns each table is partitioned by when it is created (``TableStore`` keeps a
# table's partitioning for life). events by month, not by day: a 20-year log makes 240
# partitions, not ~7,300 folders of tiny files whose listing and commits dominate a run.
# Stores created before event_month keep their event_date partitions (and no
# event_month column: ingest writes an existing table's columns).
PARTITION_BY: dict[str, tuple[str, ...]] = {"events": ("event_month",)}

# The lookup key of each table that is read or merged by it: when maintain rewrites
# such a table (it is due for compaction), it z-orders it by these columns, so that
# a merge or a lookup on the key reads few files.
ZORDER_BY: dict[str, tuple[str, ...]] = {
    "user_profiles": ("user_id",),
    "user_segments": ("user_id",),
    "user_interests": ("user_id",),
    "segment_history": ("user_id",),
    "user_recommendations": ("user_id",),
    "text_embeddings": ("text_hash",),
}


def table_properties(name: str) -> dict[str, str]:
    """The Delta properties table ``name`` is created with (none for a table that is not
    one of ``TABLES``)."""
    return dict(TABLE_PROPERTIES.get(name, {}))


def partition_columns(name: str) -> list[str]:
    """The columns table ``name`` is partitioned by when created (none when not declared)."""
    return list(PARTITION_BY.get(name, ()))


def is_append_only(properties: dict[str, str]) -> bool:
    """Whether Delta table properties make a table append-only."""
    return properties.get("delta.appendOnly", "false").lower() == "true"


def records_changes(properties: dict[str, str]) -> bool:
    """Whether Delta table properties make a table record its change data feed."""
    return properties.get("delta.enableChangeDataFeed", "false").lower() == "true"


# What each table is for and which command writes it (the README's "Tables").
TABLE_NOTES: dict[str, tuple[str, str]] = {
    "runs": ("every command", "one row per run: command, status, config, model id"),
    "run_metrics": ("every stage", "the figures each stage measured, per run"),
    "events": ("ingest", "accepted events, typed and deduplicated by `event_id`"),
    "events_rejected": ("ingest", "every refused row as it came, with `reject_reason`"),
    "texts": (
        "embed",
        "each distinct text once, no user or time (with `privacy.drop_text_after_embedding`)",
    ),
    "text_embeddings": ("embed", "one vector per distinct text and `model_id`"),
    "user_profiles": ("profile, update", "decayed weighted sums and the unit interest vector"),
    "user_segments": ("cluster, update", "each user's coarse cluster and segment"),
    "segments": (
        "cluster, interests, label, update",
        "size, centroid, label, keywords, top items; `reach` = users with it as an interest "
        "(null after a clustering until the interests stage ran; an update keeps it current)",
    ),
    "user_interests": (
        "interests, update",
        "up to `interests.max_per_user` interests per user (rank 1 = heaviest): engagement "
        "share, vector, nearest segment; an update rewrites the rows of users with new events",
    ),
    "segment_history": ("update", "type-2 history of memberships (`valid_to` null = current)"),
    "segment_recommendations": ("recommend", "top items per segment"),
    "user_recommendations": (
        "recommend",
        "per-user lists (with `recommend.per_user`): the user's interests' segment lists "
        "blended by interest weight (`segment_id` = the interest an item owes most to), "
        "else their segment's; seen items left out",
    ),
    "segment_lineage": ("update", "re-clustering matches: continued, born, split, merged, ended"),
    "tuning_trials": (
        "tune",
        "one row per trial: settings (JSON), scores, seconds, the chosen one flagged",
    ),
    "finetune_pairs": (
        "finetune",
        "the last fine-tuning's training pairs: two texts the same users engaged with "
        "one after the other (`hash_a` < `hash_b`), summed event weight, users; popular "
        "texts down-sampled",
    ),
}


def tables_reference() -> str:
    """Markdown: every table with its writer, purpose, Delta layout and typed columns (the README's
    "Tables" section is this text)."""
    lines = [
        "| table | written by | holds | Delta layout | columns |",
        "|---|---|---|---|---|",
    ]
    for name, schema in TABLES.items():
        writer, purpose = TABLE_NOTES[name]
        columns = ", ".join(f"`{f.name} {f.dataType.simpleString()}`" for f in schema.fields)
        lines.append(f"| `{name}` | {writer} | {purpose} | {_layout(name)} | {columns} |")
    return "\n".join(lines) + "\n"


def _layout(name: str) -> str:
    """A table's declared partitioning, properties and z-order key, for the reference."""
    parts = [f"partitioned by `{c}`" for c in partition_columns(name)]
    parts += [f"`{key}={value}`" for key, value in table_properties(name).items()]
    if name in ZORDER_BY:
        parts.append("z-ordered by " + ", ".join(f"`{c}`" for c in ZORDER_BY[name]))
    return "; ".join(parts)


# Columns a table gained after stores were written: a frame read from an older store
# lacks them, and they are filled with nulls (not known yet) before it is written back.
# (events.event_month: an older events table keeps its columns, see PARTITION_BY.)
LATER_COLUMNS: dict[str, tuple[str, ...]] = {"segments": ("reach",), "events": ("event_month",)}


def with_later_columns(frame: pd.DataFrame, table: str) -> pd.DataFrame:
    """``frame`` (rows of ``table`` read back) with ``LATER_COLUMNS[table]`` it lacks added
    as nulls, so rewriting a table of an older store keeps its contract."""
    missing = [c for c in LATER_COLUMNS.get(table, ()) if c not in frame.columns]
    return frame.assign(**dict.fromkeys(missing)) if missing else frame


def conform(df: DataFrame, schema: StructType) -> DataFrame:
    """Select ``schema``'s columns from ``df`` in its order, cast to its types.

    Raises ``ValueError`` naming the missing columns; extra columns are dropped.
    """
    missing = [f.name for f in schema.fields if f.name not in df.columns]
    if missing:
        raise ValueError(f"frame lacks columns {missing} of the table contract; has {df.columns}")
    return df.select(*[F.col(f"`{f.name}`").cast(f.dataType).alias(f.name) for f in schema.fields])
