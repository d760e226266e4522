"""TableStore: every table of a run is a Delta table under one root.

Two real Delta backends sit behind one interface:

- ``delta-spark``: ``format("delta")`` and ``DeltaTable.forPath(...).merge``, for
  clusters and Databricks (the Delta jars on the JVM classpath).
- ``delta-rs`` (the ``deltalake`` package): the embedded default in local mode,
  where no Delta jars can be had. Spark computes; the DataFrame is staged as
  Parquet by Spark (distributed, bounded memory) and streamed from there as Arrow
  batches into ``write_deltalake`` / ``DeltaTable.merge``. Reads come back into
  Spark from the files the Delta log names for the wanted version (never a
  directory listing).

>>> store = TableStore.from_config(spark, cfg)          # doctest: +SKIP
>>> store.write(df, "events", mode="append", partition_by=["event_date"])  # doctest: +SKIP
>>> store.merge(df, "events", on=["event_id"])           # doctest: +SKIP
"""

from __future__ import annotations

import importlib.metadata
import logging
import math
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, Protocol

import pyarrow as pa
import pyarrow.dataset as pads
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema, to_arrow_schema
from pyspark.sql.types import StructType

from usersegments.config import Config
from usersegments.errors import ConfigError, MissingTableError, SchemaMismatchError, StoreError
from usersegments.session import delta_classes_loaded, delta_spark_ready

log = logging.getLogger(__name__)

WriteMode = Literal["append", "overwrite"]
MatchedAction = Literal["update", "ignore"]
NotMatchedAction = Literal["insert", "ignore"]


def delta_spark_package() -> str:
    """The ``--packages`` coordinate of the Delta release that matches this pyspark: the
    version of the ``delta-spark`` pip package installed next to it (pip resolves it
    against pyspark), else Delta 4.0.0 for Spark 4.0."""
    try:
        version = importlib.metadata.version("delta-spark")
    except importlib.metadata.PackageNotFoundError:
        version = "4.0.0"
    return f"io.delta:delta-spark_2.13:{version}"


DELTA_SPARK_PACKAGE = delta_spark_package()


@dataclass(frozen=True)
class MergeResult:
    """Rows a merge inserted into and updated in its target table."""

    inserted: int
    updated: int


@dataclass(frozen=True)
class Maintenance:
    """What ``TableStore.maintain`` did to one table."""

    table: str
    files_before: int
    files_after: int
    compacted: bool
    files_vacuumed: int


@dataclass(frozen=True)
class TableVersion:
    """One commit of a table, as ``TableStore.history`` reports it."""

    version: int
    timestamp: datetime
    operation: str
    parameters: dict[str, Any]
    metrics: dict[str, Any]


class _Backend(Protocol):
    name: str

    def exists(self, path: str) -> bool: ...

    def read(self, path: str, version: int | None) -> DataFrame: ...

    def write(self, df: DataFrame, path: str, mode: WriteMode, partition_by: list[str]) -> None: ...

    def merge(
        self,
        df: DataFrame,
        path: str,
        on: Sequence[str],
        when_matched: MatchedAction,
        when_not_matched: NotMatchedAction,
    ) -> MergeResult: ...

    def version(self, path: str) -> int: ...

    def history(self, path: str) -> list[TableVersion]: ...

    def schema(self, path: str) -> StructType: ...

    def file_count(self, path: str) -> int: ...

    def compact(self, path: str) -> None: ...

    def vacuum(self, path: str, retention_hours: float) -> int: ...


