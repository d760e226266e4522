"""Profile: events x text_embeddings -> ``user_profiles``, one interest vector per user.

A user's vector is the weighted mean of their events' text vectors, weight =
event-type weight x time decay ``exp(-ln2 * age / half_life)`` x an optional
transform of the event's value, then L2-normalised. The weighted sums run natively
in Spark (MLlib ``Summarizer``'s weighted ``sum`` as a sort aggregate over rows sorted
by user, ``frames.sorted_aggregation``; no per-event Python code).

**Decay anchor.** An event's age is measured from its user's own **anchor**: the
user's latest event time, or ``as_of`` when that is earlier (an explicit
``profile.as_of`` in the past; later events count as fresh). Decaying to a global
``as_of`` instead would scale each user's sum by ``exp(-ln2 * (as_of - anchor) /
half_life)``, which leaves the direction unchanged but underflows float32 to an
all-zero vector for a user idle for ~150 half-lives (years, with a 30-day half-life).
With the anchor, the latest event of every user weighs its full weight.

**Stored sums.** ``user_profiles`` keeps, beside the unit vector:

- ``weighted_sum``: ``sum_i w_i * 2^(-(anchor - t_i) / half_life) * v_i``;
- ``weight_total``: ``sum_i w_i * 2^(-(anchor - t_i) / half_life)``, the user's
  decayed event weight at their anchor (``w_i`` = type weight x value transform), so
  at least the weight of their latest event; their weight at the run's ``as_of`` is
  ``weight_total * 2^(-(as_of - anchor) / half_life)``;
- the anchor is ``least(last_event_time, as_of)`` of the row (no extra column).

An update folds new events in without re-reading history, moving both sums to the
later of the two anchors (``dynamics.fold``):
``S(a1) = S(a0) * 2^(-(a1 - a0) / half_life) + sum(w_i * 2^(-(a1 - t_i) / half_life) * v_i)``.

A user whose sum is zero (every event weighs 0) or not finite gets no usable vector;
``usable_vector`` tells, clustering leaves such users out and the stage counts them
(``users_unprofiled.*`` in ``run_metrics``).
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime

import numpy as np
import pandas as pd
from pyspark.ml.feature import Normalizer
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.ml.stat import Summarizer
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from usersegments.config import Config, ProfileConfig
from usersegments.embed import model_id
from usersegments.embed.stage import model_vectors, vectors_fit_broadcast
from usersegments.errors import InputError
from usersegments.frames import literal_map, sorted_aggregation
from usersegments.halflife import profile_half_life, with_half_life
from usersegments.runlog import RunLog, StageResult
from usersegments.schema import USER_PROFILES, conform
from usersegments.store import TableStore
from usersegments.times import max_time, setting_utc

log = logging.getLogger(__name__)

LN2 = math.log(2.0)
SECONDS_PER_DAY = 86_400.0
ZERO_WEIGHT_STANDIN = sys.float_info.min


def user_anchor(as_of: datetime) -> Column:
    """Each event row's decay anchor: its user's latest event time, or ``as_of`` when
    that is earlier (a window over the user's rows; ``event_time`` and ``user_id``)."""
    latest = F.max("event_time").over(Window.partitionBy("user_id"))
    return F.least(latest, F.lit(as_of))


def event_weight(cfg: ProfileConfig, as_of: datetime | Column) -> Column:
    """The weight of each event row: type weight x time decay x value transform.

    The decay runs from ``as_of``: an instant, or a column (``user_anchor``, so that the
    weights are relative to each user's anchor). ``cfg.half_life_days`` must be resolved
    (a number, see ``usersegments.halflife``).
    """
    if cfg.half_life_days == "auto":
        raise ValueError(
            "profile.half_life_days is 'auto': resolve it first (usersegments.halflife)"
        )
    type_weight = F.coalesce(
        literal_map(cfg.event_weights)[F.col("event_type")], F.lit(cfg.default_event_weight)
    )
    anchor = as_of if isinstance(as_of, Column) else F.lit(as_of)
    age_days = (anchor.cast("double") - F.col("event_time").cast("double")) / SECONDS_PER_DAY
    # Events after the anchor (an explicit as_of in the past) count as fresh, not as amplified.
    decay = F.exp(F.lit(-LN2 / float(cfg.half_life_days)) * F.greatest(age_days, F.lit(0.0)))
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
    are unit vectors), in float64; null where either is null or their lengths differ.

    A numpy pandas UDF: Spark runs higher-order array functions (``zip_with`` +
    ``aggregate``) interpreted, one lambda call per element, about 4x as long on 384
    dimensions. When one side is one vector per key (a segment's centroid), use
    ``with_similarity``: it does not send that vector along with every row.
    """
    return _dot_udf(F.col(a), F.col(b))


@F.pandas_udf(T.DoubleType())
def _dot_udf(left: pd.Series, right: pd.Series) -> pd.Series:
    """Row-wise dot products of two Series of float arrays (see ``dot``)."""
    out = np.full(len(left), np.nan)  # NaN comes back to Spark as null
    for i, (x, y) in enumerate(zip(left, right, strict=True)):
        if x is not None and y is not None and len(x) == len(y):
            out[i] = np.dot(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64))
    return pd.Series(out)


def target_matrix(targets: Mapping[str, Sequence[float]]) -> tuple[dict[str, int], np.ndarray]:
    """The keys of ``targets`` that have a vector, each with its row in a float64 matrix
    of those vectors (0 columns when there are none); the small side of a similarity
    that travels with a ``mapInPandas`` function."""
    keys = [k for k, v in targets.items() if v is not None]
    if not keys:
        return {}, np.zeros((0, 0))
    matrix = np.array([np.asarray(targets[k], dtype=np.float64) for k in keys])
    return {k: i for i, k in enumerate(keys)}, matrix


def with_similarity(
    frame: DataFrame, vector: str, key: str, targets: Mapping[str, Sequence[float]], name: str
) -> DataFrame:
    """``frame`` plus ``name``: the dot product (float64) of each row's array ``vector``
    with ``targets[row's key]`` (e.g. segment id -> centroid: one small vector per key);
    null where the key has no target (or a null one) or the row's vector is null or of
    another length.

    The targets travel with the function, so each row's vector crosses to Python once,
    not with a copy of its target as in a per-row ``dot`` after a join.
    """
    index, matrix = target_matrix(targets)
    width = matrix.shape[1]
    schema = T.StructType([*frame.schema.fields, T.StructField(name, T.DoubleType())])

    def similarities(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for pdf in batches:
            rows = pdf[key].map(index)
            valid = rows.notna() & pdf[vector].map(lambda v: v is not None and len(v) == width)
            out = np.full(len(pdf), np.nan)  # NaN comes back to Spark as null
            if valid.any():
                vectors = np.stack(pdf.loc[valid, vector].to_numpy()).astype(np.float64)
                chosen = matrix[rows[valid].to_numpy(dtype=np.int64)]
                out[valid.to_numpy()] = np.einsum("ij,ij->i", vectors, chosen)
            yield pdf.assign(**{name: out})

    return frame.mapInPandas(similarities, schema=schema)


def usable_vector(column: str) -> Column:
    """True where the array column ``column`` has a finite, non-zero length: a vector
    cosine clustering can use (MLlib's cosine k-means fails on a zero vector).

    Native array functions, no per-element lambda (interpreted, ~10x slower per user):
    Spark orders NaN above every number, so a NaN anywhere makes ``array_max`` NaN; a
    vector is non-zero when its largest element is above 0 or its smallest below.
    The vectors' elements are never null (the model, MLlib and the stages write them).
    """
    largest, smallest = F.array_max(column), F.array_min(column)
    finite = ~F.isnan(largest) & (largest < float("inf")) & (smallest > float("-inf"))
    usable = (F.size(column) > 0) & finite & ((largest > 0) | (smallest < 0))
    return F.coalesce(F.col(column).isNotNull() & usable, F.lit(False))


def weighted_sums(
    events: DataFrame, vectors: DataFrame, cfg: ProfileConfig, as_of: datetime
) -> DataFrame:
    """Per user: decayed weighted sum of vectors, total weight, counts and time span,
    decayed to the user's anchor (``user_anchor``; see the module).

    ``cfg.half_life_days`` must be resolved. ``events`` needs user_id, event_time,
    event_type, value, text_hash, and may have run_id: ``events_through`` is then the
    latest ingest run folded into the sums (updates fold only later events);
    ``vectors`` needs text_hash, embedding (``F.broadcast`` it when it is small). Write
    the result inside ``frames.sorted_aggregation``: the rows reach the sum sorted by user.
    """
    through = F.col("run_id") if "run_id" in events.columns else F.lit(None).cast("string")
    # Weights first (the anchor window partitions the small event rows by user_id), then
    # the vectors: joined from a broadcast (``embed.stage.vectors_fit_broadcast``), the
    # rows keep that partitioning and the groupBy below shuffles no event's vector.
    decayed = events.select(
        "user_id",
        "event_time",
        "text_hash",
        through.alias("_through"),
        event_weight(cfg, user_anchor(as_of)).alias("_w"),
    )
    weighted = decayed.join(vectors, on="text_hash", how="inner").select(
        "user_id",
        "event_time",
        "_through",
        array_to_vector(F.col("embedding")).alias("_vec"),
        "_w",
    )
    summary = Summarizer.metrics("sum")
    # MLlib's weighted summary skips weight-0 rows and fails for a group with no weight at
    # all; the smallest positive double stands in for 0: no effect beside any real weight,
    # and for a user without one a sum that float32 holds as zero.
    summarised = F.when(F.col("_w") > 0, F.col("_w")).otherwise(F.lit(ZERO_WEIGHT_STANDIN))
    grouped = weighted.groupBy("user_id").agg(
        summary.summary(F.col("_vec"), summarised).alias("_s"),
        F.sum("_w").alias("weight_total"),
        F.count(F.lit(1)).alias("n_events"),
        F.min("event_time").alias("first_event_time"),
        F.max("event_time").alias("last_event_time"),
        F.max("_through").alias("events_through"),
    )
    return grouped.select(
        "user_id",
        vector_to_array(F.col("_s.sum"), dtype="float32").alias("weighted_sum"),
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
    """Build ``user_profiles`` from every event with a vector for the configured model.

    Resolves ``profile.half_life_days`` (derived from the events when ``auto``) and
    records it: updates and labels read it back (``halflife.recorded_profile_half_life``).
    """
    mid = model_id(cfg.embed)
    run.model_id = mid
    # Taken before the read: the profiles hold every event of this version (or later).
    events_version = store.version("events")
    events = store.read("events").select(
        "user_id", "event_time", "event_type", "value", "text_hash", "run_id"
    )
    store.require("text_embeddings", fix="run `usersegments embed` first")
    vectors = model_vectors(store, mid)
    broadcast = vectors_fit_broadcast(store, mid, cfg.spark.broadcast_vectors_mb)
    as_of = resolve_as_of(events, cfg.profile)
    half_life = profile_half_life(cfg.profile, events)
    profile_cfg = with_half_life(cfg.profile, half_life.days)
    sums = weighted_sums(events, F.broadcast(vectors) if broadcast else vectors, profile_cfg, as_of)
    profiles = profiles_from_sums(sums, as_of, run.run_id)
    with sorted_aggregation(spark):
        store.write(profiles, "user_profiles", mode="overwrite")
    metrics = {
        **profile_counts(store.read("user_profiles"), events, cfg.profile.min_events),
        "as_of_epoch_s": as_of.timestamp(),
        "vectors_broadcast": float(broadcast),
        **half_life.metrics(),
    }
    if metrics["events_without_vector"]:
        log.warning(
            "profile: %d events have no vector for %s (run embed first)",
            metrics["events_without_vector"],
            mid,
        )
    warn_unprofiled("profile", metrics)
    log.info(
        "profile: half-life %.4g days (%s)",
        half_life.days,
        "auto: " + ", ".join(f"{k} {v:.4g}" for k, v in half_life.basis.items())
        if half_life.auto
        else "profile.half_life_days",
    )
    run.record_all("profile", metrics)
    run.record("profile", EVENTS_VERSION, profiled_events_version(events_version, metrics))
    return StageResult(
        stage="profile", tables={"user_profiles": store.version("user_profiles")}, metrics=metrics
    )


# run_metrics metric of the profile and update stages: the events table version whose
# every event the stored profiles hold (``dynamics.changes`` reads only later commits);
# NO_EVENTS_VERSION when a stage cannot vouch for one.
EVENTS_VERSION = "events_version"
NO_EVENTS_VERSION = -1


def profiled_events_version(events_version: int, metrics: dict[str, float]) -> int:
    """The events version the new profiles hold every event of (updates read only the
    events committed after it, ``dynamics.changes``): none when some events had no
    vector, as a later embed may give them one and the next update must then read them."""
    return events_version if metrics["events_without_vector"] == 0 else NO_EVENTS_VERSION


def profile_counts(profiles: DataFrame, events: DataFrame, min_events: int) -> dict[str, int]:
    """The profile stage's user and event counts, reconciled with ``events``: users
    below ``min_events``, clusterable, without a vector, with an unusable vector."""
    usable = usable_vector("embedding")
    figures = profiles.agg(
        F.count(F.lit(1)).alias("users"),
        F.sum((F.col("n_events") < min_events).cast("long")).alias("below"),
        F.sum((~usable).cast("long")).alias("unusable"),
        F.sum(((F.col("n_events") >= min_events) & usable).cast("long")).alias("clusterable"),
        F.sum("n_events").alias("events_used"),
    ).first()
    counts = events.agg(
        F.count(F.lit(1)).alias("events"), F.countDistinct("user_id").alias("users")
    ).first()
    return {
        "users": int(figures["users"]),
        "users_below_min_events": int(figures["below"] or 0),
        "users_clusterable": int(figures["clusterable"] or 0),
        # Users with events but no profile row: none of their events has a vector.
        "users_unprofiled.no_vector": int(counts["users"]) - int(figures["users"]),
        # Profile rows whose sum is zero or not finite (every event weighs 0).
        "users_unprofiled.zero_vector": int(figures["unusable"] or 0),
        "events_used": int(figures["events_used"] or 0),
        "events_without_vector": int(counts["events"]) - int(figures["events_used"] or 0),
    }


def warn_unprofiled(stage: str, metrics: dict[str, float]) -> None:
    """Log a warning naming every ``users_unprofiled.<reason>`` count above 0."""
    reasons = {
        k.split(".", 1)[1]: int(v)
        for k, v in metrics.items()
        if k.startswith("users_unprofiled.") and v
    }
    if reasons:
        log.warning(
            "%s: %d users get no usable interest vector and are not clustered (%s)",
            stage,
            sum(reasons.values()),
            ", ".join(f"{reason}: {n}" for reason, n in reasons.items()),
        )
