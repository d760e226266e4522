"""Report: ``<output>/report/index.html``, a self-contained page with its plots beside it.

Sections: run summary and config; segment sizes; a 2-D map of users (PCA of
a sample of profiles) coloured by coarse cluster with segment labels at their
centroids; one card per segment (label, keywords, top items, recommendations,
size, cohesion); clustering quality with the k-selection curve; ingest
quality (accepted and rejected by reason); offline evaluation when one ran;
movement between segments and the latest re-clustering after updates.
The page loads nothing from the network.

Modules:
    gather   -- ``ReportData`` and ``gather``: what the page shows, read from the tables
    plots    -- the matplotlib figures (map, sizes, k selection, ingest, evaluation) as PNG bytes
    render   -- the HTML, rendered from ``templates/report.html.j2`` with autoescaping
    publish  -- writing ``<root>/report/``: content-named images, the page replaced in one step
    stage    -- ``run_report``, the stage
"""

from usersegments.report.gather import ReportData, gather
from usersegments.report.plots import (
    plot_evaluation,
    plot_ingest,
    plot_k_selection,
    plot_map,
    plot_sizes,
    project_2d,
)
from usersegments.report.publish import write_report
from usersegments.report.render import render_html, short_text
from usersegments.report.stage import run_report

__all__ = [
    "ReportData",
    "gather",
    "plot_evaluation",
    "plot_ingest",
    "plot_k_selection",
    "plot_map",
    "plot_sizes",
    "project_2d",
    "render_html",
    "run_report",
    "short_text",
    "write_report",
]