class TableStore:
    """Read, write, merge, version and time-travel the Delta tables under ``root``."""

    def __init__(self, spark: SparkSession, root: str, backend: _Backend) -> None:
        self.spark = spark
        self.root = root
        self._backend = backend

    @classmethod
    def from_config(cls, spark: SparkSession, cfg: Config) -> TableStore:
        """Build the store for ``cfg.store`` with the backend ``resolve_backend`` picks."""
        backend_name = resolve_backend(spark, cfg)
        root = _normalise_root(cfg.store.root)
        backend: _Backend
        if backend_name == "delta-spark":
            backend = _DeltaSparkBackend(spark)
        else:
            backend = _DeltaRsBackend(
                spark,
                batch_rows=cfg.store.write_batch_rows,
                staging_dir=cfg.store.staging_dir,
                storage_options=cfg.store.storage_options,
            )
        if _is_local(root):
            Path(root).mkdir(parents=True, exist_ok=True)
        return cls(spark, root, backend)

    @property
    def backend(self) -> str:
        """The backend in use: ``delta-spark`` or ``delta-rs``."""
        return self._backend.name

    def path(self, name: str) -> str:
        """Where table ``name`` lives: one folder per table under the root."""
        if not name or "/" in name or name.startswith((".", "_")):
            raise ValueError(f"table name {name!r} must be a plain folder name")
        return f"{self.root.rstrip('/')}/{name}"

    def exists(self, name: str) -> bool:
        """Whether table ``name`` has at least one commit."""
        return self._backend.exists(self.path(name))

    def read(self, name: str) -> DataFrame:
        """The current version of table ``name`` as a DataFrame."""
        self.require(name)
        return self._backend.read(self.path(name), None)

    def read_version(self, name: str, version: int) -> DataFrame:
        """Table ``name`` as it was at ``version`` (time travel)."""
        self.require(name)
        current = self.version(name)
        if not 0 <= version <= current:
            raise StoreError(
                f"table '{name}' has versions 0..{current}; version {version} does not exist"
            )
        return self._backend.read(self.path(name), version)

    def read_path(self, path: str) -> DataFrame:
        """Any Delta table by its path (an input, not one of this store's tables)."""
        if not self._backend.exists(path):
            raise StoreError(f"{path!r} is not a Delta table (no _delta_log with commits)")
        return self._backend.read(path, None)

    def schema(self, name: str) -> StructType:
        """The Spark schema of table ``name``'s current version."""
        self.require(name)
        return self._backend.schema(self.path(name))

    def write(
        self,
        df: DataFrame,
        name: str,
        mode: WriteMode = "append",
        partition_by: Sequence[str] | None = None,
    ) -> None:
        """Append ``df`` to table ``name`` (creating it) or overwrite it, schema included.

        Appending rows whose columns or types differ from the table's raises
        ``SchemaMismatchError`` before anything is written.
        """
        if mode not in ("append", "overwrite"):
            raise ValueError(f"mode must be 'append' or 'overwrite', got {mode!r}")
        partitions = list(partition_by or [])
        _check_columns_exist(df, partitions, "partition_by")
        path = self.path(name)
        if mode == "append" and self._backend.exists(path):
            check_schema_compatible(self._backend.schema(path), df.schema, name)
        self._backend.write(df, path, mode, partitions)

    def merge(
        self,
        df: DataFrame,
        name: str,
        on: Sequence[str],
        when_matched: MatchedAction = "update",
        when_not_matched: NotMatchedAction = "insert",
        partition_by: Sequence[str] | None = None,
    ) -> MergeResult:
        """Upsert ``df`` into table ``name`` on the key columns ``on``.

        Matched rows are updated (or left alone with ``when_matched="ignore"``);
        new keys are inserted (or dropped with ``when_not_matched="ignore"``).
        A table that does not exist yet is created (``partition_by`` applies then).
        Keys must be non-null and unique in ``df``: merging the same rows twice
        changes nothing the second time.
        """
        if when_matched not in ("update", "ignore"):
            raise ValueError(f"when_matched must be 'update' or 'ignore', got {when_matched!r}")
        if when_not_matched not in ("insert", "ignore"):
            raise ValueError(
                f"when_not_matched must be 'insert' or 'ignore', got {when_not_matched!r}"
            )
        keys = list(on)
        if not keys:
            raise ValueError("merge needs at least one key column in 'on'")
        _check_columns_exist(df, keys, "on")
        _check_unique_keys(df, keys, name)
        path = self.path(name)
        if not self._backend.exists(path):
            if when_not_matched == "ignore":
                return MergeResult(inserted=0, updated=0)
            count = df.count()
            self.write(df, name, mode="append", partition_by=partition_by)
            return MergeResult(inserted=count, updated=0)
        check_schema_compatible(self._backend.schema(path), df.schema, name)
        return self._backend.merge(df, path, keys, when_matched, when_not_matched)

    def version(self, name: str) -> int:
        """The latest committed version of table ``name`` (0 after its first write)."""
        self.require(name)
        return self._backend.version(self.path(name))

    def history(self, name: str) -> list[TableVersion]:
        """Every commit of table ``name``, newest first."""
        self.require(name)
        return self._backend.history(self.path(name))

    def file_count(self, name: str) -> int:
        """Data files in table ``name``'s current version."""
        self.require(name)
        return self._backend.file_count(self.path(name))

    def maintain(self, name: str, compact_min_files: int, retention_hours: float) -> Maintenance:
        """Keep table ``name`` fast to read as commits pile up: compact its small files
        into few (a new version with the same rows) once it has ``compact_min_files``,
        checkpoint its log, and vacuum data files that no version of the last
        ``retention_hours`` needs (time travel beyond that is given up)."""
        before = self.file_count(name)
        if before >= compact_min_files:
            self._backend.compact(self.path(name))
        after = self.file_count(name)
        vacuumed = self._backend.vacuum(self.path(name), retention_hours)
        # Compacted means fewer files: a table already at one file per partition (events
        # by day) is left as it is by the backend.
        return Maintenance(name, before, after, after < before, vacuumed)

    def tables(self) -> list[str]:
        """Names of the tables present under the root (local roots only)."""
        if not _is_local(self.root) or not Path(self.root).is_dir():
            return []
        return sorted(
            p.name for p in Path(self.root).iterdir() if p.is_dir() and self.exists(p.name)
        )

    def require(self, *names: str, fix: str = "run the stage that writes it first") -> None:
        """Raise ``MissingTableError`` naming the first of ``names`` that does not exist
        yet, with ``fix`` (e.g. "run `usersegments run` first") as the way out."""
        for name in names:
            if not self._backend.exists(self.path(name)):
                raise MissingTableError(
                    f"table '{name}' does not exist under {self.root!r}: {fix} "
                    "(see `usersegments --help` for the stages and their order)"
                )


