"""Report: ``<output>/report/index.html``, a self-contained page with its plots beside it.

Sections: run summary and config; segment sizes; a 2-D map of users (PCA of
a sample of profiles) coloured by coarse cluster with segment labels at their
centroids; one card per segment (label, keywords, top items, recommendations,
size, cohesion); clustering quality with the k-selection curve; ingest
quality (accepted and rejected by reason); offline evaluation when one ran.
Plots are matplotlib PNGs next to the page; the page loads nothing from the
network. Files are written through ``pyarrow.fs``, so the root may be a
local folder or an object-store URI.
"""

from __future__ import annotations

import hashlib
import html
import io
import json
import logging
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from usersegments.config import Config
from usersegments.embed import model_id
from usersegments.errors import StoreError
from usersegments.label import item_texts
from usersegments.privacy import with_texts
from usersegments.runlog import RunLog, StageResult
from usersegments.store import TableStore

log = logging.getLogger(__name__)

REPORT_DIR = "report"
CARD_RECOMMENDATIONS = 5  # recommendations shown per card; the table holds recommend.top_n
MOVEMENT_ROWS = 20  # largest flows between segments shown


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
    movements: list[tuple[str, str, int]] = field(default_factory=list)
    lineage: list[tuple[str, str, str, float | None]] = field(default_factory=list)
    min_segment_size: int = 1
    table_rows: dict[str, int] = field(default_factory=dict)


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
    return dict(zip(rows["metric"], rows["value"], strict=True))


def gather(spark: SparkSession, store: TableStore, cfg: Config) -> ReportData:
    """Read what the report needs: segments, a map sample, metrics, ingest figures."""
    for table in ("segments", "user_segments", "user_profiles", "events"):
        if not store.exists(table):
            raise StoreError(f"{table} does not exist: run `usersegments run` first")
    segments = store.read("segments").toPandas().sort_values("segment_id")
    user_segments = store.read("user_segments")
    latest_run = user_segments.agg(F.max("run_id")).first()[0]  # run ids sort by time
    total = user_segments.count()
    fraction = min(1.0, cfg.report.map_sample / max(total, 1))
    sample = (
        user_segments.sample(fraction=fraction, seed=cfg.cluster.seed)
        .join(store.read("user_profiles").select("user_id", "embedding"), "user_id")
        .select("user_id", "cluster_id", "segment_id", "embedding")
        .toPandas()
    )
    wanted = sorted({i for items in segments["top_items"] for i in items})
    recommendations: dict[str, list[tuple[str, float]]] = {}
    if store.exists("segment_recommendations"):
        recs = (
            store.read("segment_recommendations")
            .filter(F.col("rank") <= CARD_RECOMMENDATIONS)
            .select("segment_id", "rank", "item_id", "text", "score")
            .toPandas()
            .sort_values(["segment_id", "rank"])
        )
        for seg, group in recs.groupby("segment_id"):
            recommendations[seg] = [
                (str(t if t is not None else i), float(s))
                for i, t, s in zip(group["item_id"], group["text"], group["score"], strict=True)
            ]
    events = store.read("events")
    shown = events.filter(F.col("item_id").isin(wanted))
    texts = {r["item_id"]: r["text"] for r in item_texts(with_texts(store, shown)).collect()}
    metrics = store.read("run_metrics").toPandas() if store.exists("run_metrics") else None
    empty = pd.DataFrame(columns=["run_id", "stage", "metric", "value", "recorded_at"])
    metrics = metrics if metrics is not None else empty
    rejected: dict[str, int] = {}
    if store.exists("events_rejected"):
        rejected = {
            r["reject_reason"]: int(r["rows"])
            for r in store.read("events_rejected")
            .groupBy("reject_reason")
            .agg(F.sum("occurrences").alias("rows"))
            .collect()
        }
    run_row: dict[str, Any] = {}
    if store.exists("runs"):
        found = store.read("runs").filter(F.col("run_id") == latest_run).collect()
        run_row = found[0].asDict() if found else {}
    labels = dict(zip(segments["segment_id"], segments["label"], strict=True))
    return ReportData(
        movements=_movements(store, labels),
        lineage=_lineage(store),
        segments=segments,
        map_points=sample,
        item_text=texts,
        recommendations=recommendations,
        # An update's re-clustering records only a few cluster figures: the quality
        # section shows the latest full clustering's.
        cluster_metrics=_latest_metrics(metrics, "cluster", "silhouette_cosine"),
        ingest_metrics=_latest_metrics(metrics, "ingest"),
        rejected_by_reason=rejected,
        evaluate_metrics=_latest_metrics(metrics, "evaluate"),
        run_row=run_row,
        model=run_row.get("model_id") or model_id(cfg.embed),
        table_rows={"users segmented": total, "events": events.count()},
        min_segment_size=cfg.privacy.min_segment_size,
    )


