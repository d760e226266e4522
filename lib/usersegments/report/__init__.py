"""Report: ``<output>/report/``, an interactive segment explorer that opens from ``file://``.

One page, hash-routed (``#overview``, ``#map``, ``#hierarchy``, ``#segments``,
``#movement``, ``#quality``, ``#segment/<id>``), its Plotly figures drawn by the
plotly.js bundled once per folder under ``assets/``; nothing is loaded from the
network. Spark aggregates; only per-segment, per-segment-pair (co-interest) and per-run
figures, per-user segment paths counted per distinct path, and a sample of users for the
map reach the driver.

Modules:
    gather   -- ``ReportData`` and ``gather``: the current state, read from the tables
    history  -- segments over runs through Delta time travel: run timeline, snapshots, user paths
    changes  -- what changed since the previous run, one sentence per big change
    figures  -- the Plotly figures of the current state: map, hierarchy, quality,
                co-interest heat map
    runs_figures -- the figures over recorded runs: sizes over runs, Sankey, per segment
    sections -- the overview's figures and tables (key figures, quality, ingest)
    text     -- item texts shown once and short, figures formatted without "nan"
    render   -- the HTML from ``templates/report.html.j2`` (autoescaped) with the figures as JSON
    publish  -- writing ``<root>/report/``: plotly.js once, the page replaced in one step;
                ``display_report``: the page inline in a notebook cell (``displayHTML``)
    stage    -- ``run_report``, the stage
"""

from usersegments.report.changes import Change, changes
from usersegments.report.figures import hierarchy_figure, map_figure, project_2d
from usersegments.report.gather import ReportData, gather
from usersegments.report.history import History, RunPoint, gather_history
from usersegments.report.publish import display_report, plotly_bundle, write_report
from usersegments.report.render import Rendered, render_html
from usersegments.report.runs_figures import (
    movement_figure,
    segment_figures,
    sizes_over_runs_figure,
)
from usersegments.report.sections import report_figures
from usersegments.report.stage import run_report
from usersegments.report.text import item_title, short_text

__all__ = [
    "Change",
    "History",
    "Rendered",
    "ReportData",
    "RunPoint",
    "changes",
    "display_report",
    "gather",
    "gather_history",
    "hierarchy_figure",
    "item_title",
    "map_figure",
    "movement_figure",
    "plotly_bundle",
    "project_2d",
    "render_html",
    "report_figures",
    "run_report",
    "segment_figures",
    "short_text",
    "sizes_over_runs_figure",
    "write_report",
]