def resolve_backend(spark: SparkSession, cfg: Config) -> str:
    """Pick the Delta backend for ``cfg.store.backend`` on this session.

    ``auto`` takes delta-spark when the session has Delta (classes and extension),
    else delta-rs when Spark runs in local mode, else fails naming the fix.
    """
    wanted = cfg.store.backend
    if wanted == "delta-spark":
        if not delta_classes_loaded(spark):
            raise StoreError(
                "store.backend is 'delta-spark' but the Delta jars are not on the classpath: "
                f"start Spark with --packages {DELTA_SPARK_PACKAGE} (or run on Databricks), "
                "or set store.backend to delta-rs in local mode"
            )
        if not delta_spark_ready(spark):
            raise StoreError(
                "store.backend is 'delta-spark' but the session lacks Delta's extension: add "
                "--conf spark.sql.extensions=io.delta.sql.DeltaSparkSessionExtension --conf "
                "spark.sql.catalog.spark_catalog=org.apache.spark.sql.delta.catalog.DeltaCatalog"
            )
        return "delta-spark"
    if wanted == "delta-rs":
        return "delta-rs"
    if cfg.spark.mode == "databricks" or delta_spark_ready(spark):
        return "delta-spark"
    master = spark.sparkContext.master if getattr(spark, "_jvm", None) is not None else ""
    if master.startswith("local"):
        return "delta-rs"
    raise ConfigError(
        f"store.backend is 'auto' and Spark runs on {master!r} without Delta: add --packages "
        f"{DELTA_SPARK_PACKAGE} with the Delta extension settings (see conf/cluster.yaml), or "
        "set store.backend explicitly"
    )


