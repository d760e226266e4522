"""The label stage: keywords, top items and a label for every segment."""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from usersegments.config import Config
from usersegments.embed import model_id, model_vectors
from usersegments.frames import to_spark
from usersegments.halflife import stored_profile_half_life, with_half_life
from usersegments.label.items import item_texts, representative_items
from usersegments.label.keywords import segment_keywords
from usersegments.label.naming import label_segments
from usersegments.privacy import with_texts
from usersegments.runlog import RunLog, StageResult
from usersegments.schema import SEGMENTS, conform, with_later_columns
from usersegments.store import TableStore
from usersegments.times import max_time


def member_events(store: TableStore) -> DataFrame:
    """Events of clustered users, each with the user's segment_id."""
    members = store.read("user_segments").select("user_id", "segment_id")
    return with_texts(store, store.read("events")).join(members, "user_id")


def run_label(spark: SparkSession, store: TableStore, cfg: Config, run: RunLog) -> StageResult:
    """Fill ``segments``' keywords, top_items and label from its members' events."""
    store.require(
        "segments",
        "user_segments",
        "events",
        "text_embeddings",
        fix="run `usersegments run` (or `usersegments cluster`) first",
    )
    mid = model_id(cfg.embed)
    run.model_id = run.model_id or mid
    segments = store.read("segments")
    as_of = max_time(store.read("user_segments"), "as_of")
    events = member_events(store).cache()
    try:
        days = stored_profile_half_life(store, cfg.profile, events, run)
        profile_cfg = with_half_life(cfg.profile, days)
        keywords = segment_keywords(events, cfg.model_copy(update={"profile": profile_cfg}), as_of)
        vectors = model_vectors(store, mid)
        top_items = representative_items(events, segments, vectors, cfg.label)
        wanted = sorted({i for items in top_items.values() for i in items})
        texts = {
            r["item_id"]: r["text"]
            for r in item_texts(events.filter(F.col("item_id").isin(wanted))).collect()
        }
    finally:
        events.unpersist()
    # segments is small (one row per segment): described on the driver. A segment below
    # the privacy floor (possible after updates shrink it) is not described at all.
    rows = with_later_columns(segments.toPandas(), "segments")
    small = set(rows.loc[rows["size"] < cfg.privacy.min_segment_size, "segment_id"])
    keywords = {s: k for s, k in keywords.items() if s not in small}
    top_items = {s: i for s, i in top_items.items() if s not in small}
    described, generated = label_segments(rows, keywords, top_items, texts, cfg.label)
    described["run_id"] = run.run_id  # every row carries the run that last wrote it
    frame = to_spark(spark, described, SEGMENTS)
    store.write(conform(frame, SEGMENTS), "segments", mode="overwrite")
    metrics = {
        "segments_labelled": int((described["keywords"].map(len) > 0).sum()),
        "segments_without_keywords": int((described["keywords"].map(len) == 0).sum()),
        "segments_without_items": int((described["top_items"].map(len) == 0).sum()),
        "labels_generated": generated,
        "segments_below_privacy_floor": len(small),
    }
    run.record_all("label", metrics)
    return StageResult(
        stage="label", tables={"segments": store.version("segments")}, metrics=metrics
    )
