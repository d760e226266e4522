"""What the report shows, read from the tables into one small driver-side ``ReportData``."""

from __future__ import annotations

import math
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

CARD_RECOMMENDATIONS = 5  # recommendations shown per card; the table holds recommend.top_n
METRIC_COLUMNS = ["run_id", "stage", "metric", "value", "recorded_at"]
CO_COLUMNS = ["segment_a", "segment_b", "users"]


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
    """Read what the report needs: segments, a map sample, metrics, ingest figures."""
    store.require(
        "segments", "user_segments", "user_profiles", "events", fix="run `usersegments run` first"
    )
    segments = store.read("segments").toPandas().sort_values("segment_id")
    user_segments = store.read("user_segments")
    # Run ids sort by time: the latest names the run that last segmented users.
    latest_run, total = user_segments.agg(F.max("run_id"), F.count(F.lit(1))).first()
    events = store.read("events")
    metrics = (
        store.read("run_metrics").toPandas()
        if store.exists("run_metrics")
        else pd.DataFrame(columns=METRIC_COLUMNS)
    )
    run_row = _run_row(store, latest_run)
    return ReportData(
        lineage=_lineage(store),
        history=gather_history(store, cfg.report.history_runs),
        runs_total=_runs_so_far(store),
        projection=cfg.report.projection,
        change_min_share=cfg.report.change_min_share,
        segments=segments,
        map_points=_map_sample(store, user_segments, total, cfg),
        item_text=_top_item_texts(store, events, segments),
        recommendations=_recommendations(store),
        # An update's re-clustering records only a few cluster figures: the quality
        # section shows the latest full clustering's.
        cluster_metrics=_latest_metrics(metrics, "cluster", "silhouette_cosine"),
        ingest_metrics=_latest_metrics(metrics, "ingest"),
        rejected_by_reason=_rejected_by_reason(store),
        evaluate_metrics=_latest_metrics(metrics, "evaluate"),
        run_row=run_row,
        model=run_row.get("model_id") or model_id(cfg.embed),
        table_rows={"users segmented": total, "events": events.count()},
        min_segment_size=cfg.privacy.min_segment_size,
        co_interest=_co_interest(store, cfg.interests.min_weight),
    )


def _co_interest(store: TableStore, min_weight: float) -> pd.DataFrame:
    """Segment pairs x users with both as interests (``interests.co_interest``)."""
    if not store.exists("user_interests"):
        return pd.DataFrame(columns=CO_COLUMNS)
    return co_interest(store.read("user_interests"), min_weight)


def _map_sample(
    store: TableStore, user_segments: DataFrame, total: int, cfg: Config
) -> pd.DataFrame:
    """About ``report.map_sample`` users with their segment and profile embedding."""
    fraction = min(1.0, cfg.report.map_sample / max(total, 1))
    return (
        user_segments.sample(fraction=fraction, seed=cfg.cluster.seed)
        .join(store.read("user_profiles").select("user_id", "embedding"), "user_id")
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
