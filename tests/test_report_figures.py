"""The report's figure builders, page options and console tables on small pandas frames
(no Spark, no pipeline run)."""

from __future__ import annotations

import io
import re
from datetime import datetime, timezone

import pandas as pd
import pytest

from usersegments import console
from usersegments.report import History, ReportData, RunPoint, display_report, render_html
from usersegments.report.runs_figures import SANKEY, movement_figure, sankey_labels, sankey_size
from usersegments.report.sections import report_figures

AT = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _data(history: History | None = None) -> ReportData:
    """Two described segments with items, recommendations and no truth figures."""
    segments = pd.DataFrame(
        {
            "segment_id": ["c00.s00", "c01.s00"],
            "label": ["trail running · gps", "sourdough · baking"],
            "cluster_id": [0, 1],
            "size": [120, 80],
            "cohesion": [0.5, 0.6],
            "keywords": [["trail running", "gps"], ["sourdough", "baking"]],
            "top_items": [["i1"], ["i2"]],
        }
    )
    return ReportData(
        segments=segments,
        map_points=pd.DataFrame(),
        item_text={"i1": "Summit Trail Shoe | Summit Trail Shoe", "i2": "Rye Starter Kit"},
        recommendations={"c00.s00": [("Headlamp Ultra Bright", 0.4)], "c01.s00": []},
        cluster_metrics={"silhouette_cosine": 0.31, "ari_cluster_vs_area": float("nan")},
        ingest_metrics={},
        rejected_by_reason={},
        evaluate_metrics={},
        run_row={},
        model="m",
        history=history or History(),
    )


def _two_runs(paths: list[tuple[tuple[str | None, ...], int]]) -> History:
    runs = [RunPoint(f"r{i}", "run" if i == 0 else "update", AT, {}) for i in range(2)]
    rows = []
    for run in (0, 1):
        sizes: dict[str, int] = {}
        for path, users in paths:
            if path[run] is not None:
                sizes[path[run]] = sizes.get(path[run], 0) + users
        rows += [(run, s, n, s, int(s[2]), 0.01 * run) for s, n in sorted(sizes.items())]
    columns = ["run", "segment_id", "size", "label", "cluster_id", "drift"]
    snapshots = pd.DataFrame(rows, columns=columns)
    return History(runs=runs, snapshots=snapshots, paths=paths, path_runs=[0, 1])


def test_sankey_labels_only_nodes_one_line_tall():
    height, pad = sankey_size(3)
    plot_px = height - SANKEY["margin"]["t"] - SANKEY["margin"]["b"] - 2 * pad
    users = 1000
    line_users = SANKEY["line_px"] * users / plot_px  # a node this large is one line tall
    small, large = int(line_users) - 1, int(line_users) + 1
    values = [small, large, users - small - large] * 2  # both sides hold every user
    labels = sankey_labels(list("abcdef"), values, 3, height, pad)
    assert labels == ["", "b", "c", "", "e", "f"]
    # More nodes: a taller figure (within bounds) and thinner padding.
    assert sankey_size(10)[0] < sankey_size(60)[0] <= SANKEY["max_height"]
    assert sankey_size(60)[1] < sankey_size(10)[1]


def test_movement_figure_names_every_node_in_its_hover_and_large_ones_beside_it():
    paths = [(("c00.s00", "c00.s00"), 900), (("c00.s00", "c01.s00"), 2)]
    paths += [((None, "c01.s00"), 95), (("c02.s00", "c02.s00"), 3)]
    fig = movement_figure(_two_runs(paths), 0, 1, {"c00.s00": "trail", "c01.s00": "baking"})
    node, link = fig["data"][0]["node"], fig["data"][0]["link"]
    left = ["not segmented", "c00.s00 trail", "c02.s00"]
    right = ["c00.s00 trail", "c01.s00 baking", "c02.s00"]
    assert node["customdata"] == left + right
    # 3 of 1,000 users on 560 px is under one line: named in the hover only.
    assert node["label"] == [
        "not segmented",
        "c00.s00 trail",
        "",
        "c00.s00 trail",
        "c01.s00 baking",
        "",
    ]
    assert sorted(link["value"]) == [2, 3, 95, 900]
    assert fig["layout"]["height"] == sankey_size(3)[0]


def test_report_figures_for_notebooks_include_the_last_sankey():
    one_run = report_figures(_data())
    assert "movement" not in one_run and {"map", "hierarchy", "ingest"} <= set(one_run)
    history = _two_runs([(("c00.s00", "c01.s00"), 10), (("c01.s00", "c01.s00"), 70)])
    assert report_figures(_data(history))["movement"]["data"][0]["type"] == "sankey"


def _html(data: ReportData, **options) -> str:
    return render_html(data, AT, "assets/plotly.min.js", **options).html


def test_search_text_holds_keywords_items_and_recommendations():
    html = _html(_data())
    rows = dict(re.findall(r"<tr data-search='([^']*)' data-segment='([^']*)'>", html))
    searched = {segment: text for text, segment in rows.items()}
    assert "gps" in searched["c00.s00"] and "summit trail shoe" in searched["c00.s00"]
    assert "headlamp ultra bright" in searched["c00.s00"]  # a recommended item's text
    assert "headlamp" not in searched["c01.s00"]
    assert searched["c00.s00"].count("summit trail shoe") == 1


