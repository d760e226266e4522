"""The page's HTML: figures formatted here, markup in ``templates/report.html.j2``.

Jinja2 autoescapes every value, so labels, keywords and item texts taken from user
data cannot inject markup into the page.
"""

from __future__ import annotations

import functools
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd

from usersegments.report.gather import ReportData
from usersegments.times import collected_utc

TEMPLATE = "report.html.j2"
STRATEGIES = ("segment", "cluster", "popularity")  # recommenders the evaluation compares
QUALITY_METRICS = (
    "silhouette_cosine",
    "davies_bouldin",
    "calinski_harabasz",
    "segment_size_min",
    "segment_size_median",
    "segment_size_max",
    "ari_cluster_vs_area",
    "nmi_cluster_vs_area",
    "ari_segment_vs_substyle",
    "nmi_segment_vs_substyle",
)
INGEST_METRICS = ("rows_read", "accepted", "rejected", "duplicates")
TIME_FORMAT = "%Y-%m-%d %H:%M:%S UTC"


@functools.cache
def _environment() -> jinja2.Environment:
    # Built on first render, not at import: notebooks import the plots without it.
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_html(data: ReportData, images: dict[str, str], generated_at: datetime) -> str:
    """The page's HTML; ``images`` maps a plot name to its file name beside the page."""
    described = data.segments[data.segments["size"] >= data.min_segment_size]
    return (
        _environment()
        .get_template(TEMPLATE)
        .render(
            segment_count=len(data.segments),
            k=int(data.cluster_metrics.get("k", 0)) or "?",
            summary=_summary_rows(data, generated_at),
            config_json=_pretty_config(data.run_row),
            images=images,
            cards=[_card(row, data) for _, row in described.iterrows()],
            undescribed=len(data.segments) - len(described),
            min_segment_size=data.min_segment_size,
            quality=[
                (n, _fmt(data.cluster_metrics[n]))
                for n in QUALITY_METRICS
                if n in data.cluster_metrics
            ],
            ingest=[
                (n, _fmt(int(data.ingest_metrics[n])))
                for n in INGEST_METRICS
                if n in data.ingest_metrics
            ],
            rejected=sorted(
                (f"rejected: {k}", f"{v:,}") for k, v in data.rejected_by_reason.items()
            ),
            evaluation=_evaluation(data.evaluate_metrics) if "evaluation" in images else None,
            movements=[(a, b, f"{n:,}") for a, b, n in data.movements],
            lineage=[
                (old, new, event, "" if sim is None else f"{sim:.3f}")
                for old, new, event, sim in data.lineage
            ],
        )
    )


def _summary_rows(data: ReportData, generated_at: datetime) -> list[tuple[str, Any]]:
    """The run summary table: the latest run, the model, table sizes, k and segments."""
    run, cm = data.run_row, data.cluster_metrics
    started = run.get("started_at", "?")
    if isinstance(started, datetime):
        started = collected_utc(started).strftime(TIME_FORMAT)
    return [
        ("run", run.get("run_id", "?")),
        ("command", run.get("command", "?")),
        ("started", started),
        ("model", data.model),
        ("report generated", generated_at.strftime(TIME_FORMAT)),
        *[(k, _fmt(v)) for k, v in data.table_rows.items()],
        ("coarse clusters (k)", _fmt(int(cm["k"])) if "k" in cm else "?"),
        ("segments", len(data.segments)),
    ]


def _pretty_config(run: dict[str, Any]) -> str | None:
    """The run's config as indented JSON with sorted keys (None when not recorded)."""
    if not run.get("config_json"):
        return None
    return json.dumps(json.loads(run["config_json"]), indent=2, sort_keys=True)


def _card(row: pd.Series, data: ReportData) -> dict[str, Any]:
    """One segment's card: label, size, cohesion, keywords, top items, recommendations."""
    seg = row["segment_id"]
    return {
        "segment_id": seg,
        "title": row["label"] or seg,
        "cluster_id": int(row["cluster_id"]),
        "size": f"{int(row['size']):,}",
        "cohesion": f"{float(row['cohesion']):.3f}",
        "keywords": list(row["keywords"]),
        "top_items": [short_text(data.item_text.get(i, i)) for i in row["top_items"]],
        "recommendations": [
            (short_text(text), f"{score:.3g}") for text, score in data.recommendations.get(seg, [])
        ],
    }


def _evaluation(em: dict[str, float]) -> dict[str, Any]:
    """The offline evaluation section: K, the holdout and hit rate and recall per recommender."""
    k = int(em["k"])
    return {
        "k": k,
        "holdout_last": int(em.get("holdout_last", 0)),
        "users_tested": f"{int(em.get('users_tested', 0)):,}",
        "rows": [
            (s, f"{em.get(f'hit_rate@{k}.{s}', 0):.3f}", f"{em.get(f'recall@{k}.{s}', 0):.3f}")
            for s in STRATEGIES
        ],
    }


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def short_text(text: str, limit: int = 90) -> str:
    """An item's title: its first sentence, cut at ``limit`` characters."""
    first = text.split(". ", 1)[0]
    return first if len(first) <= limit else first[: limit - 1].rstrip() + "…"
