"""The ``report`` stage: gather from the tables, write the explorer, record what it showed."""

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
    """Write ``<output>/report/index.html`` (and its ``assets/``) from the current tables."""
    if not cfg.report.enabled:
        log.info("report: disabled (report.enabled=false)")
        return StageResult(stage="report", metrics={"report_written": 0})
    data = gather(spark, store, cfg)
    path, rendered = write_report(store, data, seed=cfg.cluster.seed)
    metrics = {
        "report_written": 1,
        "segments_shown": len(data.segments),
        "map_users": rendered.map_points,
        "runs_shown": len(data.history.runs),
    }
    run.record_all("report", metrics)
    log.info("report: %s", path)
    return StageResult(stage="report", metrics=metrics, path=path)
