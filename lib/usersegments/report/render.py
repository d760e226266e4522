"""The page's HTML: figures and texts prepared here, markup in ``templates/report.html.j2``.

Jinja2 autoescapes every value, so labels, keywords and item texts taken from user
data cannot inject markup into the page; the figures and the movement paths travel as
one JSON block (``tojson`` escapes ``<``, ``>``, ``&`` and quotes) that the page's script
draws with plotly.js.
"""

from __future__ import annotations

import functools
import html
import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd

from usersegments.report.changes import changes
from usersegments.report.figures import cluster_color
from usersegments.report.gather import ReportData
from usersegments.report.history import drift_series, flows
from usersegments.report.runs_figures import SANKEY, segment_figure_frames, segment_series
from usersegments.report.sections import (
    ingest_rows,
    overview_figures,
    quality_rows,
    run_details,
    summary_rows,
)
from usersegments.report.text import fmt, item_title

TEMPLATE = "report.html.j2"
TEMPLATE_NAME = "plotly_white"  # the figures' Plotly template, sent once with the page
FLOW_ROWS = 8  # inflow and outflow rows on a segment page
STRATEGIES = ("segment", "cluster", "popularity")  # recommenders the evaluation compares


@dataclass
class Rendered:
    """The page's HTML and what it shows (the tests and the stage read the counts)."""

    html: str
    map_points: int
    figures: list[str]


@functools.cache
def _environment() -> jinja2.Environment:
    # Built on first render, not at import: notebooks import the figures without it.
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


PAGES = ("overview", "map", "hierarchy", "segments", "movement", "quality")


def render_html(
    data: ReportData,
    generated_at: datetime,
    plotly_src: str | None,
    seed: int = 0,
    start_page: str = "overview",
) -> Rendered:
    """The page; ``plotly_src`` is the bundled plotly.js beside it (None: the script is
    inlined, for a page shown without its folder, e.g. ``displayHTML`` on Databricks);
    ``start_page`` is the page shown when the address names none (one of ``PAGES`` or
    ``segment/<id>``)."""
    from threadpoolctl import threadpool_limits

    if start_page not in PAGES and not start_page.startswith("segment/"):
        raise ValueError(f"start_page must be one of {PAGES} or segment/<id>, not {start_page!r}")
    # Small matrices only: BLAS threads competing with a local Spark's cores made the
    # page ten times slower to build on a busy driver.
    with threadpool_limits(limits=1, user_api="blas"):
        return _render(data, generated_at, plotly_src, seed, start_page)


def _render(
    data: ReportData, generated_at: datetime, plotly_src: str | None, seed: int, start_page: str
) -> Rendered:
    figures, map_points = overview_figures(data, seed)
    described = data.segments[data.segments["size"] >= data.min_segment_size]
    names = set(described["segment_id"])
    pages = _segment_pages(data, described)
    payload = {
        "figures": figures,
        # Every segment page's figures: the frames once, each segment's values apart.
        "segment_frames": segment_figure_frames(data.history),
        "segments": {p["segment_id"]: {"series": p.pop("series")} for p in pages},
        "movement": _movement_payload(data, names),
        "template": _template_json(),
    }
    html = (
        _environment()
        .get_template(TEMPLATE)
        .render(
            plotly_src=plotly_src,
            start_page=start_page,
            plotly_inline=None if plotly_src else _plotly_js(),
            payload=payload,
            generated=generated_at.strftime("%Y-%m-%d %H:%M UTC"),
            kpis=summary_rows(data),
            changes=changes(data.history, names, data.change_min_share),
            first_run=len(data.history.runs) < 2,
            run_rows=_run_rows(data),
            pages=pages,
            undescribed=len(data.segments) - len(described),
            min_segment_size=data.min_segment_size,
            map_points=map_points,
            quality=quality_rows(data.cluster_metrics),
            ingest=ingest_rows(data),
            evaluation=_evaluation(data.evaluate_metrics),
            lineage=[
                (old, new, event, "" if sim is None else f"{sim:.3f}")
                for old, new, event, sim in data.lineage
            ],
            config_json=_pretty_config(data.run_row),
            run_details=run_details(data),
        )
    )
    return Rendered(html=html, map_points=map_points, figures=sorted(figures))


@functools.cache
def _template_json() -> Any:
    """The Plotly template every figure uses, as plotly ships it (read, not built:
    building it through graph_objects takes seconds)."""
    from importlib.resources import files

    path = files("plotly") / "package_data" / "templates" / f"{TEMPLATE_NAME}.json"
    return json.loads(path.read_text(encoding="utf-8"))


@functools.cache
def _plotly_js() -> str:
    from plotly.offline import get_plotlyjs

    return get_plotlyjs().replace("</script", "<\\/script")  # inlined: cannot end the tag


