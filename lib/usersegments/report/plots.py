"""The report's figures: matplotlib on whatever backend is active, each returned as PNG bytes.

``run_report`` selects the Agg backend; notebooks call these functions directly and
show the bytes inline.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pandas as pd

from usersegments.report.gather import ReportData


def report_plots(data: ReportData) -> dict[str, bytes | None]:
    """Every figure of the page by name; None for a figure with nothing to show."""
    return {
        "map": plot_map(data.map_points, data.segments),
        "sizes": plot_sizes(data.segments),
        "k_selection": plot_k_selection(data.cluster_metrics),
        "ingest": plot_ingest(
            int(data.ingest_metrics.get("accepted", data.table_rows.get("events", 0))),
            data.rejected_by_reason,
        ),
        "evaluation": plot_evaluation(data.evaluate_metrics),
    }


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
