"""Profile: events x text_embeddings -> ``user_profiles``, one interest vector per user.

A user's vector is the weighted mean of their events' text vectors, weight =
event-type weight x time decay ``exp(-ln2 * age / half_life)`` relative to
``as_of`` x an optional transform of the event's value, then L2-normalised.
The weighted sums run natively in Spark (MLlib ``Summarizer`` with a weight
column over vectors; no per-event Python code). The decayed sum and the total
weight are stored beside the vector so that an update can fold new events in
without re-reading history:
``S(t1) = S(t0) * exp(-ln2 * (t1 - t0) / half_life) + sum(w_i * v_i)``.
"""

from __future__ import annotations

import logging
import math
from datetime import datetime

from pyspark.ml.feature import Normalizer
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.ml.stat import Summarizer
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from usersegments.config import Config, ProfileConfig
from usersegments.embed import model_id, model_vectors
from usersegments.errors import InputError
from usersegments.frames import literal_map
from usersegments.runlog import RunLog, StageResult
from usersegments.schema import USER_PROFILES, conform
from usersegments.store import TableStore
from usersegments.times import max_time, setting_utc

log = logging.getLogger(__name__)

LN2 = math.log(2.0)
SECONDS_PER_DAY = 86_400.0


def event_weight(cfg: ProfileConfig, as_of: datetime) -> Column:
    """The weight of each event row: type weight x time decay x value transform."""
    type_weight = F.coalesce(
        literal_map(cfg.event_weights)[F.col("event_type")], F.lit(cfg.default_event_weight)
    )
    age_days = (F.lit(as_of).cast("double") - F.col("event_time").cast("double")) / SECONDS_PER_DAY
    # Events after as_of (an explicit as_of in the past) count as fresh, not as amplified.
    decay = F.exp(F.lit(-LN2 / cfg.half_life_days) * F.greatest(age_days, F.lit(0.0)))
    value = F.col("value")
    if cfg.value_transform == "log1p":
        factor = F.when(value.isNull(), 1.0).otherwise(F.log1p(F.greatest(value, F.lit(0.0))))
    elif cfg.value_transform == "linear":
        factor = F.when(value.isNull(), 1.0).otherwise(F.greatest(value, F.lit(0.0)))
    else:
        factor = F.lit(1.0)
    return type_weight.cast("double") * decay * factor


def with_unit_vector(df: DataFrame, source: str, target: str) -> DataFrame:
    """``df`` with ``target`` = array ``source`` scaled to unit length.

    MLlib's ``Normalizer`` on vectors, not array lambdas: Spark's optimizer inlines
    a norm column into a per-element lambda and recomputes it for every element.
    """
    vector_col, unit_col = f"_{target}_vec", f"_{target}_unit"
    normalizer = Normalizer(p=2.0, inputCol=vector_col, outputCol=unit_col)
    with_vector = df.withColumn(vector_col, array_to_vector(F.col(source)))
    return (
        normalizer.transform(with_vector)
        .withColumn(target, vector_to_array(F.col(unit_col), dtype="float32"))
        .drop(vector_col, unit_col)
    )


def dot(a: str, b: str) -> Column:
    """The dot product of two array<float> columns of equal length (cosine when both
    are unit vectors)."""
    return F.aggregate(F.zip_with(a, b, lambda x, y: x * y), F.lit(0.0), lambda acc, v: acc + v)


def weighted_sums(
    events: DataFrame, vectors: DataFrame, cfg: ProfileConfig, as_of: datetime
) -> DataFrame:
    """Per user: decayed weighted sum of vectors, total weight, counts and time span.

    ``events`` needs user_id, event_time, event_type, value, text_hash, and may have
    run_id: ``events_through`` is then the latest ingest run folded into the sums
    (updates fold only later events); ``vectors`` needs text_hash, embedding.
    """
    through = F.col("run_id") if "run_id" in events.columns else F.lit(None).cast("string")
    weighted = events.join(vectors, on="text_hash", how="inner").select(
        "user_id",
        "event_time",
        through.alias("_through"),
        array_to_vector(F.col("embedding")).alias("_vec"),
        event_weight(cfg, as_of).alias("_w"),
    )
    summary = Summarizer.metrics("mean")
    grouped = weighted.groupBy("user_id").agg(
        summary.summary(F.col("_vec"), F.col("_w")).alias("_s"),
        F.sum("_w").alias("weight_total"),
        F.count(F.lit(1)).alias("n_events"),
        F.min("event_time").alias("first_event_time"),
        F.max("event_time").alias("last_event_time"),
        F.max("_through").alias("events_through"),
    )
    # Summarizer gives the weighted mean; the stored sum is mean x total weight.
    mean = vector_to_array(F.col("_s.mean"), dtype="float32")
    total = F.col("weight_total")
    return grouped.select(
        "user_id",
        F.transform(mean, lambda x: (x * total).cast("float")).alias("weighted_sum"),
        "weight_total",
        "n_events",
        "first_event_time",
        "last_event_time",
        "events_through",
    )


def profiles_from_sums(sums: DataFrame, as_of: datetime, run_id: str) -> DataFrame:
    """``user_profiles`` rows from weighted sums: the unit interest vector and bookkeeping."""
    return conform(
        with_unit_vector(sums, "weighted_sum", "embedding")
        .withColumn("as_of", F.lit(as_of))
        .withColumn("run_id", F.lit(run_id)),
        USER_PROFILES,
    )


def resolve_as_of(events: DataFrame, cfg: ProfileConfig) -> datetime:
    """``profile.as_of`` (UTC when given without a zone), or the latest event time."""
    if cfg.as_of is not None:
        return setting_utc(cfg.as_of)
    latest = max_time(events, "event_time")
    if latest is None:
        raise InputError(
            "the events table is empty: ingest events before building profiles "
            "(`usersegments ingest`)"
        )
    return latest


def run_profile(spark: SparkSession, store: TableStore, cfg: Config, run: RunLog) -> StageResult:
    """Build ``user_profiles`` from every event with a vector for the configured model."""
    mid = model_id(cfg.embed)
    run.model_id = mid
    events = store.read("events").select(
        "user_id", "event_time", "event_type", "value", "text_hash", "run_id"
    )
    store.require("text_embeddings", fix="run `usersegments embed` first")
    vectors = model_vectors(store, mid)
    as_of = resolve_as_of(events, cfg.profile)
    sums = weighted_sums(events, vectors, cfg.profile, as_of)
    profiles = profiles_from_sums(sums, as_of, run.run_id)
    store.write(profiles, "user_profiles", mode="overwrite")
    stored = store.read("user_profiles")
    figures = stored.agg(
        F.count(F.lit(1)).alias("users"),
        F.sum((F.col("n_events") < cfg.profile.min_events).cast("long")).alias("below"),
        F.sum("n_events").alias("events_used"),
    ).first()
    events_total = events.count()
    metrics = {
        "users": int(figures["users"]),
        "users_below_min_events": int(figures["below"] or 0),
        "users_clusterable": int(figures["users"]) - int(figures["below"] or 0),
        "events_used": int(figures["events_used"] or 0),
        "events_without_vector": events_total - int(figures["events_used"] or 0),
        "as_of_epoch_s": as_of.timestamp(),
    }
    if metrics["events_without_vector"]:
        log.warning(
            "profile: %d events have no vector for %s (run embed first)",
            metrics["events_without_vector"],
            mid,
        )
    run.record_all("profile", metrics)
    return StageResult(
        stage="profile", tables={"user_profiles": store.version("user_profiles")}, metrics=metrics
    )
