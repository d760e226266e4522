"""Representative items: a segment's most touched items nearest its centroid."""

from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from usersegments.config import LabelConfig
from usersegments.label.terms import distinct_texts
from usersegments.profile import dot


def item_hashes(events: DataFrame) -> DataFrame:
    """One text hash per item id: the one its events carry most often (ties by hash)."""
    counts = (
        events.filter(F.col("item_id").isNotNull() & F.col("text_hash").isNotNull())
        .groupBy("item_id", "text_hash")
        .count()
    )
    order = Window.partitionBy("item_id").orderBy(F.desc("count"), F.asc("text_hash"))
    return (
        counts.withColumn("_rank", F.row_number().over(order))
        .filter("_rank = 1")
        .select("item_id", "text_hash")
    )


def item_texts(events: DataFrame) -> DataFrame:
    """One text per item id: the text (and its hash) its events carry most often.
    Texts travel once per distinct hash, not once per event: narrow ``events`` to the
    items wanted first where only some are."""
    return (
        item_hashes(events)
        .join(distinct_texts(events), "text_hash", "left")
        .select("item_id", "text_hash", "text")
    )


def representative_items(
    member_events: DataFrame,
    segments: DataFrame,
    vectors: DataFrame,
    cfg: LabelConfig,
) -> dict[str, list[str]]:
    """segment_id -> item ids nearest to its centroid among its most touched items."""
    touched = (
        member_events.filter(F.col("item_id").isNotNull())
        .groupBy("segment_id", "item_id")
        .agg(F.countDistinct("user_id").alias("members"))
    )
    popular = Window.partitionBy("segment_id").orderBy(F.desc("members"), F.asc("item_id"))
    candidates = touched.withColumn("_p", F.row_number().over(popular)).filter(
        F.col("_p") <= cfg.item_candidates
    )
    items = item_hashes(member_events).join(vectors, "text_hash")
    scored = (
        candidates.join(items.select("item_id", "embedding"), "item_id")
        .join(segments.select("segment_id", "centroid"), "segment_id")
        .withColumn("similarity", dot("embedding", "centroid"))
    )
    nearest = Window.partitionBy("segment_id").orderBy(F.desc("similarity"), F.asc("item_id"))
    rows = (
        scored.withColumn("_rank", F.row_number().over(nearest))
        .filter(F.col("_rank") <= cfg.n_top_items)
        .select("segment_id", "item_id", "_rank")
        .collect()
    )
    out: dict[str, list[tuple[int, str]]] = {}
    for row in rows:
        out.setdefault(row["segment_id"], []).append((row["_rank"], row["item_id"]))
    return {seg: [item for _, item in sorted(pairs)] for seg, pairs in out.items()}
