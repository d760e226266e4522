"""When a table is due for VACUUM, told from its commit history alone.

A VACUUM lists every file of the table (a Spark job per table on delta-spark, a few
seconds each) and commits twice (VACUUM START and END), even when it deletes
nothing. Most maintain runs find nothing to delete: a file removed by a commit
becomes deletable only ``retention`` after that commit. So maintain vacuums a table
only when its history says some file may have become deletable since its last
vacuum, and at least once per retention period (to sweep files that failed writes
left behind, which no commit names).

The last vacuum is read from the VACUUM START/END commits both backends log. Where
they are not logged (``spark.databricks.delta.vacuum.logging.enabled=false``), a
table looks never vacuumed: it is vacuumed in every maintain once it is older than
the retention, as before this check.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from usersegments.store.backend import TableVersion

# The operation metrics, on either backend, that count the data files a commit removed
# (delta-spark: numRemovedFiles, numTargetFilesRemoved, numFilesRemoved for OPTIMIZE;
# delta-rs: num_removed_files, num_target_files_removed, numFilesRemoved), compared
# without case and underscores.
_REMOVED_FILES_METRICS = frozenset({"numremovedfiles", "numtargetfilesremoved", "numfilesremoved"})
_NEVER_REMOVE = frozenset({"CREATE TABLE", "SET TBLPROPERTIES", "VACUUM START", "VACUUM END"})


def removes_files(commit: TableVersion) -> bool:
    """Whether ``commit`` may have removed data files: its metrics say so, or it is an
    operation that can and its metrics do not say (then it is assumed it did)."""
    operation = commit.operation.upper()
    if operation in _NEVER_REMOVE:
        return False
    counted = _removed_files(commit.metrics)
    if counted is not None:
        return counted > 0
    mode = str(commit.parameters.get("mode", "")).lower()
    return not (operation == "WRITE" and mode in {"append", "errorifexists"})


def _removed_files(metrics: Mapping[str, Any]) -> int | None:
    found = [
        value
        for key, value in metrics.items()
        if key.replace("_", "").lower() in _REMOVED_FILES_METRICS
    ]
    if not found:
        return None
    try:
        return sum(int(value) for value in found)
    except (TypeError, ValueError):
        return None


def vacuum_due(history: Sequence[TableVersion], retention_hours: float, now: datetime) -> bool:
    """Whether a VACUUM of the table whose commits are ``history`` (any order) may delete
    a file at ``now``: a file removed at time t is deleted by a vacuum at time v once
    t < v - retention, so the last vacuum (at v0) left only files removed after
    v0 - retention; they are due once removed before now - retention. A table never
    vacuumed, or not for a whole retention period, is due once it is that old (files
    of failed writes are named by no commit)."""
    if not history:
        return False
    retention = timedelta(hours=retention_hours)
    horizon = now - retention
    vacuums = [c.timestamp for c in history if c.operation.upper().startswith("VACUUM")]
    if not vacuums:
        return min(c.timestamp for c in history) <= horizon
    last = max(vacuums)
    if last <= horizon:
        return True
    return any(last - retention <= c.timestamp <= horizon and removes_files(c) for c in history)
