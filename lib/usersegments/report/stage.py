"""The ``report`` stage: gather from the tables, write the page, record what it showed."""

from __future__ import annotations

import logging

from pyspark.sql import SparkSession

from usersegments.config import Config
from usersegments.report.gather import gather
from usersegments.report.publish import write_report
from usersegments.runlog import RunLog, StageResult
from usersegments.store import TableStore

log = logging.getLogger(__name__)


def run_report(spark: SparkSession, store: TableStore, cfg: Config, run: RunLog) -> StageResult:
    """Write ``<output>/report/index.html`` from the current tables."""
    if not cfg.report.enabled:
        log.info("report: disabled (report.enabled=false)")
        return StageResult(stage="report", metrics={"report_written": 0})
    import matplotlib

    # PNG files only: a headless driver has no display, and a notebook's backend is
    # left alone until the stage runs.
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
