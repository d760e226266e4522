"""The ``embed`` stage: distinct texts of ``events`` -> ``text_embeddings``.

The stage takes the distinct ``(text_hash, text)`` of ``events``, drops those
already in the ``text_embeddings`` cache for the configured ``model_id`` and
embeds only the new ones in the UDF of ``udf.py`` (with ``embed.parts: split``, their
distinct parts, composed as ``parts`` says). Later stages read the cache back through
``model_vectors``.
"""

from __future__ import annotations

import logging
import math
import time
from datetime import datetime, timezone

from pyspark import Accumulator, StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from usersegments.config import Config, EmbedConfig, InputConfig
from usersegments.embed.model import EmbedderSpec, resolve_runtime
from usersegments.embed.parts import compose_vectors, composite_parts, distinct_parts, text_parts
from usersegments.embed.udf import make_embed_udf
from usersegments.errors import InputError
from usersegments.ingest.rejections import summarize_rejections
from usersegments.privacy import move_texts_out_of_events, with_texts
from usersegments.runlog import RunLog, StageResult
from usersegments.schema import TEXT_EMBEDDINGS, conform
from usersegments.store import TableStore

log = logging.getLogger(__name__)


# The column ``flag_cached`` adds: whether the text's vector for the model is cached.
CACHED = "_cached"


def flag_cached(events: DataFrame, cache: DataFrame | None, model: str) -> DataFrame:
    """Distinct ``(text_hash, text)`` of ``events`` with ``CACHED``: whether ``cache``
    holds the text's vector for ``model``. One frame for both the counts and the texts
    to embed, so the events are read twice per run, not three times."""
    distinct = events.select("text_hash", "text").dropDuplicates(["text_hash"])
    if cache is None:
        return distinct.withColumn(CACHED, F.lit(False))
    # text_embeddings is keyed by (text_hash, model_id): one row per hash here.
    known = (
        cache.filter(F.col("model_id") == model).select("text_hash").withColumn(CACHED, F.lit(True))
    )
    return distinct.join(known, "text_hash", "left").withColumn(
        CACHED, F.coalesce(F.col(CACHED), F.lit(False))
    )


def model_vectors(store: TableStore, model: str) -> DataFrame:
    """``text_hash, embedding`` of every cached text for ``model`` (a model_id)."""
    return (
        store.read("text_embeddings")
        .filter(F.col("model_id") == model)
        .select("text_hash", "embedding")
    )


def vectors_fit_broadcast(store: TableStore, model: str, limit_mb: int) -> bool:
    """Whether ``model_vectors(store, model)`` may be broadcast to a join with events:
    ``text_embeddings`` (every model's rows, an upper bound) is estimated at most
    ``limit_mb`` MiB (``spark.broadcast_vectors_mb``; 0 = never)."""
    if limit_mb <= 0:
        return False
    first = model_vectors(store, model).select(F.size("embedding").alias("dimension")).first()
    if first is None:
        return False
    rows = store.row_count("text_embeddings")
    # A float per dimension plus the row's hash, id and Spark's row overhead.
    estimate_mb = rows * (4 * int(first["dimension"]) + VECTOR_ROW_OVERHEAD_BYTES) / 2**20
    return estimate_mb <= limit_mb


# Bytes of a text_embeddings row beside its floats: text_hash (64 hex characters), the
# array's header and the UnsafeRow's fixed part.
VECTOR_ROW_OVERHEAD_BYTES = 128


def run_embed(spark: SparkSession, store: TableStore, cfg: Config, run: RunLog) -> StageResult:
    """Embed every text of ``events`` not yet cached for the configured model."""
    threads = int(spark.conf.get("spark.task.cpus", "1") or 1)
    spec = EmbedderSpec.from_config(cfg.embed, cpu_threads=threads)
    run.model_id = spec.model_id
    _require_events(store, cfg.input)
    events = _event_texts(store)
    cache = store.read("text_embeddings") if store.exists("text_embeddings") else None
    # Persisted: counted here, then read by the model's job, which would otherwise
    # deduplicate the events and join the cache again.
    flagged = flag_cached(events, cache, spec.model_id).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        metrics = _embed_flagged(spark, store, cfg, spec, flagged, cache)
    finally:
        flagged.unpersist()
    if cfg.privacy.drop_text_after_embedding:
        metrics["texts_moved_out_of_events"] = move_texts_out_of_events(store)
    run.record_all("embed", metrics)
    tables = (
        {"text_embeddings": store.version("text_embeddings")}
        if store.exists("text_embeddings")
        else {}
    )
    return StageResult(stage="embed", tables=tables, metrics=metrics)


