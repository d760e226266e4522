"""The report's Plotly figures, built from ``ReportData`` on the driver.

Each function returns a figure as Plotly's JSON structure (a dict of ``data`` and
``layout``): the page embeds them and draws them with the bundled plotly.js, and a
notebook can show one with ``plotly.graph_objects.Figure(spec)``. Plain dicts, because
validating hundreds of traces through ``graph_objects`` takes seconds. Text taken from
user data (labels, keywords, item texts) is HTML-escaped before it reaches a hover label
or a legend, and passed as trace text or meta, never into a hover template.
The figures over recorded runs (sizes, movement, each segment's series) are in
``runs_figures``.
"""

from __future__ import annotations

import html
from typing import Any

import numpy as np
import pandas as pd
from plotly.colors import qualitative

from usersegments.errors import ConfigError
from usersegments.report.gather import CO_INTEREST_SEGMENTS, ReportData
from usersegments.report.text import item_title

Figure = dict[str, Any]  # Plotly's figure JSON: {"data": [...], "layout": {...}}
PALETTE = qualitative.Dark24 + qualitative.Light24
FONT = "system-ui, -apple-system, Segoe UI, Roboto, sans-serif"
HOVER_ITEMS = 3  # top items named in a map point's hover label
MARGIN = {"l": 10, "r": 10, "t": 40, "b": 10}
RED, GREEN = "#d62728", "#2ca02c"


def cluster_color(cluster_id: int) -> str:
    """The colour of a coarse cluster, the same in every figure."""
    return PALETTE[int(cluster_id) % len(PALETTE)]


def figure(data: list[dict[str, Any]], title: str, **layout: Any) -> Figure:
    """A figure with the report's title style, font and margins (the page adds the
    ``plotly_white`` template once for all figures)."""
    return {
        "data": data,
        "layout": {
            "title": {"text": title, "x": 0.01, "font": {"size": 15}},
            "font": {"family": FONT, "size": 12},
            "margin": MARGIN,
            **layout,
        },
    }


def legend_name(seg: str, label: str | None) -> str:
    """A segment's name in a legend or on an axis: its id and label, escaped, at most
    48 characters."""
    return html.escape(f"{seg} {label or ''}".strip()[:48])


def project_2d(vectors: np.ndarray, method: str = "auto", seed: int = 0) -> tuple[np.ndarray, str]:
    """Users' profiles in two dimensions and the method used: UMAP (cosine) when
    ``umap-learn`` is installed and ``method`` allows it, else PCA."""
    if method in ("auto", "umap") and len(vectors) >= 10:
        try:
            import umap  # type: ignore[import-not-found]
        except ImportError:
            if method == "umap":
                raise ConfigError(
                    "report.projection=umap needs the umap-learn package: "
                    "pip install umap-learn, or set report.projection=pca"
                ) from None
        else:
            reducer = umap.UMAP(n_components=2, metric="cosine", random_state=seed)
            return reducer.fit_transform(vectors), "UMAP"
    from threadpoolctl import threadpool_limits

    centred = vectors - vectors.mean(axis=0, keepdims=True)
    # The top eigenvectors of the d x d covariance: far cheaper than an SVD of the sample.
    # One BLAS thread: a d x d problem gains nothing from more, and on a busy driver
    # (local Spark uses every core) spinning BLAS threads made it 100 times slower.
    with threadpool_limits(limits=1, user_api="blas"):
        _, vectors_ = np.linalg.eigh(centred.T @ centred)
    axes = vectors_[:, ::-1][:, :2]
    axes *= np.sign(axes[np.abs(axes).argmax(axis=0), [0, 1]])  # a stable orientation
    return centred @ axes, "PCA"


def segment_hover(row: pd.Series, data: ReportData, described: bool) -> str:
    """A segment's hover label: label, id, size and top items (escaped)."""
    seg, size = row["segment_id"], int(row["size"])
    if not described:
        return f"{html.escape(seg)} · {size:,} users<br>(below the privacy floor: not described)"
    items = [item_title(data.item_text.get(i, i), 60) for i in list(row["top_items"])[:HOVER_ITEMS]]
    lines = [f"<b>{html.escape(row['label'] or seg)}</b>", f"{html.escape(seg)} · {size:,} users"]
    lines += [f"• {html.escape(t)}" for t in items]
    return "<br>".join(lines)