def check_schema_compatible(table: StructType, incoming: StructType, name: str) -> None:
    """Raise ``SchemaMismatchError`` unless ``incoming`` has ``table``'s columns and types.

    Column order and nullability do not matter; names, count and types do.
    """
    want = {f.name: f.dataType.simpleString() for f in table.fields}
    got = {f.name: f.dataType.simpleString() for f in incoming.fields}
    problems = []
    missing = [c for c in want if c not in got]
    extra = [c for c in got if c not in want]
    if missing:
        problems.append(f"missing columns {missing}")
    if extra:
        problems.append(f"unexpected columns {extra}")
    changed = [
        f"{c}: table has {want[c]}, rows have {got[c]}"
        for c in want
        if c in got and want[c] != got[c]
    ]
    if changed:
        problems.append("type changes (" + "; ".join(changed) + ")")
    if problems:
        raise SchemaMismatchError(
            f"rows written to table '{name}' do not match its schema: {', '.join(problems)}. "
            "Write the table's columns with its types, or overwrite the table to change its schema"
        )


def _check_columns_exist(df: DataFrame, columns: Sequence[str], what: str) -> None:
    absent = [c for c in columns if c not in df.columns]
    if absent:
        raise ValueError(f"{what} names columns {absent} that the DataFrame lacks: {df.columns}")


def _check_unique_keys(df: DataFrame, keys: list[str], name: str) -> None:
    null_key = F.lit(False)
    for key in keys:
        null_key = null_key | F.col(key).isNull()
    nulls = df.filter(null_key).limit(1).count()
    if nulls:
        raise ValueError(f"merge into '{name}': key columns {keys} must not be null")
    dup = df.groupBy(*keys).count().filter(F.col("count") > 1).limit(1).collect()
    if dup:
        example = {k: dup[0][k] for k in keys}
        raise ValueError(
            f"merge into '{name}': source rows must have unique keys {keys}; "
            f"{example} appears {dup[0]['count']} times"
        )


def _normalise_root(root: str) -> str:
    if _is_local(root):
        path = root[len("file://") :] if root.startswith("file://") else root
        return str(Path(path).expanduser().resolve())
    return root


def _is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


class _DeltaSparkBackend:
    """Delta tables through the delta-spark jars (clusters, Databricks)."""

    name = "delta-spark"

    def __init__(self, spark: SparkSession) -> None:
        self.spark = spark

    def _table(self, path: str) -> Any:
        from delta.tables import DeltaTable

        return DeltaTable.forPath(self.spark, path)

    def exists(self, path: str) -> bool:
        from delta.tables import DeltaTable

        return bool(DeltaTable.isDeltaTable(self.spark, path))

    def read(self, path: str, version: int | None) -> DataFrame:
        reader = self.spark.read.format("delta")
        if version is not None:
            reader = reader.option("versionAsOf", version)
        return reader.load(path)

    def schema(self, path: str) -> StructType:
        return self.read(path, None).schema

    def write(self, df: DataFrame, path: str, mode: WriteMode, partition_by: list[str]) -> None:
        writer = df.write.format("delta").mode(mode)
        if mode == "overwrite":
            writer = writer.option("overwriteSchema", "true")
        if partition_by:
            writer = writer.partitionBy(*partition_by)
        writer.save(path)

    def merge(
        self,
        df: DataFrame,
        path: str,
        on: Sequence[str],
        when_matched: MatchedAction,
        when_not_matched: NotMatchedAction,
    ) -> MergeResult:
        condition = " AND ".join(f"t.`{k}` = s.`{k}`" for k in on)
        builder = self._table(path).alias("t").merge(df.alias("s"), condition)
        if when_matched == "update":
            builder = builder.whenMatchedUpdateAll()
        if when_not_matched == "insert":
            builder = builder.whenNotMatchedInsertAll()
        builder.execute()
        last = self._table(path).history(1).collect()[0]
        metrics = last["operationMetrics"] or {}
        return MergeResult(
            inserted=int(metrics.get("numTargetRowsInserted", 0)),
            updated=int(metrics.get("numTargetRowsUpdated", 0)),
        )

    def version(self, path: str) -> int:
        return int(self._table(path).history(1).collect()[0]["version"])

    def file_count(self, path: str) -> int:
        return int(self.spark.sql(f"DESCRIBE DETAIL delta.`{path}`").first()["numFiles"])

    def compact(self, path: str) -> None:
        self._table(path).optimize().executeCompaction()

    def vacuum(self, path: str, retention_hours: float) -> int:
        # Delta refuses a retention under 7 days unless its safety check is off: the
        # setting is the user's deliberate choice, so it is honoured for this call only.
        check = "spark.databricks.delta.retentionDurationCheck.enabled"
        previous = self.spark.conf.get(check, "true")
        self.spark.conf.set(check, "false")
        try:
            removed = self._table(path).vacuum(retention_hours)
        finally:
            self.spark.conf.set(check, previous)
        # delta-spark's vacuum returns an empty frame, not the files it deleted: the
        # count is only known on delta-rs (the maintain metric reads 0 here).
        return int(removed.count()) if removed is not None else 0

    def history(self, path: str) -> list[TableVersion]:
        rows = self._table(path).history().orderBy(F.col("version").desc()).collect()
        return [
            TableVersion(
                version=int(r["version"]),
                timestamp=r["timestamp"],
                operation=r["operation"],
                parameters=dict(r["operationParameters"] or {}),
                metrics=dict(r["operationMetrics"] or {}),
            )
            for r in rows
        ]


