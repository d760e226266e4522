"""The interface every Delta backend implements, and the values it hands back."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

from pyspark.sql import DataFrame
from pyspark.sql.types import StructType

WriteMode = Literal["append", "overwrite"]
MatchedAction = Literal["update", "ignore"]
NotMatchedAction = Literal["insert", "ignore"]

# The change data feed's column naming what a row's change was, and the value of an
# insert (the only change read: the tables read by change are only ever inserted into).
CHANGE_TYPE_COLUMN = "_change_type"
INSERT_CHANGE = "insert"


@dataclass(frozen=True)
class MergeResult:
    """Rows a merge inserted into, updated in and deleted from its target table."""

    inserted: int
    updated: int
    deleted: int = 0


@dataclass(frozen=True)
class Maintenance:
    """What ``TableStore.maintain`` did to one table."""

    table: str
    files_before: int
    files_after: int
    compacted: bool
    files_vacuumed: int
    zorder_by: tuple[str, ...] = ()  # the columns it was z-ordered by; empty when not
    vacuumed: bool = False  # whether it was due for VACUUM (``retention.vacuum_due``)

    @property
    def zordered(self) -> bool:
        """Whether this maintenance z-ordered the table (instead of a plain compaction)."""
        return bool(self.zorder_by)


@dataclass(frozen=True)
class Txn:
    """An idempotent write's application transaction (Delta's ``txn`` action).

    The commit records ``version`` for ``app_id``; a later write with the same
    ``app_id`` and a version not above the recorded one is skipped, so a replayed
    write (a streaming micro-batch run again after a crash) commits nothing twice.
    One ``app_id`` guards one write per version and table.
    """

    app_id: str
    version: int


@dataclass(frozen=True)
class TableVersion:
    """One commit of a table, as ``TableStore.history`` reports it (``timestamp``: aware
    UTC on both backends)."""

    version: int
    timestamp: datetime
    operation: str
    parameters: dict[str, Any]
    metrics: dict[str, Any]


class Backend(Protocol):
    """One way to reach Delta tables by path; ``TableStore`` does the checks around it."""

    name: str

    def exists(self, path: str) -> bool: ...

    def read(self, path: str, version: int | None) -> DataFrame: ...

    def write(
        self,
        df: DataFrame,
        path: str,
        mode: WriteMode,
        partition_by: list[str],
        properties: Mapping[str, str],
        txn: Txn | None = None,
    ) -> bool: ...

    def merge(
        self,
        df: DataFrame,
        path: str,
        on: Sequence[str],
        when_matched: MatchedAction,
        when_not_matched: NotMatchedAction,
        delete_flag: str | None = None,
        within: Mapping[str, Sequence[str]] | None = None,
    ) -> MergeResult: ...

    def version(self, path: str) -> int: ...

    # The rows inserted by the commits after_version + 1 .. through_version, read from
    # the change data feed; the frame is valid inside the context (staged files may back it).
    def inserted_rows(
        self, path: str, after_version: int, through_version: int, columns: Sequence[str]
    ) -> AbstractContextManager[DataFrame]: ...

    def history(self, path: str) -> list[TableVersion]: ...

    def schema(self, path: str) -> StructType: ...

    def file_count(self, path: str) -> int: ...

    def row_count(self, path: str) -> int: ...

    def properties(self, path: str) -> dict[str, str]: ...

    def compact(self, path: str) -> None: ...

    def zorder(self, path: str, columns: Sequence[str]) -> None: ...

    def checkpoint(self, path: str) -> None: ...

    def vacuum(self, path: str, retention_hours: float) -> int: ...


def partition_predicate(within: Mapping[str, Sequence[str]] | None, quote: str) -> list[str]:
    """SQL conjuncts ``t.<col> IN ('v1', ...)`` limiting a merge's target to the
    partitions in ``within`` (column -> values as text), the column quoted with
    ``quote`` (a backtick for Spark SQL, a double quote for delta-rs). A static predicate
    on partition columns is what both Delta engines prune the target's files by. A
    column with no value leaves no partition to match in: ``FALSE`` (SQL has no empty
    ``IN ()``; an ingest whose every row was rejected merges an empty batch)."""
    conjuncts = []
    for column, values in (within or {}).items():
        if not values:
            conjuncts.append("FALSE")
            continue
        listed = ", ".join("'" + str(v).replace("'", "''") + "'" for v in values)
        conjuncts.append(f"t.{quote}{column}{quote} IN ({listed})")
    return conjuncts
