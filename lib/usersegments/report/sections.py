"""The overview's figures and tables: key figures, clustering quality, ingest quality."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from usersegments.report.figures import (
    co_interest_figure,
    evaluation_figure,
    hierarchy_figure,
    ingest_figure,
    k_selection_figure,
    map_figure,
)
from usersegments.report.gather import ReportData
from usersegments.report.runs_figures import movement_figure, sizes_over_runs_figure
from usersegments.report.text import fmt
from usersegments.times import collected_utc

QUALITY_METRICS = {
    "silhouette_cosine": "silhouette (cosine)",
    "davies_bouldin": "Davies-Bouldin",
    "calinski_harabasz": "Calinski-Harabasz",
    "segment_size_min": "smallest segment",
    "segment_size_median": "median segment",
    "segment_size_max": "largest segment",
    # Present only when the run was given a truth table.
    "ari_cluster_vs_area": "ARI clusters vs truth areas",
    "nmi_cluster_vs_area": "NMI clusters vs truth areas",
    "ari_segment_vs_substyle": "ARI segments vs truth sub-styles",
    "nmi_segment_vs_substyle": "NMI segments vs truth sub-styles",
    "nmi_segment_vs_area": "NMI segments vs truth areas",
}
INGEST_METRICS = ("rows_read", "accepted", "rejected", "duplicates")


def report_figures(data: ReportData, seed: int = 0) -> dict[str, Any]:
    """Every page-level figure by name, for a notebook to show one by one with
    ``plotly.graph_objects.Figure(spec)``: the page's figures plus ``movement``, the Sankey
    of the last two runs (the page draws it in the browser, for any two runs). Figures with
    nothing to show are left out."""
    figures = overview_figures(data, seed)[0]
    history, last = data.history, len(data.history.runs) - 1
    if last >= 1 and {last - 1, last} <= set(history.path_runs):
        labels = _described_labels(data)
        figures["movement"] = movement_figure(history, last - 1, last, labels)
    return figures


def _described_labels(data: ReportData) -> dict[str, str]:
    """segment_id -> label of the segments at or above the privacy floor."""
    described = data.segments[data.segments["size"] >= data.min_segment_size]
    return dict(zip(described["segment_id"], described["label"], strict=True))


def overview_figures(data: ReportData, seed: int = 0) -> tuple[dict[str, Any], int]:
    """The page-level figures by name and the number of users on the map."""
    labels = _described_labels(data)
    user_map, points = map_figure(data, seed)
    figures = {
        "map": user_map,
        "hierarchy": hierarchy_figure(data),
        "sizes": sizes_over_runs_figure(data.history, labels),
        "ingest": ingest_figure(_accepted(data), data.rejected_by_reason),
        "k_selection": k_selection_figure(data.cluster_metrics),
        "evaluation": evaluation_figure(data.evaluate_metrics),
        "co_interest": co_interest_figure(data),
    }
    return {name: fig for name, fig in figures.items() if fig is not None}, points


def _accepted(data: ReportData) -> int:
    return int(data.ingest_metrics.get("accepted", data.table_rows.get("events", 0)))


def _measured(metrics: dict[str, float]) -> dict[str, float]:
    """The figures that hold a number (ARI without a truth table holds none)."""
    return {m: v for m, v in metrics.items() if v is not None and math.isfinite(v)}


def summary_rows(data: ReportData) -> list[tuple[str, str]]:
    """The overview's key figures: runs, users, events, segments, quality."""
    cm = _measured(data.cluster_metrics)
    described = int((data.segments["size"] >= data.min_segment_size).sum())
    rows = [
        ("runs so far", fmt(data.runs_total)),
        ("users segmented", fmt(data.table_rows.get("users segmented"))),
        ("events", fmt(data.table_rows.get("events"))),
        ("segments", fmt(len(data.segments))),
        ("described segments", fmt(described)),
        ("coarse clusters", fmt(int(cm["k"])) if "k" in cm else "–"),
    ]
    if "silhouette_cosine" in cm:
        rows.append(("silhouette", f"{cm['silhouette_cosine']:.3f}"))
    for metric in ("ari_cluster_vs_area", "nmi_segment_vs_substyle"):
        if metric in cm:
            rows.append((QUALITY_METRICS[metric], f"{cm[metric]:.3f}"))
    rejected = sum(data.rejected_by_reason.values())
    rows.append(("rejected input rows", fmt(rejected)))
    return rows


def quality_rows(cluster_metrics: dict[str, float]) -> list[tuple[str, str]]:
    """Clustering quality, only the figures that were measured."""
    cluster_metrics = _measured(cluster_metrics)
    return [
        (title, fmt(cluster_metrics[m]))
        for m, title in QUALITY_METRICS.items()
        if m in cluster_metrics
    ]


def ingest_rows(data: ReportData) -> list[tuple[str, str]]:
    """The latest ingest's counts, then rejected rows by reason over all runs."""
    rows = [
        (n, fmt(int(data.ingest_metrics[n]))) for n in INGEST_METRICS if n in data.ingest_metrics
    ]
    rows += sorted((f"rejected: {k}", fmt(v)) for k, v in data.rejected_by_reason.items())
    return rows


def run_details(data: ReportData) -> list[tuple[str, str]]:
    """The latest segmenting run: id, command, start time, embedding model."""
    run = data.run_row
    started = run.get("started_at")
    if isinstance(started, datetime):
        started = collected_utc(started).strftime("%Y-%m-%d %H:%M:%S UTC")
    return [
        ("run", str(run.get("run_id", "–"))),
        ("command", str(run.get("command", "–"))),
        ("started", str(started or "–")),
        ("embedding model", data.model),
    ]
