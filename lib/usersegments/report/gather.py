"""What the report shows, read from the tables into one small driver-side ``ReportData``."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from usersegments.config import Config
from usersegments.embed import model_id
from usersegments.interests.reach import co_interest
from usersegments.label import item_texts
from usersegments.privacy import with_texts
from usersegments.report.history import History, gather_history
from usersegments.store import TableStore
from usersegments.times import max_time

GATHER_THREADS = 4  # Spark jobs submitted at once (more only queue on a small driver)
CARD_RECOMMENDATIONS = 5  # recommendations shown per card; the table holds recommend.top_n
METRIC_COLUMNS = ["run_id", "stage", "metric", "value", "recorded_at"]
CO_COLUMNS = ["segment_a", "segment_b", "users"]
CO_INTEREST_SEGMENTS = 40  # rows (and columns) of the co-interest heat map at most


@dataclass
class ReportData:
    """Everything the page shows, gathered from the tables (small, on the driver)."""

    segments: pd.DataFrame
    map_points: pd.DataFrame
    item_text: dict[str, str]
    recommendations: dict[str, list[tuple[str, float]]]
    cluster_metrics: dict[str, float]
    ingest_metrics: dict[str, float]
    rejected_by_reason: dict[str, int]
    evaluate_metrics: dict[str, float]
    run_row: dict[str, Any]
    model: str
    lineage: list[tuple[str, str, str, float | None]] = field(default_factory=list)
    min_segment_size: int = 1
    table_rows: dict[str, int] = field(default_factory=dict)
    history: History = field(default_factory=History)
    runs_total: int = 0
    projection: str = "pca"
    change_min_share: float = 0.1
    # segment_a, segment_b, users: users with both segments as interests (none without
    # the interests stage).
    co_interest: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=CO_COLUMNS))


def gather(spark: SparkSession, store: TableStore, cfg: Config) -> ReportData:
    """Read what the report needs: segments, a map sample, metrics, ingest figures.

    The reads are independent Spark jobs, submitted from ``GATHER_THREADS`` threads at
    once: much of each is driver-side (Delta logs, planning, converting results), which
    then overlaps with the others' tasks instead of leaving the cores idle.
    """
    store.require(
        "segments", "user_segments", "user_profiles", "events", fix="run `usersegments run` first"
    )
    segments = store.read("segments").toPandas().sort_values("segment_id")
    user_segments = store.read("user_segments")
    # Run ids sort by time: the latest names the run that last segmented users.
    latest_run, total = user_segments.agg(F.max("run_id"), F.count(F.lit(1))).first()
    events = store.read("events")
    with ThreadPoolExecutor(GATHER_THREADS, thread_name_prefix="report-gather") as pool:
        # Submitted largest first: the history reads a dozen table versions.
        history = pool.submit(gather_history, store, cfg.report.history_runs, pool)
        jobs = {
            "map_points": pool.submit(_map_sample, store, user_segments, total, cfg),
            "item_text": pool.submit(_top_item_texts, store, events, segments),
            "co_interest": pool.submit(_co_interest, store, cfg, segments),
            "metrics": pool.submit(_metrics, store),
            "run_row": pool.submit(_run_row, store, latest_run),
            "lineage": pool.submit(_lineage, store),
            "runs_total": pool.submit(_runs_so_far, store),
            "recommendations": pool.submit(_recommendations, store),
            "rejected_by_reason": pool.submit(_rejected_by_reason, store),
            "events": pool.submit(events.count),
        }
        done = {name: job.result() for name, job in jobs.items()}
        done["history"] = history.result()
    metrics, run_row = done.pop("metrics"), done.pop("run_row")
    return ReportData(
        projection=cfg.report.projection,
        change_min_share=cfg.report.change_min_share,
        segments=segments,
        # An update's re-clustering records only a few cluster figures: the quality
        # section shows the latest full clustering's.
        cluster_metrics=_latest_metrics(metrics, "cluster", "silhouette_cosine"),
        ingest_metrics=_latest_metrics(metrics, "ingest"),
        evaluate_metrics=_latest_metrics(metrics, "evaluate"),
        run_row=run_row,
        model=run_row.get("model_id") or model_id(cfg.embed),
        table_rows={"users segmented": total, "events": done.pop("events")},
        min_segment_size=cfg.privacy.min_segment_size,
        **done,
    )


def _metrics(store: TableStore) -> pd.DataFrame:
    """Every run's metrics (a few hundred rows per run)."""
    if not store.exists("run_metrics"):
        return pd.DataFrame(columns=METRIC_COLUMNS)
    return store.read("run_metrics").toPandas()


def _co_interest(store: TableStore, cfg: Config, segments: pd.DataFrame) -> pd.DataFrame:
    """Segment pairs x users with both as interests (``interests.co_interest``), among
    the ``CO_INTEREST_SEGMENTS`` described segments of largest reach: a heat map of a
    thousand segments would be a million unreadable cells (and megabytes)."""
    if not store.exists("user_interests"):
        return pd.DataFrame(columns=CO_COLUMNS)
    shown = heat_map_segments(segments, cfg.privacy.min_segment_size)
    interests = store.read("user_interests").filter(F.col("segment_id").isin(shown))
    return co_interest(interests, cfg.interests.min_weight)