def _embed_flagged(
    spark: SparkSession,
    store: TableStore,
    cfg: Config,
    spec: EmbedderSpec,
    flagged: DataFrame,
    cache: DataFrame | None,
) -> dict[str, float]:
    """Embed the texts of ``flagged`` (``flag_cached``) not cached yet; returns the
    stage's metrics."""
    blank = F.trim(F.col("text")) == ""
    metrics = _cache_metrics(flagged, blank)
    candidates = flagged.filter(~F.col(CACHED)).drop(CACHED)
    runtime = resolve_runtime(cfg.embed)
    metrics["runtime_onnx"] = float(runtime.runtime == "onnxruntime")
    metrics["quantized_int8"] = float(runtime.quantize == "int8")
    log.info(
        "embed: %d distinct texts, %d cached, %d to embed with %s (%s, %s, %s)",
        metrics["distinct_texts"],
        metrics["cached_hits"],
        metrics["texts_to_embed"],
        spec.model_id,
        runtime.runtime,
        runtime.quantize,
        runtime.reason,
    )
    metrics["embedded_by_parts"] = float(cfg.embed.parts == "split")
    new = candidates.filter(~blank)
    if not metrics["texts_to_embed"]:
        metrics.update({"texts_embedded": 0, "rows_inserted": 0})
    elif cfg.embed.parts == "split":
        metrics.update(_embed_by_parts(spark, store, cfg, spec, new, cache))
    else:
        metrics.update(_embed_new(spark, store, cfg.embed, spec, new, metrics["texts_to_embed"]))
    return metrics


def _require_events(store: TableStore, cfg_input: InputConfig) -> None:
    """Fail with the reasons and the fix when ``events`` is missing or holds no row."""
    store.require("events", fix="run `usersegments ingest` first")
    # From the log's statistics where the backend has them: no scan of the events.
    if store.row_count("events"):
        return
    empty = f"the events table under {store.root} holds no event"
    now = datetime.now(timezone.utc)
    summaries = (
        summarize_rejections(store.read("events_rejected"), cfg_input, now)
        if store.exists("events_rejected")
        else []
    )
    if not summaries:
        raise InputError(
            f"{empty}: the inputs ingested so far held no row. Ingest a log with events in it; "
            "no stage after ingest ran"
        )
    reasons = "".join(f"\n{s.line()}" for s in summaries)
    raise InputError(
        f"{empty}: ingest accepted none of the rows it read (every one is in the "
        f"events_rejected table). By reason:{reasons}\nFix the input or the settings named "
        "and rerun; no stage after ingest ran"
    )


def _event_texts(store: TableStore) -> DataFrame:
    """``text_hash, text`` of every distinct text of ``events`` that has one."""
    # Texts come back from the texts table where events keep only hashes, so a new
    # model can still embed every text; one row per hash before that join.
    hashes = store.read("events").select("text_hash", "text").dropDuplicates(["text_hash"])
    return with_texts(store, hashes).filter(F.col("text").isNotNull())


def _cache_metrics(flagged: DataFrame, blank: Column) -> dict[str, float]:
    """Distinct, cached, to-embed and blank text counts of ``flagged`` (``flag_cached``),
    in one job (blank texts are never embedded)."""
    new = ~F.col(CACHED)
    counts = flagged.agg(
        F.count(F.lit(1)).alias("distinct"),
        F.sum(new.cast("long")).alias("new"),
        F.sum((new & blank).cast("long")).alias("blank"),
    ).first()
    distinct_texts = int(counts["distinct"])
    new_texts = int(counts["new"] or 0)
    blank_texts = int(counts["blank"] or 0)
    if blank_texts:
        log.warning(
            "embed: %d blank texts in events were skipped (ingest should reject them)", blank_texts
        )
    return {
        "distinct_texts": distinct_texts,
        "texts_to_embed": new_texts - blank_texts,
        "cached_hits": distinct_texts - new_texts,
        "blank_texts_skipped": blank_texts,
    }


def _embed_by_parts(
    spark: SparkSession,
    store: TableStore,
    cfg: Config,
    spec: EmbedderSpec,
    texts: DataFrame,
    cache: DataFrame | None,
) -> dict[str, float]:
    """Embed the distinct parts of ``texts`` not in ``cache`` (``text_embeddings``, None
    before its first write) and compose the vectors of the texts made of two parts
    (``embed.parts: split``, see ``parts``), merged into ``text_embeddings`` in one
    commit; returns the stage's embedding metrics, the parts' counts among them."""
    # Persisted: the part counts, the parts to embed and the composition read it, and
    # the cache it was flagged against must not change in between.
    ecfg = cfg.embed
    parts = text_parts(texts, ecfg.max_length, cfg.input.text_source)
    parts = parts.persist(StorageLevel.MEMORY_AND_DISK)
    embedded = flagged = composed = None
    try:
        flagged = flag_cached(distinct_parts(parts), cache, spec.model_id)
        flagged = flagged.persist(StorageLevel.MEMORY_AND_DISK)  # counted, then embedded
        counts = _cache_metrics(flagged, F.lit(False))  # parts are never blank
        metrics = {
            "distinct_parts": counts["distinct_texts"],
            "parts_cached": counts["cached_hits"],
            "texts_embedded": 0,
        }
        vectors = model_vectors(store, spec.model_id) if cache is not None else None
        if counts["texts_to_embed"]:
            new = flagged.filter(~F.col(CACHED)).drop(CACHED)
            embedded, model_metrics = _run_model(spark, ecfg, spec, new, counts["texts_to_embed"])
            metrics.update(model_metrics)
            fresh = embedded.select("text_hash", "embedding")
            vectors = fresh if vectors is None else vectors.unionByName(fresh)
        composed = _embedding_rows(
            compose_vectors(composite_parts(parts), vectors, ecfg.normalize), spec.model_id
        )
        # Persisted: the merge's key check and its write both read the composed rows.
        composed = composed.persist(StorageLevel.MEMORY_AND_DISK)
        rows = composed if embedded is None else embedded.unionByName(composed)
        merged = store.merge(
            rows, "text_embeddings", on=["text_hash", "model_id"], when_matched="ignore"
        )
    finally:
        for frame in (parts, flagged, embedded, composed):
            if frame is not None:
                frame.unpersist()
    # Every part and text here was uncached, so each of the rows was inserted.
    metrics["texts_composed"] = merged.inserted - metrics["texts_embedded"]
    metrics["rows_inserted"] = merged.inserted
    log.info(
        "embed: %d distinct parts, %d cached; %d texts composed from their parts",
        metrics["distinct_parts"],
        metrics["parts_cached"],
        metrics["texts_composed"],
    )
    return metrics