def _movements(store: TableStore, labels: dict[str, str]) -> list[tuple[str, str, int]]:
    """The largest flows between segments recorded in segment_history (closed rows)."""
    if not store.exists("segment_history"):
        return []
    history = store.read("segment_history")
    closed = history.filter(F.col("valid_to").isNotNull()).select(
        "user_id", F.col("segment_id").alias("from_segment"), F.col("valid_to").alias("at")
    )
    following = history.select(
        "user_id", F.col("segment_id").alias("to_segment"), F.col("valid_from").alias("at")
    )
    flows = (
        closed.join(following, ["user_id", "at"])
        .groupBy("from_segment", "to_segment")
        .agg(F.count(F.lit(1)).alias("users"))
        .orderBy(F.desc("users"), "from_segment", "to_segment")
        .limit(MOVEMENT_ROWS)
        .collect()
    )

    def name(seg: str) -> str:
        return f"{seg} {labels[seg]}" if labels.get(seg) else seg

    return [(name(r["from_segment"]), name(r["to_segment"]), int(r["users"])) for r in flows]


def _lineage(store: TableStore) -> list[tuple[str, str, str, float | None]]:
    """The segment lineage of the latest re-clustering, if any."""
    if not store.exists("segment_lineage"):
        return []
    lineage = store.read("segment_lineage")
    latest = lineage.agg(F.max("recorded_at")).first()[0]
    rows = lineage.filter(F.col("recorded_at") == latest).orderBy("event", "old_segment_id")
    return [
        (r["old_segment_id"] or "-", r["new_segment_id"] or "-", r["event"], r["similarity"])
        for r in rows.collect()
        if r["event"] != "continued"
    ]


# ---------------------------------------------------------------------------
# Plots (matplotlib, Agg backend; each returns PNG bytes)


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _cluster_colors(cluster_ids: Any) -> Any:
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    return [cmap(int(c) % 20) for c in cluster_ids]


def plot_sizes(segments: pd.DataFrame) -> bytes:
    """Horizontal bars: users per segment, coloured by coarse cluster."""
    import matplotlib.pyplot as plt

    ordered = segments.sort_values("size")
    height = max(2.5, 0.22 * len(ordered) + 1)
    fig, ax = plt.subplots(figsize=(8, height))
    names = [f"{s}  {lab}" for s, lab in zip(ordered["segment_id"], ordered["label"], strict=True)]
    ax.barh(names, ordered["size"], color=_cluster_colors(ordered["cluster_id"]))
    ax.set_xlabel("users")
    ax.set_title("Users per segment (colour = coarse cluster)")
    ax.tick_params(axis="y", labelsize=7)
    return _png(fig)


def project_2d(vectors: np.ndarray) -> np.ndarray:
    """PCA to two dimensions (UMAP is not needed for a readable overview)."""
    centred = vectors - vectors.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:2].T


