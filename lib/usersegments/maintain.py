"""The maintain stage: keeps every table quick to read as runs and updates pile up.

Each update commits a few small files to several tables. Left alone, reads slow
down with the number of files and of log entries. At the end of ``run`` and
``update`` (``store.maintenance``), every table of the store is:

1. **compacted** (OPTIMIZE on delta-spark, ``optimize.compact`` on delta-rs) once its
   current version has ``store.compact_min_files`` data files;
2. **checkpointed** (delta-rs; delta-spark checkpoints by itself every 10 commits);
3. **vacuumed**: data files that no version of the last
   ``store.vacuum_retention_hours`` needs are deleted, so disk use stays bounded
   and time travel reaches back that far.

Each step is one Delta commit or a deletion of unreferenced files: a crash between
steps leaves every table readable, and the next run's maintain finishes the work.
"""

from __future__ import annotations

import logging

from pyspark.sql import SparkSession

from usersegments.config import Config
from usersegments.runlog import RunLog, StageResult
from usersegments.schema import TABLES
from usersegments.store import TableStore

log = logging.getLogger(__name__)


def run_maintain(spark: SparkSession, store: TableStore, cfg: Config, run: RunLog) -> StageResult:
    """Compact, checkpoint and vacuum every table of the store (see the module doc)."""
    scfg = cfg.store
    if not scfg.maintenance:
        log.info("maintain: off (store.maintenance=false)")
        return StageResult(stage="maintain", metrics={"tables_maintained": 0})
    done = [
        store.maintain(name, scfg.compact_min_files, scfg.vacuum_retention_hours)
        for name in TABLES
        if store.exists(name)
    ]
    compacted = [d for d in done if d.compacted]
    metrics = {
        "tables_maintained": len(done),
        "tables_compacted": len(compacted),
        "files_before": sum(d.files_before for d in done),
        "files_after": sum(d.files_after for d in done),
        "files_vacuumed": sum(d.files_vacuumed for d in done),
    }
    run.record_all("maintain", metrics)
    log.info(
        "maintain: %d tables, %d compacted (%d -> %d files), %d old files vacuumed",
        len(done),
        len(compacted),
        metrics["files_before"],
        metrics["files_after"],
        metrics["files_vacuumed"],
    )
    tables = {d.table: store.version(d.table) for d in compacted}
    return StageResult(stage="maintain", tables=tables, metrics=metrics)