def _embedding_rows(vectors: DataFrame, model: str) -> DataFrame:
    """``text_embeddings`` rows of ``vectors`` (``text_hash, embedding``) for ``model``."""
    return conform(
        vectors.select(
            "text_hash",
            F.lit(model).alias("model_id"),
            "embedding",
            F.lit(datetime.now(timezone.utc)).alias("created_at"),
        ),
        TEXT_EMBEDDINGS,
    )


def _embed_new(
    spark: SparkSession,
    store: TableStore,
    ecfg: EmbedConfig,
    spec: EmbedderSpec,
    texts: DataFrame,
    count: float,
) -> dict[str, float]:
    """Embed ``texts`` (``count`` of them) and merge them into ``text_embeddings``;
    returns the stage's embedding metrics. The model runs inside the merge's own job:
    no separate pass computes the vectors first, and the rows inserted are the texts
    embedded (every one of ``texts`` was uncached)."""
    vectors, partitions, truncated = _model_rows(spark, ecfg, spec, texts, count)
    t0 = time.perf_counter()
    # One row per text_hash (``_event_texts``), all of one model.
    merged = store.merge(
        vectors,
        "text_embeddings",
        on=["text_hash", "model_id"],
        when_matched="ignore",
        keys_unique=True,
    )
    seconds = time.perf_counter() - t0
    metrics = _model_metrics(ecfg, merged.inserted, seconds, partitions, truncated)
    metrics["rows_inserted"] = merged.inserted
    return metrics


def _run_model(
    spark: SparkSession, ecfg: EmbedConfig, spec: EmbedderSpec, texts: DataFrame, count: float
) -> tuple[DataFrame, dict[str, float]]:
    """``texts`` (``count`` of them) through the model: their ``text_embeddings`` rows,
    persisted (the caller unpersists them), and the model's metrics."""
    vectors, partitions, truncated = _model_rows(spark, ecfg, spec, texts, count)
    # Persisted so the timed count runs the model and later passes reuse its vectors.
    vectors = vectors.persist(StorageLevel.MEMORY_AND_DISK)
    t0 = time.perf_counter()
    try:
        embedded = vectors.count()
    except Exception:
        vectors.unpersist()  # the caller only gets the rows when the model ran
        raise
    seconds = time.perf_counter() - t0
    return vectors, _model_metrics(ecfg, embedded, seconds, partitions, truncated)


def _model_rows(
    spark: SparkSession, ecfg: EmbedConfig, spec: EmbedderSpec, texts: DataFrame, count: float
) -> tuple[DataFrame, int, Accumulator]:
    """The ``text_embeddings`` rows of ``texts`` (``count`` of them), computed by the
    model when a job reads them; with the partitions they run in and the accumulator
    of texts truncated at ``embed.max_length``."""
    partitions = ecfg.partitions or max(
        spark.sparkContext.defaultParallelism, math.ceil(count / 20_000)
    )
    truncated = spark.sparkContext.accumulator(0)
    embed_udf = make_embed_udf(spec, truncated)
    vectors = texts.repartition(partitions).select(
        "text_hash", embed_udf(F.col("text")).alias("embedding")
    )
    return _embedding_rows(vectors, spec.model_id), partitions, truncated


def _model_metrics(
    ecfg: EmbedConfig, embedded: int, seconds: float, partitions: int, truncated: Accumulator
) -> dict[str, float]:
    """The model's metrics (``embed_seconds``: the job that ran it, with the write of
    its vectors where that was the same job), logged."""
    rate = embedded / seconds if seconds > 0 else 0.0
    log.info(
        "embed: %d texts in %.1fs (%.0f texts/s), %d truncated at %d tokens",
        embedded,
        seconds,
        rate,
        truncated.value,
        ecfg.max_length,
    )
    return {
        "texts_embedded": embedded,
        "embed_seconds": seconds,
        "texts_per_second": rate,
        "texts_truncated": truncated.value,
        "partitions": partitions,
    }