def map_figure(data: ReportData, seed: int = 0) -> tuple[Figure, int]:
    """Sampled users in 2-D, one legend entry per segment (click to hide), coloured by
    coarse cluster; the hover names the segment. Returns the figure and points drawn."""
    points, segments = data.map_points, data.segments.set_index("segment_id", drop=False)
    if len(points) < 3:
        return figure([], "Map of users (too few users to draw)"), 0
    xy, method = project_2d(
        np.vstack(points["embedding"].to_numpy()).astype(np.float64), data.projection, seed
    )
    xy = np.round(xy / (np.abs(xy).max() or 1.0), 4)  # 4 digits are plenty on screen
    order = data.segments.sort_values(["cluster_id", "segment_id"])["segment_id"].tolist()
    groups = points.groupby("segment_id").indices
    traces, seen_clusters = [], set()
    for seg in [s for s in order if s in groups]:
        row, idx = segments.loc[seg], groups[seg]
        cluster = int(row["cluster_id"])
        traces.append(
            {
                "type": "scatter",
                "mode": "markers",
                "x": xy[idx, 0].tolist(),
                "y": xy[idx, 1].tolist(),
                "name": legend_name(seg, row["label"]),
                "legendgroup": f"c{cluster}",
                "legendgrouptitle": {
                    "text": "" if cluster in seen_clusters else f"cluster {cluster}"
                },
                "marker": {"color": cluster_color(cluster), "size": 5, "opacity": 0.7},
                # The trace's meta: the segment the page opens when a point is clicked, and
                # the hover label, the same for every point (a scalar trace text is not
                # shown by a hover template; a text per point would repeat it thousands
                # of times). A value substituted into the template is not parsed again.
                "meta": [seg, segment_hover(row, data, int(row["size"]) >= data.min_segment_size)],
                "hovertemplate": "%{meta[1]}<extra></extra>",
            }
        )
        seen_clusters.add(cluster)
    drawn = sum(len(t["x"]) for t in traces)
    title = f"{drawn:,} sampled users on two {method} components, coloured by coarse cluster"
    axis = {"visible": False}
    # A legend click hides or shows that one segment, not its whole cluster's group.
    legend = {"itemsizing": "constant", "groupclick": "toggleitem"}
    layout = {"height": 640, "legend": legend, "xaxis": axis, "yaxis": axis}
    return figure(traces, title, **layout), drawn


def hierarchy_figure(data: ReportData) -> Figure:
    """Coarse clusters -> fine segments as a treemap: area = users, hover = keywords."""
    nodes: dict[str, list] = {k: [] for k in ("ids", "labels", "parents", "values", "text")}
    colors = []

    def add(node_id: str, label: str, parent: str, value: int, text: str, cluster: int) -> None:
        for key, value_ in zip(nodes, (node_id, label, parent, value, text), strict=True):
            nodes[key].append(value_)
        colors.append(cluster_color(cluster))

    for cluster, members in data.segments.groupby("cluster_id"):
        parent = f"cluster {cluster}"
        add(parent, parent, "", int(members["size"].sum()), f"{len(members)} segments", cluster)
        for _, row in members.iterrows():
            described = int(row["size"]) >= data.min_segment_size
            keywords = ", ".join(list(row["keywords"])[:8]) if described else "not described"
            name = _tile_name(row["segment_id"], row["label"] if described else None)
            add(row["segment_id"], name, parent, int(row["size"]), html.escape(keywords), cluster)
    treemap = {
        "type": "treemap",
        **nodes,
        "branchvalues": "total",
        "marker": {"colors": colors},
        "textinfo": "label+value",
        "hovertemplate": "<b>%{label}</b><br>%{value:,} users<br>%{text}<extra></extra>",
        "maxdepth": 2,
    }
    return figure([treemap], "Coarse clusters and their segments (area = users)", height=620)


def _tile_name(seg: str, label: str | None) -> str:
    """A treemap tile's name: the id in bold, then each part of the label on its own
    line (escaped), so that it fits a narrow tile at a readable size."""
    parts = [html.escape(p) for p in (label or "").split(" · ") if p]
    return "<br>".join([f"<b>{html.escape(seg)}</b>", *parts])