def test_page_opens_on_the_start_page_given():
    assert "<body data-start='overview'>" in _html(_data())
    assert "<body data-start='movement'>" in _html(_data(), start_page="movement")
    assert "data-start='segment/c00.s00'" in _html(_data(), start_page="segment/c00.s00")
    with pytest.raises(ValueError, match="start_page"):
        _html(_data(), start_page="nowhere")


class _NoSparkStore:
    """A store whose tables must not be read (display_report gathers nothing locally)."""

    root = "/data/store"

    @property
    def spark(self):
        raise AssertionError("gathered")


def test_display_report_inlines_plotly_on_databricks_and_only_names_the_page_elsewhere(capsys):
    from usersegments.config import load_config

    shown: list[str] = []
    cfg = load_config()
    html = display_report({"displayHTML": shown.append}, _NoSparkStore(), cfg, "map", _data())
    assert shown == [html] and "<body data-start='map'>" in html
    assert "<script src=" not in html and "Plotly" in html  # plotly.js inline, no file
    body = html.split("</head>", 1)[1]  # past plotly.js, whose code says NaN
    assert not re.search(r"\bnan\b", body, re.IGNORECASE)
    assert display_report({}, _NoSparkStore(), cfg, "movement") is None
    assert "/data/store/report/index.html#movement" in capsys.readouterr().out


@pytest.fixture
def printed(monkeypatch):
    """What console prints, as text."""
    from rich.console import Console

    out = io.StringIO()
    monkeypatch.setattr(console.output, "_console", Console(file=out, width=200, highlight=False))
    return out


def test_console_segments_table_has_labels_sizes_and_no_none_or_nan(printed):
    rows = [
        {"segment_id": "c00.s00", "size": 120, "label": "trail · gps", "keywords": ["trail"]},
        {"segment_id": "c01.s00", "size": 30, "label": None, "keywords": None},
        {"segment_id": "c02.s00", "size": 5, "label": "private · few", "keywords": ["private"]},
    ]
    table = console.segment_rows(rows, min_size=10)
    assert table[0] == ("c00.s00", 120, "trail · gps", "trail")
    assert table[1] == ("c01.s00", 30, "–", "")
    assert table[2][:2] == ("c02.s00", 5) and "private" not in " ".join(map(str, table[2]))
    console.print_table("segments", ["segment", "users", "label", "keywords"], table)
    console.print_table("figures", ["a", "b"], [(float("nan"), None)])
    text = printed.getvalue()
    assert "trail · gps" in text and "120" in text
    assert not re.search(r"\b(nan|None)\b", text)


def test_console_segments_summary_shows_truth_columns_only_with_truth(printed):
    from usersegments.runlog import StageResult

    metrics = {
        "users_clustered": 700,
        "k": 6,
        "segments": 20,
        "segment_size_min": 12,
        "segment_size_median": 30,
        "segment_size_max": 80,
        "silhouette_cosine": 0.31,
        "ari_cluster_vs_area": float("nan"),
        "nmi_segment_vs_substyle": float("nan"),
    }
    console.summary._print_segments(StageResult(stage="cluster", metrics=metrics))
    without = printed.getvalue()
    assert "ARI" not in without and "NMI" not in without and "nan" not in without.lower()
    metrics |= {"ari_cluster_vs_area": 0.9, "nmi_segment_vs_substyle": 0.8}
    console.summary._print_segments(StageResult(stage="cluster", metrics=metrics))
    assert "ARI vs planted area" in printed.getvalue()


def test_segment_pages_share_one_frame_and_fill_each_segment_s_values():
    from usersegments.report.runs_figures import (
        fill_segment_figures,
        segment_figure_frames,
        segment_figures,
    )

    history = _two_runs([(("c00.s00", "c00.s00"), 10), ((None, "c01.s00"), 5)])
    history.reach = {(0, "c00.s00"): 12, (1, "c00.s00"): 14}
    frames = segment_figure_frames(history)
    assert [line["name"] for line in frames["size"]["data"]] == ["users", "reach"]
    assert all(line["y"] == [] for f in frames.values() for line in f["data"])
    figures = segment_figures(history, "c00.s00")
    size = {line["name"]: line["y"] for line in figures["size"]["data"]}
    assert size == {"users": [10, 10], "reach": [12, 14]}
    assert figures["drift"]["data"][0]["y"] == [0.0, 0.01]
    # A segment born in the second run: no reach recorded, so no reach line.
    later = segment_figures(history, "c01.s00")
    assert [line["name"] for line in later["size"]["data"]] == ["users"]
    assert later["size"]["data"][0]["y"] == [None, 5]
    assert fill_segment_figures(frames, {"users": [None, None]}) == {}


def test_centroid_drift_is_the_cosine_distance_from_the_segment_s_first_run():
    import math

    from usersegments.report.history import centroid_drift

    rows = [
        (2, "a", [0.0, 2.0]),
        (0, "a", [1.0, 0.0]),
        (1, "a", [1.0, 1.0]),
        (1, "b", [0.0, 0.0]),  # a zero centroid: as far as can be
        (2, "b", [3.0, 4.0]),
    ]
    frame = pd.DataFrame(rows, columns=["run", "segment_id", "centroid"])
    keys = zip(frame["segment_id"], frame["run"], strict=True)
    drift = dict(zip(keys, centroid_drift(frame), strict=True))
    assert drift[("a", 0)] == 0.0 and drift[("a", 2)] == 1.0
    assert drift[("a", 1)] == round(1 - 1 / math.sqrt(2), 5)
    assert drift[("b", 1)] == 1.0 and drift[("b", 2)] == 1.0