def heat_map_segments(segments: pd.DataFrame, min_size: int) -> list[str]:
    """The described segments the co-interest heat map may show: the
    ``CO_INTEREST_SEGMENTS`` of largest reach (size breaks ties; size alone before the
    interests stage wrote reach)."""
    described = segments[segments["size"] >= min_size]
    reach = described["reach"] if "reach" in described else pd.Series(0, described.index)
    ranked = described.assign(_reach=reach.fillna(0)).sort_values(
        ["_reach", "size", "segment_id"], ascending=[False, False, True]
    )
    return ranked["segment_id"].head(CO_INTEREST_SEGMENTS).tolist()


def _map_sample(
    store: TableStore, user_segments: DataFrame, total: int, cfg: Config
) -> pd.DataFrame:
    """``report.map_sample`` users (every user when there are fewer) with their segment
    and profile embedding, drawn at random with the clustering's seed."""
    wanted, seed = cfg.report.map_sample, cfg.cluster.seed
    sample = user_segments
    if total > wanted:
        # A Bernoulli sample a few standard deviations above the target, then exactly the
        # target at random: only the sample is sorted, never all users.
        fraction = min(1.0, (wanted + 4 * math.sqrt(wanted) + 10) / total)
        sample = sample.sample(fraction=fraction, seed=seed).orderBy(F.rand(seed)).limit(wanted)
    return (
        sample.join(store.read("user_profiles").select("user_id", "embedding"), "user_id")
        .select("user_id", "cluster_id", "segment_id", "embedding")
        .toPandas()
    )


def _top_item_texts(store: TableStore, events: DataFrame, segments: pd.DataFrame) -> dict[str, str]:
    """item_id -> text for the items the segment cards list."""
    wanted = sorted({i for items in segments["top_items"] for i in items})
    shown = events.filter(F.col("item_id").isin(wanted))
    return {r["item_id"]: r["text"] for r in item_texts(with_texts(store, shown)).collect()}


def _recommendations(store: TableStore) -> dict[str, list[tuple[str, float]]]:
    """segment_id -> its first recommendations as (text, or item id without one; score)."""
    if not store.exists("segment_recommendations"):
        return {}
    recs = (
        store.read("segment_recommendations")
        .filter(F.col("rank") <= CARD_RECOMMENDATIONS)
        .select("segment_id", "rank", "item_id", "text", "score")
        .toPandas()
        .sort_values(["segment_id", "rank"])
    )
    return {
        seg: [
            (str(t if t is not None else i), float(s))
            for i, t, s in zip(group["item_id"], group["text"], group["score"], strict=True)
        ]
        for seg, group in recs.groupby("segment_id")
    }


def _rejected_by_reason(store: TableStore) -> dict[str, int]:
    """Rejected input rows per reason over every ingest run (events_rejected)."""
    if not store.exists("events_rejected"):
        return {}
    return {
        r["reject_reason"]: int(r["rows"])
        for r in store.read("events_rejected")
        .groupBy("reject_reason")
        .agg(F.sum("occurrences").alias("rows"))
        .collect()
    }


def _run_row(store: TableStore, run_id: str) -> dict[str, Any]:
    """The ``runs`` row of ``run_id`` as a dict (empty when there is none)."""
    if not store.exists("runs"):
        return {}
    found = store.read("runs").filter(F.col("run_id") == run_id).collect()
    return found[0].asDict() if found else {}


def _latest_metrics(metrics: pd.DataFrame, stage: str, having: str | None = None) -> dict:
    """The metrics of ``stage`` from the latest run that recorded ``having`` (any metric
    of the stage when None)."""
    rows = metrics[metrics["stage"] == stage]
    if having is not None:
        runs = rows.loc[rows["metric"] == having, "run_id"]
        rows = rows[rows["run_id"].isin(runs)]
    if rows.empty:
        return {}
    latest = rows.sort_values("recorded_at")["run_id"].iloc[-1]
    rows = rows[rows["run_id"] == latest]
    # A figure that could not be measured (ARI without a truth table) is left out,
    # never shown as "nan".
    return {
        m: v
        for m, v in zip(rows["metric"], rows["value"], strict=True)
        if v is not None and math.isfinite(v)
    }


def _runs_so_far(store: TableStore) -> int:
    """Runs that succeeded, every command counted, plus the run in progress (the one
    writing this report, when the report is a stage of it)."""
    if not store.exists("runs"):
        return 0
    rows = store.read("runs").select("status", "started_at").orderBy("started_at").collect()
    done = sum(r["status"] == "succeeded" for r in rows)
    return done + int(bool(rows) and rows[-1]["status"] == "running")


def _lineage(store: TableStore) -> list[tuple[str, str, str, float | None]]:
    """The segment lineage of the latest re-clustering, if any."""
    if not store.exists("segment_lineage"):
        return []
    lineage = store.read("segment_lineage")
    # Compared as an aware instant: a naive collected value goes back through the
    # driver's zone, which is ambiguous in a daylight-saving fold.
    latest = max_time(lineage, "recorded_at")
    rows = lineage.filter(F.col("recorded_at") == F.lit(latest)).orderBy("event", "old_segment_id")
    return [
        (r["old_segment_id"] or "-", r["new_segment_id"] or "-", r["event"], r["similarity"])
        for r in rows.collect()
        if r["event"] != "continued"
    ]