def plot_map(points: pd.DataFrame, segments: pd.DataFrame) -> bytes:
    """Users in 2-D (PCA), coloured by coarse cluster, segment labels at centroids."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 7))
    if len(points) >= 3:
        xy = project_2d(np.vstack(points["embedding"].to_numpy()).astype(np.float64))
        ax.scatter(xy[:, 0], xy[:, 1], s=6, alpha=0.55, c=_cluster_colors(points["cluster_id"]))
        labels = dict(zip(segments["segment_id"], segments["label"], strict=True))
        for seg, idx in points.groupby("segment_id").indices.items():
            cx, cy = xy[idx].mean(axis=0)
            ax.annotate(
                labels.get(seg) or seg,
                (cx, cy),
                fontsize=6,
                ha="center",
                bbox={"boxstyle": "round,pad=0.15", "fc": "white", "alpha": 0.7, "lw": 0},
            )
    ax.set_title(f"Users on the first two principal components ({len(points)} sampled)")
    ax.set_xticks([])
    ax.set_yticks([])
    return _png(fig)


def plot_k_selection(cluster_metrics: dict[str, float]) -> bytes | None:
    """Cosine silhouette of each candidate k, the chosen k marked; None when k was fixed."""
    import matplotlib.pyplot as plt

    scores = sorted(
        (int(name[len("silhouette_k") :]), value)
        for name, value in cluster_metrics.items()
        if name.startswith("silhouette_k")
    )
    if not scores:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ks, values = zip(*scores, strict=True)
    ax.plot(ks, values, marker="o")
    chosen = cluster_metrics.get("k")
    if chosen is not None:
        ax.axvline(chosen, color="tab:red", linestyle="--", label=f"chosen k = {int(chosen)}")
        ax.legend()
    ax.set_xlabel("k (coarse clusters)")
    ax.set_ylabel("cosine silhouette (sample)")
    ax.set_title("Choice of k")
    return _png(fig)


def plot_ingest(accepted: int, rejected_by_reason: dict[str, int]) -> bytes:
    """Bars: accepted events and rejected rows by reason (log scale)."""
    import matplotlib.pyplot as plt

    names = ["accepted", *[f"rejected: {r}" for r in sorted(rejected_by_reason)]]
    values = [accepted, *[rejected_by_reason[r] for r in sorted(rejected_by_reason)]]
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(names) + 1.2))
    colors = ["tab:green"] + ["tab:red"] * (len(names) - 1)
    ax.barh(names, values, color=colors)
    ax.set_xscale("log")
    for y, v in enumerate(values):
        ax.text(v, y, f" {v:,}", va="center", fontsize=8)
    ax.set_title("Ingest: accepted events and rejected rows (log scale)")
    return _png(fig)


def plot_evaluation(evaluate_metrics: dict[str, float]) -> bytes | None:
    """Grouped bars: hit rate@K and recall@K per strategy; None when no evaluation ran."""
    import matplotlib.pyplot as plt

    k = evaluate_metrics.get("k")
    if k is None:
        return None
    k = int(k)
    strategies = ["segment", "cluster", "popularity"]
    hit = [evaluate_metrics.get(f"hit_rate@{k}.{s}", 0.0) for s in strategies]
    recall = [evaluate_metrics.get(f"recall@{k}.{s}", 0.0) for s in strategies]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    x = np.arange(len(strategies))
    ax.bar(x - 0.2, hit, width=0.4, label=f"hit rate@{k}")
    ax.bar(x + 0.2, recall, width=0.4, label=f"recall@{k}")
    ax.set_xticks(x, strategies)
    ax.set_ylim(0, 1)
    ax.legend()
    ax.set_title("Held-out events found by each recommender")
    return _png(fig)


# ---------------------------------------------------------------------------
# Page


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;
max-width:1100px;color:#222;padding:0 1rem}
h1{margin-bottom:.2rem} h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0} td,th{border:1px solid #ddd;padding:.25rem .6rem;
text-align:left;font-size:.9rem} th{background:#f5f5f5}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(320px,1fr));gap:1rem}
.card{border:1px solid #ddd;border-radius:8px;padding:.8rem 1rem;background:#fcfcfc}
.card h3{margin:.1rem 0 .4rem;font-size:1.05rem} .muted{color:#777;font-size:.85rem}
.kw{display:inline-block;background:#eef3fb;border-radius:4px;padding:0 .35rem;margin:.1rem;
font-size:.85rem} .card ol{margin:.3rem 0 .3rem 1.2rem;padding:0;font-size:.85rem}
img{max-width:100%} pre{background:#f7f7f7;padding:.6rem;overflow:auto;font-size:.8rem}
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _metric_table(rows: list[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def short_text(text: str, limit: int = 90) -> str:
    """An item's title: its first sentence, cut at ``limit`` characters."""
    first = text.split(". ", 1)[0]
    return first if len(first) <= limit else first[: limit - 1].rstrip() + "…"