def ingest_figure(accepted: int, rejected_by_reason: dict[str, int]) -> Figure:
    """Bars: accepted events and rejected rows by reason (log scale)."""
    reasons = sorted(rejected_by_reason)
    names = ["accepted", *[f"rejected: {r}" for r in reasons]]
    values = [int(accepted), *[int(rejected_by_reason[r]) for r in reasons]]
    bars = {
        "type": "bar",
        "orientation": "h",
        "x": values,
        "y": names,
        "marker": {"color": [GREEN] + [RED] * len(reasons)},
        "text": [f"{v:,}" for v in values],
        # Beside each bar, never rotated inside a thin one; drawn past the axis end too.
        "textposition": "outside",
        "cliponaxis": False,
    }
    return figure(
        [bars],
        "Ingest: accepted events, rejected rows by reason",
        height=120 + 34 * len(names),
        margin={**MARGIN, "r": 60},  # room for the largest bar's figure
        xaxis={"type": "log" if reasons else "linear"},  # log: rejects are few
        yaxis={"autorange": "reversed"},
    )


def k_selection_figure(cluster_metrics: dict[str, float]) -> Figure | None:
    """Cosine silhouette per candidate k, the chosen k marked; None when k was fixed."""
    scores = sorted(
        (int(name[len("silhouette_k") :]), float(value))
        for name, value in cluster_metrics.items()
        if name.startswith("silhouette_k")
    )
    if not scores:
        return None
    ks, values = zip(*scores, strict=True)
    shapes = []
    if "k" in cluster_metrics:
        k = int(cluster_metrics["k"])
        line = {"dash": "dash", "color": RED}
        shapes.append(
            {"type": "line", "x0": k, "x1": k, "yref": "paper", "y0": 0, "y1": 1, "line": line}
        )
    return figure(
        [{"type": "scatter", "mode": "lines+markers", "x": list(ks), "y": list(values)}],
        "Choice of k (dashed: chosen)",
        height=320,
        shapes=shapes,
        xaxis={"title": {"text": "k (coarse clusters)"}},
        yaxis={"title": {"text": "cosine silhouette (sample)"}},
    )


def evaluation_figure(evaluate_metrics: dict[str, float]) -> Figure | None:
    """Grouped bars: hit rate@K and recall@K per recommender; None without an evaluation."""
    if "k" not in evaluate_metrics:
        return None
    k = int(evaluate_metrics["k"])
    strategies = ["segment", "cluster", "popularity"]
    bars = [
        {
            "type": "bar",
            "x": strategies,
            "y": [float(evaluate_metrics.get(f"{metric}@{k}.{s}", 0.0)) for s in strategies],
            "name": f"{metric.replace('_', ' ')}@{k}",
        }
        for metric in ("hit_rate", "recall")
    ]
    return figure(
        bars,
        "Held-out events found by each recommender",
        height=320,
        barmode="group",
        yaxis={"range": [0, 1]},
    )


def co_interest_figure(data: ReportData) -> Figure | None:
    """Heat map of the described segments that share users as interests: a cell = users
    with both segments among their interests, the diagonal = the segment's reach. None
    when no two segments share a user (or no interests were found)."""
    described = data.segments[data.segments["size"] >= data.min_segment_size]
    names = set(described["segment_id"])
    pairs = data.co_interest[
        data.co_interest["segment_a"].isin(names) & data.co_interest["segment_b"].isin(names)
    ]
    if pairs.empty:
        return None
    shown = sorted(set(pairs["segment_a"]) | set(pairs["segment_b"]))
    index = {s: i for i, s in enumerate(shown)}
    z = np.zeros((len(shown), len(shown)))
    for a, b, users in pairs[["segment_a", "segment_b", "users"]].itertuples(index=False):
        z[index[a], index[b]] = z[index[b], index[a]] = users
    reach = dict(zip(described["segment_id"], described.get("reach", []), strict=False))
    for s, i in index.items():
        # reach is null until the interests stage ran after the latest clustering.
        z[i, i] = int(reach[s]) if pd.notna(reach.get(s)) else 0
    labels = dict(zip(described["segment_id"], described["label"], strict=True))
    ticks = [legend_name(s, labels.get(s)) for s in shown]
    title = "Segments that share users"
    if len(described) > CO_INTEREST_SEGMENTS:
        title = (
            f"Among the {CO_INTEREST_SEGMENTS} segments of largest reach, those that share users"
        )
    title += " (users with both as interests; diagonal: reach)"
    return figure(
        [
            {
                "type": "heatmap",
                "x": ticks,
                "y": ticks,
                "z": z.tolist(),
                "colorscale": "Blues",
                "hovertemplate": "%{y}<br>%{x}<br>%{z} users<extra></extra>",
            }
        ],
        title,
        height=max(360, 22 * len(shown) + 160),
        xaxis={"tickangle": -45, "automargin": True},
        yaxis={"automargin": True, "autorange": "reversed"},
    )
