"""The report's figures over the recorded runs: users per segment over runs, the
movement between two runs (a Sankey diagram), and each segment's size and drift
series (one shared figure frame, filled per segment by the page's script). Plotly
JSON structures, escaped as in ``figures``.
"""

from __future__ import annotations

import html
from typing import Any

import pandas as pd

from usersegments.report.figures import MARGIN, Figure, cluster_color, figure, legend_name
from usersegments.report.history import History, drift_series, flows


def sizes_over_runs_figure(history: History, labels: dict[str, str]) -> Figure | None:
    """Stacked areas: users per segment in every run (None with no history)."""
    snaps = history.snapshots
    if snaps.empty:
        return None
    runs = history.names
    numbers = list(range(1, len(runs) + 1))
    clusters = snaps.groupby("segment_id")["cluster_id"].last()
    traces = []
    for seg, rows in snaps.groupby("segment_id"):
        sizes = dict(zip(rows["run"], rows["size"], strict=True))
        traces.append(
            {
                "type": "scatter",
                "x": numbers,
                "y": [int(sizes.get(i, 0)) for i in range(len(runs))],
                "name": legend_name(str(seg), labels.get(seg)),
                "stackgroup": "sizes",
                "line": {"width": 0.5, "color": cluster_color(int(clusters[seg]))},
                "hovertemplate": f"{html.escape(str(seg))}: %{{y:,}} users<extra></extra>",
            }
        )
    # Run numbers as x, their names once as tick labels (not repeated in every trace).
    xaxis = {"tickvals": numbers, "ticktext": runs, "automargin": True}
    return figure(traces, "Users per segment over runs", height=480, hovermode="x", xaxis=xaxis)


# The Sankey's node labels sit beside their node, centred on it: a label drawn only for
# a node at least one text line tall stays within its node's height, so two labels never
# overlap (smaller nodes are named in their hover). The page's script (report.js.j2)
# applies the same rule with these numbers, sent with the page.
SANKEY = {
    "font": 11,
    "line_px": 14,  # the height one label line needs at that font size
    "min_height": 560,
    "max_height": 1600,
    "px_per_node": 18,  # figure height per node on the fuller side, plus "extra"
    "extra": 200,
    "pad": 6,  # px between nodes, "crowded_pad" above "crowded" nodes on a side
    "crowded": 40,
    "crowded_pad": 3,
    "margin": MARGIN,
}


def sankey_size(nodes_per_side: int) -> tuple[int, int]:
    """Figure height and node padding (px) for a Sankey with this many nodes on its
    fuller side: taller with more nodes (within bounds), padding thinner when crowded."""
    height = SANKEY["px_per_node"] * nodes_per_side + SANKEY["extra"]
    height = min(SANKEY["max_height"], max(SANKEY["min_height"], height))
    pad = SANKEY["pad"] if nodes_per_side <= SANKEY["crowded"] else SANKEY["crowded_pad"]
    return height, pad


def sankey_labels(
    names: list[str], values: list[int], nodes_per_side: int, height: int, pad: int
) -> list[str]:
    """The node labels drawn: a node's name when it is at least one line (``line_px``) tall,
    else "". Plotly scales every node by ``(plot height - pads) / users on a side``;
    both sides hold the same users."""
    total = max(sum(values) / 2, 1)  # every user is counted once on each side
    plot = height - MARGIN["t"] - MARGIN["b"] - pad * (nodes_per_side - 1)
    px_per_user = max(plot, 0) / total
    line = SANKEY["line_px"]
    return [n if v * px_per_user >= line else "" for n, v in zip(names, values, strict=True)]


