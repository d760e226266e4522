"""The delta-spark backend: Delta through the JVM jars (clusters, Databricks), and the
``--packages`` coordinate (``DELTA_SPARK_PACKAGE``) that brings those jars."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from usersegments import delta_jars
from usersegments.errors import ChangeFeedUnavailable
from usersegments.store.backend import (
    CHANGE_TYPE_COLUMN,
    INSERT_CHANGE,
    MatchedAction,
    MergeResult,
    NotMatchedAction,
    TableVersion,
    Txn,
    WriteMode,
    partition_predicate,
)
from usersegments.times import collected_utc


def delta_spark_package() -> str:
    """The ``--packages`` coordinate of the Delta jars for the installed pyspark and
    delta-spark (``delta_jars.package``: e.g. ``io.delta:delta-spark_4.2_2.13:4.4.0``)."""
    return delta_jars.package()


DELTA_SPARK_PACKAGE = delta_spark_package()


class DeltaSparkBackend:
    """Delta tables through the delta-spark jars (clusters, Databricks)."""

    name = "delta-spark"

    def __init__(self, spark: SparkSession) -> None:
        self.spark = spark

    def _table(self, path: str) -> Any:
        # Imported on use: the delta package is only needed where this backend runs.
        from delta.tables import DeltaTable

        return DeltaTable.forPath(self.spark, path)

    def exists(self, path: str) -> bool:
        """Whether ``path`` holds a Delta table."""
        from delta.tables import DeltaTable

        return bool(DeltaTable.isDeltaTable(self.spark, path))

    def read(self, path: str, version: int | None) -> DataFrame:
        """The table at ``path``, at ``version`` or the latest."""
        reader = self.spark.read.format("delta")
        if version is not None:
            reader = reader.option("versionAsOf", version)
        return reader.load(path)

    def schema(self, path: str) -> StructType:
        """The Spark schema of the table's latest version."""
        return self.read(path, None).schema

    def write(
        self,
        df: DataFrame,
        path: str,
        mode: WriteMode,
        partition_by: list[str],
        properties: Mapping[str, str],
        txn: Txn | None = None,
    ) -> bool:
        """Append or overwrite (schema included) the table at ``path``; a table this
        creates gets ``properties`` (writer options named ``delta.*`` become the new
        table's properties, as ``TBLPROPERTIES`` would). With ``txn``, Delta's idempotent
        writer options (``txnAppId``, ``txnVersion``): Delta itself skips a write whose
        transaction the table holds; False then (no new version)."""
        writer = df.write.format("delta").mode(mode)
        before = self.version(path) if txn is not None and self.exists(path) else None
        if txn is not None:
            writer = writer.option("txnAppId", txn.app_id).option("txnVersion", txn.version)
        if mode == "overwrite":
            writer = writer.option("overwriteSchema", "true")
        for key, value in properties.items():
            writer = writer.option(key, value)
        if partition_by:
            writer = writer.partitionBy(*partition_by)
        writer.save(path)
        return txn is None or before is None or self.version(path) > before

    def merge(
        self,
        df: DataFrame,
        path: str,
        on: Sequence[str],
        when_matched: MatchedAction,
        when_not_matched: NotMatchedAction,
        delete_flag: str | None = None,
        within: Mapping[str, Sequence[str]] | None = None,
    ) -> MergeResult:
        """Upsert ``df`` on the keys ``on``; the counts are the merge's own metrics. With
        ``delete_flag`` (a boolean column of ``df``, not written), a matched row whose
        source row has it set is deleted and a flagged unmatched row is not inserted;
        ``within`` limits the target to those partitions (``partition_predicate``)."""
        keys = [f"t.`{k}` = s.`{k}`" for k in on]
        condition = " AND ".join([*partition_predicate(within, "`"), *keys])
        builder = self._table(path).alias("t").merge(df.alias("s"), condition)
        if delete_flag is None:
            if when_matched == "update":
                builder = builder.whenMatchedUpdateAll()
            if when_not_matched == "insert":
                builder = builder.whenNotMatchedInsertAll()
        else:
            flagged = f"s.`{delete_flag}`"
            # The flag is no target column: the clauses name the target's columns.
            columns = {f"`{c}`": f"s.`{c}`" for c in self.schema(path).fieldNames()}
            builder = builder.whenMatchedDelete(condition=flagged)
            if when_matched == "update":
                builder = builder.whenMatchedUpdate(set=columns)
            if when_not_matched == "insert":
                builder = builder.whenNotMatchedInsert(condition=f"NOT {flagged}", values=columns)
        # execute() returns this merge's metrics row. The table's latest history entry
        # is not a substitute: a merge with nothing to write may commit nothing, and
        # that entry is then an earlier commit's.
        metrics = builder.execute().first()
        if metrics is None:
            return MergeResult(inserted=0, updated=0)
        return MergeResult(
            inserted=int(metrics["num_inserted_rows"] or 0),
            updated=int(metrics["num_updated_rows"] or 0),
            deleted=int(metrics["num_deleted_rows"] or 0),
        )

    def version(self, path: str) -> int:
        """The latest committed version."""
        return int(self._table(path).history(1).collect()[0]["version"])

    @contextmanager
    def inserted_rows(
        self, path: str, after_version: int, through_version: int, columns: Sequence[str]
    ) -> Iterator[DataFrame]:
        """The ``columns`` of the rows inserted by the commits after ``after_version`` up to
        ``through_version``: a batch read of the change data feed (``readChangeFeed`` with
        ``startingVersion``/``endingVersion``). Delta refuses a range it recorded no change
        data for when the frame is made; files vacuumed since fail when it is computed."""
        from pyspark.errors import PySparkException

        try:
            changes = (
                self.spark.read.format("delta")
                .option("readChangeFeed", "true")
                .option("startingVersion", after_version + 1)
                .option("endingVersion", through_version)
                .load(path)
            )
        except PySparkException as error:
            raise ChangeFeedUnavailable(
                f"the change data feed of {path!r} for versions {after_version + 1}.."
                f"{through_version} cannot be read: {str(error).splitlines()[0]}"
            ) from error
        inserts = changes.filter(F.col(CHANGE_TYPE_COLUMN) == INSERT_CHANGE)
        yield inserts.select(*[F.col(f"`{c}`") for c in columns])

    def file_count(self, path: str) -> int:
        """Data files in the latest version."""
        return int(self.spark.sql(f"DESCRIBE DETAIL delta.`{path}`").first()["numFiles"])

    def row_count(self, path: str) -> int:
        """Rows in the latest version: Delta answers a bare count from the log's
        statistics (its metadata-only count), scanning only files without them."""
        return self.read(path, None).count()

    def properties(self, path: str) -> dict[str, str]:
        """The table's Delta properties (``DESCRIBE DETAIL``'s ``properties``)."""
        detail = self._table(path).detail().select("properties").first()
        return {str(k): str(v) for k, v in (detail["properties"] or {}).items()}

    def compact(self, path: str) -> None:
        """Rewrite small files into few (OPTIMIZE)."""
        self._table(path).optimize().executeCompaction()

    def zorder(self, path: str, columns: Sequence[str]) -> None:
        """Rewrite the files into few, rows clustered by ``columns`` (OPTIMIZE ZORDER BY)."""
        self._table(path).optimize().executeZOrderBy(*columns)

    def checkpoint(self, path: str) -> None:
        """Nothing to do: delta-spark checkpoints the log itself every 10 commits and
        drops expired log entries after a checkpoint."""

    def vacuum(self, path: str, retention_hours: float) -> int:
        """Delete files no version of the last ``retention_hours`` needs; always 0 here."""
        # Delta refuses a retention under 7 days unless its safety check is off: the
        # setting is the user's deliberate choice, so it is honoured for this call only.
        settings = {"spark.databricks.delta.retentionDurationCheck.enabled": "false"}
        # Vacuum lists the table's folders in as many tasks as this setting (10,000 unless
        # set): on a table of a few folders that is 10,000 empty tasks. Unless the user
        # set it for the cluster, list in as many tasks as the cluster has cores.
        listing = "spark.sql.sources.parallelPartitionDiscovery.parallelism"
        if not self.spark.sparkContext.getConf().contains(listing):
            settings[listing] = str(self.spark.sparkContext.defaultParallelism)
        previous = {key: self.spark.conf.get(key, None) for key in settings}
        for key, value in settings.items():
            self.spark.conf.set(key, value)
        try:
            removed = self._table(path).vacuum(retention_hours)
        finally:
            for key, value in previous.items():
                if value is None:
                    self.spark.conf.unset(key)
                else:
                    self.spark.conf.set(key, value)
        # delta-spark's vacuum returns an empty frame, not the files it deleted: the
        # count is only known on delta-rs (the maintain metric reads 0 here).
        return int(removed.count()) if removed is not None else 0

    def history(self, path: str) -> list[TableVersion]:
        """Every commit, newest first."""
        rows = self._table(path).history().orderBy(F.col("version").desc()).collect()
        return [
            TableVersion(
                version=int(r["version"]),
                timestamp=collected_utc(r["timestamp"]),
                operation=r["operation"],
                parameters=dict(r["operationParameters"] or {}),
                metrics=dict(r["operationMetrics"] or {}),
            )
            for r in rows
        ]