class _DeltaRsBackend:
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
        from deltalake import DeltaTable

        return bool(DeltaTable.is_deltatable(path, storage_options=self.storage_options))

    def schema(self, path: str) -> StructType:
        return _spark_schema(self._table(path))

    def read(self, path: str, version: int | None) -> DataFrame:
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

    def write(self, df: DataFrame, path: str, mode: WriteMode, partition_by: list[str]) -> None:
        from deltalake import write_deltalake

        with self._staged(df) as reader:
            write_deltalake(
                path,
                reader,
                mode=mode,
                partition_by=partition_by or None,
                schema_mode="overwrite" if mode == "overwrite" else None,
                storage_options=self.storage_options,
            )

    def merge(
        self,
        df: DataFrame,
        path: str,
        on: Sequence[str],
        when_matched: MatchedAction,
        when_not_matched: NotMatchedAction,
    ) -> MergeResult:
        predicate = " AND ".join(f't."{k}" = s."{k}"' for k in on)
        # The target's column order, so that insert_all/update_all line up by name and type.
        target_columns = self.schema(path).fieldNames()
        with self._staged(df.select(*[F.col(f"`{c}`") for c in target_columns])) as reader:
            merger = self._table(path).merge(
                source=reader,
                predicate=predicate,
                source_alias="s",
                target_alias="t",
                streamed_exec=True,
            )
            if when_matched == "update":
                merger = merger.when_matched_update_all()
            if when_not_matched == "insert":
                merger = merger.when_not_matched_insert_all()
            metrics = merger.execute()
        return MergeResult(
            inserted=int(metrics.get("num_target_rows_inserted", 0)),
            updated=int(metrics.get("num_target_rows_updated", 0)),
        )

    def version(self, path: str) -> int:
        return int(self._table(path).version())

    def file_count(self, path: str) -> int:
        return len(self._table(path).file_uris())

    def compact(self, path: str) -> None:
        self._table(path).optimize.compact()

    def vacuum(self, path: str, retention_hours: float) -> int:
        table = self._table(path)
        removed = table.vacuum(
            retention_hours=math.floor(retention_hours),
            dry_run=False,
            enforce_retention_duration=False,
        )
        # A checkpoint lets readers skip replaying every JSON commit of a long history.
        table.create_checkpoint()
        table.cleanup_metadata()
        return len(removed)

    def history(self, path: str) -> list[TableVersion]:
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

    def _staged(self, df: DataFrame) -> _StagedRows:
        return _StagedRows(df, self.staging_dir, self.batch_rows)


class _StagedRows:
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
        self.df.write.mode("overwrite").parquet(self.folder)
        schema = _all_nullable(to_arrow_schema(self.df.schema, timezone="UTC"))
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
