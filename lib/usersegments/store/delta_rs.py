"""The delta-rs backend (the ``deltalake`` package), embedded for local mode.

Spark computes; a DataFrame to commit is staged as Parquet by Spark (distributed,
bounded memory) and streamed from there as Arrow batches into ``write_deltalake`` /
``DeltaTable.merge`` (``StagedRows``). A frame whose rows the driver holds already (a
local relation: run records, figures, frames made from pandas) goes to Arrow directly,
without a Spark job that would only copy them back. Reads come back into Spark from the files the
Delta log names for the wanted version (never a directory listing).
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema, to_arrow_schema
from pyspark.sql.types import StructType

from usersegments.errors import ChangeFeedUnavailable, StoreError
from usersegments.frames import driver_held
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


class DeltaRsBackend:
    """Delta tables through delta-rs, with Spark doing the computing (local mode)."""

    name = "delta-rs"

    def __init__(
        self,
        spark: SparkSession,
        batch_rows: int,
        staging_dir: str | None,
        storage_options: dict[str, str],
    ) -> None:
        self.spark = spark
        self.batch_rows = batch_rows
        self.staging_dir = staging_dir
        self.storage_options = dict(storage_options) or None

    def _table(self, path: str, version: int | None = None) -> Any:
        from deltalake import DeltaTable

        return DeltaTable(path, version=version, storage_options=self.storage_options)

    def exists(self, path: str) -> bool:
        """Whether ``path`` holds a Delta table."""
        from deltalake import DeltaTable

        return bool(DeltaTable.is_deltatable(path, storage_options=self.storage_options))

    def schema(self, path: str) -> StructType:
        """The Spark schema of the table's latest version."""
        return _spark_schema(self._table(path))

    def read(self, path: str, version: int | None) -> DataFrame:
        """The table at ``path``, at ``version`` or the latest, read by Spark."""
        table = self._table(path, version)
        _check_readable(table, path)
        schema = _spark_schema(table)
        files = table.file_uris()
        if not files:
            return self.spark.createDataFrame([], schema)
        # A user-given schema makes Spark take partition column types from it, not
        # infer them from the folder names; basePath makes it read those folders.
        df = self.spark.read.schema(schema).option("basePath", path).parquet(*files)
        return df.select(*[F.col(f"`{c}`") for c in schema.fieldNames()])

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
        creates gets ``properties`` (delta-rs raises the protocol they need, e.g.
        writer version 4 for the change data feed). With ``txn``, the commit records the
        application transaction, and a write whose transaction the table already holds
        is skipped (False): delta-rs records it but leaves the check to the writer."""
        from deltalake import CommitProperties, Transaction, write_deltalake

        commit = None
        if txn is not None:
            if self._holds(path, txn):
                return False
            commit = CommitProperties(app_transactions=[Transaction(txn.app_id, txn.version)])
        with self._staged(df) as reader:
            write_deltalake(
                path,
                reader,
                mode=mode,
                partition_by=partition_by or None,
                schema_mode="overwrite" if mode == "overwrite" else None,
                configuration=dict(properties) or None,
                storage_options=self.storage_options,
                commit_properties=commit,
            )
        return True

    def _holds(self, path: str, txn: Txn) -> bool:
        """Whether the table at ``path`` has committed ``txn`` (or a later version of its
        application)."""
        if not self.exists(path):
            return False
        recorded = self._table(path).transaction_version(txn.app_id)
        return recorded is not None and recorded >= txn.version

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
        """Upsert ``df`` on the keys ``on`` with a streamed delta-rs merge; with
        ``delete_flag`` (a boolean column of ``df``, not written), a matched row whose
        source row has it set is deleted and a flagged unmatched row is not inserted;
        ``within`` limits the target to those partitions (``partition_predicate``: a
        streamed merge cannot derive that from its source)."""
        keys = [f't."{k}" = s."{k}"' for k in on]
        predicate = " AND ".join([*partition_predicate(within, '"'), *keys])
        # The target's column order, so that insert_all/update_all line up by name and type.
        target_columns = self.schema(path).fieldNames()
        source = [F.col(f"`{c}`") for c in target_columns]
        if delete_flag is not None:
            source.append(F.col(f"`{delete_flag}`"))
        with self._staged(df.select(*source)) as reader:
            merger = self._table(path).merge(
                source=reader,
                predicate=predicate,
                source_alias="s",
                target_alias="t",
                streamed_exec=True,
            )
            if delete_flag is None:
                if when_matched == "update":
                    merger = merger.when_matched_update_all()
                if when_not_matched == "insert":
                    merger = merger.when_not_matched_insert_all()
            else:
                flagged = f's."{delete_flag}"'
                # The flag is no target column: the clauses name the target's columns.
                columns = {f'"{c}"': f's."{c}"' for c in target_columns}
                merger = merger.when_matched_delete(predicate=flagged)
                if when_matched == "update":
                    merger = merger.when_matched_update(updates=columns)
                if when_not_matched == "insert":
                    merger = merger.when_not_matched_insert(
                        updates=columns, predicate=f"NOT {flagged}"
                    )
            metrics = merger.execute()
        return MergeResult(
            inserted=int(metrics.get("num_target_rows_inserted", 0)),
            updated=int(metrics.get("num_target_rows_updated", 0)),
            deleted=int(metrics.get("num_target_rows_deleted", 0)),
        )

    def version(self, path: str) -> int:
        """The latest committed version."""
        return int(self._table(path).version())

    def file_count(self, path: str) -> int:
        """Data files in the latest version."""
        return len(self._table(path).file_uris())

    def row_count(self, path: str) -> int:
        """Rows in the latest version, from the log's per-file statistics (no data file is
        read); a table whose log lacks them, or that uses deletion vectors (the statistics
        count deleted rows too), is counted by a scan."""
        table = self._table(path)
        features = table.protocol().writer_features or []
        if "deletionVectors" not in features:
            records = pa.table(table.get_add_actions(flatten=True)).column("num_records")
            if records.null_count == 0:
                return int(pc.sum(records).as_py() or 0)
        return self.read(path, None).count()

    @contextmanager
    def inserted_rows(
        self, path: str, after_version: int, through_version: int, columns: Sequence[str]
    ) -> Iterator[DataFrame]:
        """The ``columns`` of the rows inserted by the commits after ``after_version`` up to
        ``through_version``, from ``load_cdf``: its Arrow batches are written to staged
        Parquet files of at most ``batch_rows`` rows (memory stays bounded by one batch)
        that Spark reads; the files are removed when the context ends."""
        from deltalake.exceptions import DeltaError

        table = self._table(path)
        wanted = pa.schema([pa.schema(table.schema().to_arrow()).field(c) for c in columns])
        wanted = _all_nullable(wanted)
        folder = self._staging_folder("changes")
        try:
            try:
                feed = table.load_cdf(
                    starting_version=after_version + 1,
                    ending_version=through_version,
                    columns=[*columns, CHANGE_TYPE_COLUMN],
                )
                reader = pa.RecordBatchReader.from_stream(feed)
                written = _stage_inserts(reader, wanted, folder, self.batch_rows)
            except (DeltaError, OSError, ValueError) as error:  # expired log, vacuumed file
                raise ChangeFeedUnavailable(
                    f"the change data feed of {path!r} for versions {after_version + 1}.."
                    f"{through_version} cannot be read: {error}"
                ) from error
            schema = from_arrow_schema(wanted)
            if written:
                yield self.spark.read.schema(schema).parquet(folder)
            else:
                yield self.spark.createDataFrame([], schema)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def properties(self, path: str) -> dict[str, str]:
        """The table's Delta properties (its metadata's configuration)."""
        configuration = self._table(path).metadata().configuration or {}
        return {str(k): str(v) for k, v in configuration.items()}

    def compact(self, path: str) -> None:
        """Rewrite small files into few (OPTIMIZE)."""
        self._table(path).optimize.compact()

    def zorder(self, path: str, columns: Sequence[str]) -> None:
        """Rewrite the files into few, rows clustered by ``columns`` (OPTIMIZE ZORDER BY)."""
        self._table(path).optimize.z_order(list(columns))

    def checkpoint(self, path: str) -> None:
        """Checkpoint the log and drop its expired entries: readers then skip replaying
        every JSON commit of a long history."""
        table = self._table(path)
        table.create_checkpoint()
        table.cleanup_metadata()

    def vacuum(self, path: str, retention_hours: float) -> int:
        """Delete files no version of the last ``retention_hours`` needs; returns the
        number of files deleted."""
        removed = self._table(path).vacuum(
            retention_hours=math.floor(retention_hours),
            dry_run=False,
            enforce_retention_duration=False,
        )
        return len(removed)

    def history(self, path: str) -> list[TableVersion]:
        """Every commit, newest first."""
        entries = sorted(self._table(path).history(), key=lambda e: -int(e["version"]))
        return [
            TableVersion(
                version=int(e["version"]),
                timestamp=datetime.fromtimestamp(int(e["timestamp"]) / 1000, tz=timezone.utc),
                operation=str(e.get("operation", "")),
                parameters=dict(e.get("operationParameters") or {}),
                metrics=dict(e.get("operationMetrics") or {}),
            )
            for e in entries
        ]

    def _staged(self, df: DataFrame) -> StagedRows:
        return StagedRows(df, self.staging_dir, self.batch_rows)

    def _staging_folder(self, what: str) -> str:
        base = self.staging_dir or tempfile.gettempdir()
        return os.path.join(base, f"usersegments-{what}-{uuid.uuid4().hex}")


def _stage_inserts(
    feed: pa.RecordBatchReader, schema: pa.Schema, folder: str, rows_per_file: int
) -> int:
    """Write the insert rows of ``feed`` (cast to ``schema``) into Parquet files under
    ``folder``, a new file once one holds ``rows_per_file``; returns the rows written."""
    os.makedirs(folder, exist_ok=True)
    writer: pq.ParquetWriter | None = None
    in_file = total = 0
    try:
        for batch in feed:
            # load_cdf hands strings as string_view, which pyarrow cannot filter: cast to
            # the table's own types (what Spark is told to read) first.
            change = batch.column(CHANGE_TYPE_COLUMN).cast(pa.string())
            inserts = _conform_batch(batch, schema).filter(pc.equal(change, INSERT_CHANGE))
            if not inserts.num_rows:
                continue
            if writer is None or in_file >= rows_per_file:
                if writer is not None:
                    writer.close()
                name = os.path.join(folder, f"part-{total:012d}.parquet")
                writer = pq.ParquetWriter(name, schema)
                in_file = 0
            writer.write_batch(inserts)
            in_file += inserts.num_rows
            total += inserts.num_rows
    finally:
        if writer is not None:
            writer.close()
    return total


class StagedRows:
    """Context manager: Spark writes ``df`` as Parquet; yields an Arrow stream over it.

    Memory stays bounded by ``batch_rows`` whatever the size of ``df``; the staging
    folder is removed on exit, also when the commit fails.
    """

    def __init__(self, df: DataFrame, staging_dir: str | None, batch_rows: int) -> None:
        self.df = df
        self.batch_rows = batch_rows
        base = staging_dir or tempfile.gettempdir()
        self.folder = os.path.join(base, f"usersegments-stage-{uuid.uuid4().hex}")

    def __enter__(self) -> pa.RecordBatchReader:
        schema = _all_nullable(to_arrow_schema(self.df.schema, timezone="UTC"))
        if driver_held(self.df):
            rows = self.df.toArrow().to_batches(max_chunksize=self.batch_rows)
            return pa.RecordBatchReader.from_batches(
                schema, (_conform_batch(batch, schema) for batch in rows if batch.num_rows)
            )
        self.df.write.mode("overwrite").parquet(self.folder)
        files = sorted(str(p) for p in Path(self.folder).glob("*.parquet"))
        return pa.RecordBatchReader.from_batches(schema, self._batches(files, schema))

    def _batches(self, files: list[str], schema: pa.Schema) -> Iterator[pa.RecordBatch]:
        if not files:
            return
        dataset = pads.dataset(files, format="parquet")
        for batch in dataset.to_batches(batch_size=self.batch_rows):
            if batch.num_rows:
                yield _conform_batch(batch, schema)

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _conform_batch(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    columns = [batch.column(field.name).cast(field.type) for field in schema]
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def _all_nullable(schema: pa.Schema) -> pa.Schema:
    # Spark's nullability flags are not stable across plans; Delta tables keep columns
    # nullable so an append never fails on a flag alone.
    return pa.schema([field.with_nullable(True) for field in schema])


def _spark_schema(table: Any) -> StructType:
    arrow_schema = pa.schema(table.schema().to_arrow())
    return from_arrow_schema(arrow_schema)


def _check_readable(table: Any, path: str) -> None:
    features = set(table.protocol().reader_features or [])
    unsupported = features & {"deletionVectors", "columnMapping"}
    if unsupported:
        raise StoreError(
            f"Delta table {path!r} uses {sorted(unsupported)}, which the delta-rs backend "
            "cannot hand to Spark file by file; read it with store.backend=delta-spark"
        )
