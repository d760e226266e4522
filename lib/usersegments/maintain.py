"""The maintain stage: keeps every table quick to read as runs and updates pile up.

Each update commits a few small files to several tables. Left alone, reads slow
down with the number of files and of log entries. At the end of ``run`` and
``update`` (``store.maintenance``), every table of the store is:

1. **compacted** (OPTIMIZE on delta-spark, ``optimize.compact`` on delta-rs) once its
   current version has ``store.compact_min_files`` data files; a table with a lookup
   key (``schema.ZORDER_BY``: ``user_id``, ``text_hash``) is z-ordered by it instead
   (``executeZOrderBy`` / ``optimize.z_order``, with ``store.zorder``), so that a
   merge or lookup on the key reads few files;
2. **checkpointed** (delta-rs; delta-spark checkpoints by itself every 10 commits);
3. **vacuumed** when due: data files that no version of the last
   ``store.vacuum_retention_hours`` needs are deleted, so disk use stays bounded
   and time travel reaches back that far. A VACUUM lists every file of a table, so it
   runs only when the table's history says a removed file may have aged past the
   retention since the last one, or once per retention period
   (``store.retention.vacuum_due``).

Each step is one Delta commit or a deletion of unreferenced files: a crash between
steps leaves every table readable, and the next run's maintain finishes the work.

It also deletes the ``<root>/models/<run_id>/coarse*`` folders earlier versions
saved with every full run (coarse MLlib models nothing ever read back).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

from pyspark.sql import SparkSession

from usersegments.config import Config
from usersegments.paths import is_local, local_path
from usersegments.runlog import RunLog, StageResult
from usersegments.schema import TABLES, ZORDER_BY
from usersegments.store import Maintenance, TableStore

log = logging.getLogger(__name__)


def run_maintain(spark: SparkSession, store: TableStore, cfg: Config, run: RunLog) -> StageResult:
    """Compact (z-ordering tables with a lookup key), checkpoint and vacuum every table
    of the store (see the module doc)."""
    scfg = cfg.store
    if not scfg.maintenance:
        log.info("maintain: off (store.maintenance=false)")
        return StageResult(stage="maintain", metrics={"tables_maintained": 0})
    remove_legacy_models(spark, store.root)
    done = [
        store.maintain(
            name,
            scfg.compact_min_files,
            scfg.vacuum_retention_hours,
            zorder_by=ZORDER_BY.get(name, ()) if scfg.zorder else (),
        )
        for name in TABLES
        if store.exists(name)
    ]
    metrics = maintenance_metrics(done)
    run.record_all("maintain", metrics)
    log.info(
        "maintain: %d tables, %d compacted (%d -> %d files; %d z-ordered), %d vacuumed "
        "(%d old files deleted)",
        len(done),
        metrics["tables_compacted"],
        metrics["files_before"],
        metrics["files_after"],
        metrics["tables_zordered"],
        metrics["tables_vacuumed"],
        metrics["files_vacuumed"],
    )
    rewritten = [d for d in done if d.compacted or d.zordered]
    tables = {d.table: store.version(d.table) for d in rewritten}
    return StageResult(stage="maintain", tables=tables, metrics=metrics)


def maintenance_metrics(done: Sequence[Maintenance]) -> dict[str, float]:
    """The figures maintain records in ``run_metrics``: tables maintained, compacted,
    z-ordered and vacuumed, files before, after and vacuumed, and ``zordered.<table>``
    (the number of z-order columns) for each table it z-ordered."""
    metrics: dict[str, float] = {
        "tables_maintained": len(done),
        "tables_compacted": sum(1 for d in done if d.compacted),
        "tables_zordered": sum(1 for d in done if d.zordered),
        "files_before": sum(d.files_before for d in done),
        "files_after": sum(d.files_after for d in done),
        "tables_vacuumed": sum(1 for d in done if d.vacuumed),
        "files_vacuumed": sum(d.files_vacuumed for d in done),
    }
    metrics.update({f"zordered.{d.table}": len(d.zorder_by) for d in done if d.zordered})
    return metrics


def remove_legacy_models(spark: SparkSession | None, root: str) -> int:
    """Delete the ``<root>/models/*/coarse*`` folders left by earlier versions; the number
    deleted. Object-store roots go through Spark's Hadoop FileSystem; where that is not
    reachable (Spark Connect) they are left, with a log line, as they harm nothing."""
    if is_local(root):
        return _remove_local_models(local_path(root) / "models")
    try:
        jvm = spark._jvm  # type: ignore[union-attr]
        pattern = jvm.org.apache.hadoop.fs.Path(f"{root.rstrip('/')}/models/*/coarse*")
        fs = pattern.getFileSystem(spark._jsc.hadoopConfiguration())  # type: ignore[union-attr]
        found = list(fs.globStatus(pattern) or [])
        for status in found:
            fs.delete(status.getPath(), True)
    except Exception as exc:  # leftovers are harmless: never fail maintain over them
        log.info("maintain: old coarse models under %s/models left in place (%s)", root, exc)
        return 0
    if found:
        log.info("maintain: deleted %d old coarse model folders under %s", len(found), root)
    return len(found)


def _remove_local_models(models: Path) -> int:
    """Delete ``models/*/coarse*``, then the run folders and ``models`` left empty."""
    if not models.is_dir():
        return 0
    found = sorted(models.glob("*/coarse*"))
    for folder in found:
        if folder.is_dir():
            shutil.rmtree(folder)
        else:
            folder.unlink()
    for run_folder in {folder.parent for folder in found}:
        if not any(run_folder.iterdir()):
            run_folder.rmdir()
    if found and not any(models.iterdir()):
        models.rmdir()
    if found:
        log.info("maintain: deleted %d old coarse model folders under %s", len(found), models)
    return len(found)