def movement_figure(history: History, a: int, b: int, labels: dict[str, str]) -> Figure:
    """Sankey of users from the segments of run ``a`` to those of run ``b`` (notebooks;
    the page's script draws the same from the paths for any two runs chosen)."""
    moved = flows(history, a, b)
    # Users absent from a run (None; NaN once grouped) sort first, as "not segmented".
    absent = ""
    moved = moved.assign(
        source=[absent if pd.isna(s) else str(s) for s in moved["source"]],
        target=[absent if pd.isna(t) else str(t) for t in moved["target"]],
    )
    left = sorted(set(moved["source"]))
    right = sorted(set(moved["target"]))

    def name(seg: str) -> str:
        return "not segmented" if seg == absent else legend_name(seg, labels.get(seg))

    names = [name(s) for s in left + right]
    values = [int(moved.loc[moved["source"] == s, "users"].sum()) for s in left]
    values += [int(moved.loc[moved["target"] == t, "users"].sum()) for t in right]
    height, pad = sankey_size(max(len(left), len(right)))
    sankey = {
        "type": "sankey",
        "node": {
            "label": sankey_labels(names, values, max(len(left), len(right)), height, pad),
            "customdata": names,
            "hovertemplate": "%{customdata}<br>%{value:,} users<extra></extra>",
            "pad": pad,
            "thickness": 14,
        },
        "link": {
            "source": [left.index(s) for s in moved["source"]],
            "target": [len(left) + right.index(t) for t in moved["target"]],
            "value": [int(u) for u in moved["users"]],
        },
        "textfont": {"size": SANKEY["font"]},
    }
    title = f"Users from {history.names[a]} to {history.names[b]}"
    return figure([sankey], title, height=height)


def segment_figure_frames(history: History) -> dict[str, Figure]:
    """The two figures of every segment page without their values: ``size`` (users, and
    reach when the runs recorded it) and ``drift``. The page carries them once and fills
    in each segment's series (``fill_segment_figures``; the page's script does the same),
    so a thousand segments do not repeat the run names and layouts a thousand times."""
    names = history.names
    if not names:
        return {}
    lines = [_line(names, "users")] + ([_line(names, "reach")] if history.reach else [])
    # Runs by number on the axis (the full names, long, in the hover).
    small = {
        "height": 260,
        "showlegend": len(lines) > 1,
        "xaxis": {"title": {"text": "run"}, "dtick": 1},
    }
    return {
        "size": figure(lines, "Size over runs", **small),
        "drift": figure(
            [_line(names, "drift")],
            "Centroid drift from its first run",
            yaxis={"title": {"text": "cosine distance"}, "rangemode": "tozero"},
            **small,
        ),
    }


def segment_series(
    history: History, seg: str, rows: pd.DataFrame, drift: list[float | None]
) -> dict[str, list]:
    """A segment's values in each run by line name: users, reach (when the runs recorded
    it) and centroid drift (``history.drift_series``); None where it was absent."""
    runs = range(len(history.names))
    sizes = dict(zip(rows["run"], rows["size"], strict=True))
    series: dict[str, list] = {"users": [_int(sizes.get(i)) for i in runs], "drift": drift}
    if history.reach:
        series["reach"] = [history.reach.get((i, seg)) for i in runs]
    return series


def fill_segment_figures(frames: dict[str, Figure], series: dict[str, list]) -> dict[str, Figure]:
    """``frames`` with each line's values from ``series`` by the line's name; a line with
    no value in any run is left out, and a figure left with no line."""
    figures = {}
    for key, frame in frames.items():
        lines = [
            {**line, "y": series[line["name"]]}
            for line in frame["data"]
            if any(v is not None for v in series.get(line["name"], []))
        ]
        if lines:
            figures[key] = {**frame, "data": lines}
    return figures


def segment_figures(
    history: History, seg: str, rows: pd.DataFrame | None = None
) -> dict[str, Figure]:
    """One segment's figures over runs: users, reach (when known) and centroid drift
    (notebooks; the page fills the shared frames); ``rows``: the segment's snapshots when
    the caller already has them."""
    if rows is None:
        rows = history.snapshots[history.snapshots["segment_id"] == seg]
    if not history.names or rows.empty:
        return {}
    drift = drift_series(rows).get(seg, [])
    series = segment_series(history, seg, rows, drift)
    return fill_segment_figures(segment_figure_frames(history), series)


def _line(names: list, name: str) -> dict[str, Any]:
    """A line over runs, its values to fill in: x = run number, the run's name in the hover."""
    return {
        "type": "scatter",
        "mode": "lines+markers",
        "x": list(range(1, len(names) + 1)),
        "y": [],
        "name": name,
        "text": names,
        "hovertemplate": f"%{{text}}<br>{name}: %{{y}}<extra></extra>",
    }


def _int(value: Any) -> int | None:
    return None if value is None else int(value)