def segment_card(row: pd.Series, data: ReportData) -> str:
    """One segment's card: label, size, cohesion, keywords, top items, recommendations."""
    seg = row["segment_id"]
    keywords = "".join(f'<span class="kw">{_e(k)}</span>' for k in row["keywords"])
    items = "".join(
        f"<li>{_e(short_text(data.item_text.get(i, i)))}</li>" for i in row["top_items"]
    )
    recs = "".join(
        f"<li>{_e(short_text(text))} <span class='muted'>({score:.3g})</span></li>"
        for text, score in data.recommendations.get(seg, [])
    )
    return (
        f'<div class="card" id="seg-{_e(seg)}"><h3>{_e(row["label"] or seg)}</h3>'
        f'<div class="muted">{_e(seg)} · cluster {int(row["cluster_id"])} · '
        f"{int(row['size']):,} users · cohesion {float(row['cohesion']):.3f}</div>"
        f"<p>{keywords or '<span class=muted>no keywords</span>'}</p>"
        f"<div class='muted'>representative items</div><ol>{items}</ol>"
        f"<div class='muted'>recommended now</div><ol>{recs}</ol></div>"
    )


def render_html(data: ReportData, images: dict[str, str], generated_at: datetime) -> str:
    """The page's HTML; ``images`` maps a plot name to its file name beside the page."""
    cm, im, em = data.cluster_metrics, data.ingest_metrics, data.evaluate_metrics
    run = data.run_row
    described = data.segments[data.segments["size"] >= data.min_segment_size]
    summary = [
        ("run", run.get("run_id", "?")),
        ("command", run.get("command", "?")),
        ("started", run.get("started_at", "?")),
        ("model", data.model),
        ("report generated", generated_at.strftime("%Y-%m-%d %H:%M:%S UTC")),
        *[(k, _fmt(v)) for k, v in data.table_rows.items()],
        ("coarse clusters (k)", _fmt(int(cm["k"])) if "k" in cm else "?"),
        ("segments", len(data.segments)),
    ]
    quality_names = [
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
    ]
    quality = [(n, _fmt(cm[n])) for n in quality_names if n in cm]
    ingest = [
        (n, _fmt(int(im[n])))
        for n in ("rows_read", "accepted", "rejected", "duplicates")
        if n in im
    ]
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<title>usersegments report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>usersegments report</h1>",
        f"<p class='muted'>{len(data.segments)} segments in "
        f"{int(cm.get('k', 0)) or '?'} coarse clusters</p>",
        "<h2 id='summary'>Run summary</h2>",
        _metric_table(summary),
    ]
    if run.get("config_json"):
        pretty = json.dumps(json.loads(run["config_json"]), indent=2, sort_keys=True)
        parts.append(f"<details><summary>config</summary><pre>{_e(pretty)}</pre></details>")
    parts += [
        "<h2 id='map'>Map of users</h2>",
        f"<img src='{images['map']}' alt='2-D map of users coloured by cluster'>",
        "<h2 id='sizes'>Segment sizes</h2>",
        f"<img src='{images['sizes']}' alt='users per segment'>",
        "<h2 id='segments'>Segments</h2><div class='cards'>",
        *[segment_card(row, data) for _, row in described.iterrows()],
        "</div>",
        *(
            [
                f"<p>{len(data.segments) - len(described)} segments smaller than "
                f"privacy.min_segment_size ({data.min_segment_size} users) are not described.</p>"
            ]
            if len(described) < len(data.segments)
            else []
        ),
        "<h2 id='quality'>Clustering quality</h2>",
        _metric_table(quality),
    ]
    if "k_selection" in images:
        parts.append(f"<img src='{images['k_selection']}' alt='silhouette per k'>")
    parts += [
        "<h2 id='ingest'>Ingest quality</h2>",
        "<p class='muted'>the latest ingest run; rejected rows by reason over all runs "
        "(events_rejected)</p>",
        _metric_table(ingest) if ingest else "",
        _metric_table(
            sorted((f"rejected: {k}", f"{v:,}") for k, v in data.rejected_by_reason.items())
        ),
        f"<img src='{images['ingest']}' alt='accepted and rejected rows'>",
    ]
    if "evaluation" in images:
        k = int(em["k"])
        rows = [
            (
                s,
                f"{em.get(f'hit_rate@{k}.{s}', 0):.3f}",
                f"{em.get(f'recall@{k}.{s}', 0):.3f}",
            )
            for s in ("segment", "cluster", "popularity")
        ]
        body = "".join(f"<tr><th>{_e(a)}</th><td>{b}</td><td>{c}</td></tr>" for a, b, c in rows)
        parts += [
            "<h2 id='evaluation'>Offline evaluation</h2>",
            f"<p class='muted'>each user's last {int(em.get('holdout_last', 0))} events held out; "
            f"{int(em.get('users_tested', 0)):,} users tested</p>",
            f"<table><tr><th>recommender</th><th>hit rate@{k}</th><th>recall@{k}</th></tr>"
            f"{body}</table>",
            f"<img src='{images['evaluation']}' alt='hit rate and recall per recommender'>",
        ]
    if data.movements:
        body = "".join(
            f"<tr><td>{_e(a)}</td><td>{_e(b)}</td><td>{n:,}</td></tr>" for a, b, n in data.movements
        )
        parts += [
            "<h2 id='movement'>Movement between segments</h2>",
            "<p class='muted'>users whose segment changed in updates (segment_history), "
            "largest flows first</p>",
            f"<table><tr><th>from</th><th>to</th><th>users</th></tr>{body}</table>",
        ]
    if data.lineage:
        body = "".join(
            f"<tr><td>{_e(o)}</td><td>{_e(n)}</td><td>{_e(ev)}</td>"
            f"<td>{'' if sim is None else f'{sim:.3f}'}</td></tr>"
            for o, n, ev, sim in data.lineage
        )
        parts += [
            "<h2 id='lineage'>Latest re-clustering</h2>",
            "<table><tr><th>old</th><th>new</th><th>event</th><th>similarity</th></tr>"
            f"{body}</table>",
        ]
    parts.append("</body></html>")
    return "\n".join(parts)