def _segment_pages(data: ReportData, described: pd.DataFrame) -> list[dict[str, Any]]:
    """Every described segment's page; what they share (moves, snapshots) computed once."""
    history = data.history
    moved = _latest_moves(data)
    labels = dict(zip(data.segments["segment_id"], data.segments["label"], strict=True))
    snapshots = dict(tuple(history.snapshots.groupby("segment_id")))
    drift = drift_series(history.snapshots)  # every segment's at once
    inflow = dict(tuple(moved.groupby("target")))
    outflow = dict(tuple(moved.groupby("source")))
    empty = moved.iloc[0:0]

    def flow_rows(frame: pd.DataFrame, column: str) -> list[tuple]:
        top = sorted(zip(frame[column], frame["users"], strict=True), key=lambda r: -r[1])
        return [
            (s, labels.get(s) or "", fmt(int(u))) if isinstance(s, str) else (None, "", fmt(int(u)))
            for s, u in top[:FLOW_ROWS]
        ]

    pages = []
    for _, row in described.iterrows():
        seg = row["segment_id"]
        rows = snapshots.get(seg, history.snapshots.iloc[0:0])
        page = _segment_page(row, data)
        sizes = rows["size"].tolist()
        page["size_trend"] = " → ".join(fmt(int(s)) for s in sizes[-4:]) if len(sizes) > 1 else ""
        page["inflow"] = flow_rows(inflow.get(seg, empty), "source")
        page["outflow"] = flow_rows(outflow.get(seg, empty), "target")
        page["series"] = segment_series(history, seg, rows, drift.get(seg, [])) if sizes else {}
        pages.append(page)
    return pages


def _segment_page(row: pd.Series, data: ReportData) -> dict[str, Any]:
    """One segment's texts: label, keywords, representative items, recommendations."""
    seg = row["segment_id"]
    items = [item_title(data.item_text.get(i, i)) for i in row["top_items"]]
    recommended = [(item_title(text), score) for text, score in data.recommendations.get(seg, [])]
    # The search box matches the segment's id, label, keywords and every item text shown.
    searched = [seg, row["label"] or "", *row["keywords"], *items, *(t for t, _ in recommended)]
    return {
        "segment_id": seg,
        "title": row["label"] or seg,
        "cluster_id": int(row["cluster_id"]),
        "color": cluster_color(int(row["cluster_id"])),
        "size": fmt(int(row["size"])),
        # Users with the segment as one of their interests (null before the interests stage).
        "reach": fmt(int(row["reach"])) if pd.notna(row.get("reach")) else "–",
        "cohesion": f"{float(row['cohesion']):.3f}",
        "keywords": list(row["keywords"]),
        "top_items": list(dict.fromkeys(items)),
        "recommendations": [(text, f"{score:.3g}") for text, score in recommended],
        "search": " ".join(searched).casefold(),
    }


def _latest_moves(data: ReportData) -> pd.DataFrame:
    """Users who changed segment from the previous run to the latest: source, target,
    users (source None = not segmented before)."""
    history = data.history
    last = len(history.runs) - 1
    if last < 1 or last - 1 not in history.path_runs:
        return pd.DataFrame({"source": [], "target": [], "users": []})
    moved = flows(history, last - 1, last)
    return moved[moved["source"].astype(str) != moved["target"].astype(str)]


def _movement_payload(data: ReportData, described: set[str]) -> dict[str, Any]:
    """The paths the page's Sankey is drawn from: segment index per run (-1 = absent)."""
    history = data.history
    segs = sorted({s for path, _ in history.paths for s in path if s is not None})
    index = {s: i for i, s in enumerate(segs)}
    labels = dict(zip(history.snapshots["segment_id"], history.snapshots["label"], strict=False))
    clusters = dict(
        zip(history.snapshots["segment_id"], history.snapshots["cluster_id"], strict=False)
    )
    return {
        "runs": history.names,
        "path_runs": history.path_runs,
        "segments": segs,
        "names": [
            html.escape(f"{s} {labels.get(s) or ''}".strip() if s in described else s) for s in segs
        ],
        "colors": [cluster_color(int(clusters.get(s, 0))) for s in segs],
        # Each segment's coarse cluster (its latest), for the Sankey grouped by cluster.
        "clusters": [int(clusters.get(s, 0)) for s in segs],
        "cluster_colors": {int(c): cluster_color(int(c)) for c in set(clusters.values())},
        "paths": [[index[s] if s is not None else -1 for s in p] + [n] for p, n in history.paths],
        "sankey": SANKEY,
    }


def _run_rows(data: ReportData) -> list[tuple[str, str, str]]:
    """The runs on the timeline, newest first: name, run id, segments."""
    snaps = data.history.snapshots
    history = data.history
    rows = [
        (name, run.run_id, fmt(int((snaps["run"] == i).sum())))
        for i, (name, run) in enumerate(zip(history.names, history.runs, strict=True))
    ]
    return rows[::-1]


def _pretty_config(run: dict[str, Any]) -> str | None:
    """The run's config as indented JSON with sorted keys (None when not recorded)."""
    if not run.get("config_json"):
        return None
    return json.dumps(json.loads(run["config_json"]), indent=2, sort_keys=True)


def _evaluation(em: dict[str, float]) -> dict[str, Any] | None:
    """The offline evaluation: K, the holdout and hit rate and recall per recommender."""
    if "k" not in em:
        return None
    k = int(em["k"])
    return {
        "k": k,
        "holdout_last": int(em.get("holdout_last", 0)),
        "users_tested": fmt(int(em.get("users_tested", 0))),
        "rows": [
            (s, f"{em.get(f'hit_rate@{k}.{s}', 0):.3f}", f"{em.get(f'recall@{k}.{s}', 0):.3f}")
            for s in STRATEGIES
        ],
    }