def _filesystem(root: str) -> tuple[Any, str]:
    from pyarrow import fs

    if "://" in root:
        return fs.FileSystem.from_uri(root)
    return fs.LocalFileSystem(), os.path.abspath(root)


def write_report(store: TableStore, data: ReportData) -> str:
    """Render the plots and the page under ``<root>/report/``; returns the page's path.

    A crash half-way never leaves a page pointing at the wrong plots: images are named
    by their content and written first, the page replaces the old one in one step
    (a rename on local disks, a single object PUT on object stores), and only then
    are the images no page names any more removed.
    """
    plots = {
        "map": plot_map(data.map_points, data.segments),
        "sizes": plot_sizes(data.segments),
        "k_selection": plot_k_selection(data.cluster_metrics),
        "ingest": plot_ingest(
            int(data.ingest_metrics.get("accepted", data.table_rows.get("events", 0))),
            data.rejected_by_reason,
        ),
        "evaluation": plot_evaluation(data.evaluate_metrics),
    }
    images = {
        name: f"{name}-{hashlib.sha256(png).hexdigest()[:12]}.png"
        for name, png in plots.items()
        if png
    }
    page = render_html(data, images, datetime.now(timezone.utc))
    filesystem, root = _filesystem(store.root)
    folder = f"{root.rstrip('/')}/{REPORT_DIR}"
    filesystem.create_dir(folder, recursive=True)
    for name, png in plots.items():
        if png:
            with filesystem.open_output_stream(f"{folder}/{images[name]}") as out:
                out.write(png)
    index = f"{folder}/index.html"
    if "://" in store.root:
        with filesystem.open_output_stream(index) as out:
            out.write(page.encode("utf-8"))
    else:
        staged = f"{folder}/.index.html.{os.getpid()}.tmp"
        with filesystem.open_output_stream(staged) as out:
            out.write(page.encode("utf-8"))
        filesystem.move(staged, index)
    _remove_unused_images(filesystem, folder, set(images.values()))
    return index if "://" not in store.root else f"{store.root.rstrip('/')}/{REPORT_DIR}/index.html"


def _remove_unused_images(filesystem: Any, folder: str, used: set[str]) -> None:
    from pyarrow import fs

    for info in filesystem.get_file_info(fs.FileSelector(folder)):
        if info.base_name.endswith(".png") and info.base_name not in used:
            filesystem.delete_file(info.path)


def run_report(spark: SparkSession, store: TableStore, cfg: Config, run: RunLog) -> StageResult:
    """Write ``<output>/report/index.html`` from the current tables."""
    if not cfg.report.enabled:
        log.info("report: disabled (report.enabled=false)")
        return StageResult(stage="report", metrics={"report_written": 0})
    import matplotlib

    matplotlib.use("Agg")
    data = gather(spark, store, cfg)
    path = write_report(store, data)
    metrics = {
        "report_written": 1,
        "segments_shown": len(data.segments),
        "map_users": len(data.map_points),
    }
    run.record_all("report", metrics)
    log.info("report: %s", path)
    return StageResult(stage="report", metrics=metrics, path=path)
