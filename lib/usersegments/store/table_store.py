"""``TableStore``: every table of a run is a Delta table under one root, behind the
backend ``choice.resolve_backend`` picks."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from usersegments.config import Config
from usersegments.errors import (
    ChangeFeedUnavailable,
    InputError,
    MissingTableError,
    StoreError,
)
from usersegments.frames import computed_once
from usersegments.paths import is_local, local_path
from usersegments.schema import is_append_only, records_changes, table_properties
from usersegments.store.backend import (
    Backend,
    Maintenance,
    MatchedAction,
    MergeResult,
    NotMatchedAction,
    TableVersion,
    Txn,
    WriteMode,
)
from usersegments.store.checks import (
    check_choice,
    check_columns_exist,
    check_schema_compatible,
    check_unique_keys,
)
from usersegments.store.choice import resolve_backend
from usersegments.store.delta_rs import DeltaRsBackend
from usersegments.store.delta_spark import DeltaSparkBackend
from usersegments.store.retention import vacuum_due

# The source column of ``replace_groups`` that marks a stored row to delete.
DELETE_FLAG = "_usersegments_delete"


class TableStore:
    """Read, write, merge, version and time-travel the Delta tables under ``root``."""

    def __init__(self, spark: SparkSession, root: str, backend: Backend) -> None:
        self.spark = spark
        self.root = root
        self._backend = backend

    @classmethod
    def from_config(cls, spark: SparkSession, cfg: Config) -> TableStore:
        """Build the store for ``cfg.store`` with the backend ``resolve_backend`` picks."""
        backend_name = resolve_backend(spark, cfg)
        root = _normalise_root(cfg.store.root)
        backend: Backend
        if backend_name == "delta-spark":
            backend = DeltaSparkBackend(spark)
        else:
            backend = DeltaRsBackend(
                spark,
                batch_rows=cfg.store.write_batch_rows,
                staging_dir=cfg.store.staging_dir,
                storage_options=cfg.store.storage_options,
            )
        if is_local(root):
            local_path(root).mkdir(parents=True, exist_ok=True)
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

    @contextmanager
    def inserted_since(
        self,
        name: str,
        after_version: int,
        through_version: int,
        columns: Sequence[str] | None = None,
    ) -> Iterator[DataFrame]:
        """Context manager: the rows (``columns``, default all) that the commits after
        ``after_version`` up to ``through_version`` inserted into table ``name``, read from
        its change data feed; use the frame inside the context only.

        Raises ``ChangeFeedUnavailable`` when the table does not record its changes
        (created without ``delta.enableChangeDataFeed``) or the versions cannot be read
        any more; an error of the computation itself (a vacuumed file) surfaces when the
        frame is first computed. ``after_version == through_version`` is an empty frame.
        """
        self.require(name)
        current = self.version(name)
        if not 0 <= after_version <= through_version <= current:
            raise StoreError(
                f"table '{name}' has versions 0..{current}; cannot read the changes after "
                f"version {after_version} through {through_version}"
            )
        if not records_changes(self.properties(name)):
            raise ChangeFeedUnavailable(
                f"table '{name}' does not record its changes (it was created without "
                "delta.enableChangeDataFeed, e.g. by an older version)"
            )
        schema = self.schema(name)
        wanted = list(columns) if columns is not None else schema.fieldNames()
        if after_version == through_version:
            fields = [schema[c] for c in wanted]
            yield self.spark.createDataFrame([], StructType(fields))
            return
        path = self.path(name)
        with self._backend.inserted_rows(path, after_version, through_version, wanted) as rows:
            yield rows

    def read_path(self, path: str) -> DataFrame:
        """Any Delta table by its path (an input, not one of this store's tables)."""
        if not self._backend.exists(path):
            raise InputError(
                f"{path!r} is not a Delta table (no _delta_log with commits): point the "
                "source at a Delta table's folder, or set its format to the files' format"
            )
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
        txn: Txn | None = None,
    ) -> bool:
        """Append ``df`` to table ``name`` (creating it) or overwrite it, schema included.

        With ``txn`` the write is idempotent: it commits the application transaction
        with it, and is skipped (returns False) when the table already holds that
        transaction (see ``Txn``); otherwise it returns True.

        A table this creates gets the Delta properties its contract declares
        (``schema.TABLE_PROPERTIES``). Appending rows whose columns or types differ
        from the table's raises ``SchemaMismatchError``, and overwriting an
        append-only table ``StoreError``, before anything is written.
        """
        check_choice("mode", mode, ("append", "overwrite"))
        partitions = list(partition_by or [])
        check_columns_exist(df, partitions, "partition_by")
        path = self.path(name)
        exists = self._backend.exists(path)
        if exists and mode == "overwrite":
            self._refuse_if_append_only(name, "an overwrite")
        if exists and mode == "append":
            check_schema_compatible(self._backend.schema(path), df.schema, name)
        # Properties are the table's from its creation on: an overwrite keeps them.
        properties = {} if exists else table_properties(name)
        return self._backend.write(df, path, mode, partitions, properties, txn)

    def merge(
        self,
        df: DataFrame,
        name: str,
        on: Sequence[str],
        when_matched: MatchedAction = "update",
        when_not_matched: NotMatchedAction = "insert",
        partition_by: Sequence[str] | None = None,
        within: Mapping[str, Sequence[str]] | None = None,
        keys_unique: bool = False,
    ) -> MergeResult:
        """Upsert ``df`` into table ``name`` on the key columns ``on``.

        Matched rows are updated (or left alone with ``when_matched="ignore"``);
        new keys are inserted (or dropped with ``when_not_matched="ignore"``).
        A table that does not exist yet is created (``partition_by`` applies then).
        Keys must be non-null and unique in ``df``: merging the same rows twice
        changes nothing the second time. ``within`` (partition column -> values, as
        text) says which partitions of the table can hold a match: the caller knows the
        keys imply the partition (an event id implies its month). The merge then reads
        only those partitions' files, not the whole table. ``keys_unique``: the caller
        made the keys unique and non-null itself (kept one row per key with a window), so
        the check of that, a pass over ``df`` grouped by key, is skipped.
        """
        check_choice("when_matched", when_matched, ("update", "ignore"))
        check_choice("when_not_matched", when_not_matched, ("insert", "ignore"))
        keys = list(on)
        if not keys:
            raise ValueError("merge needs at least one key column in 'on'")
        check_columns_exist(df, keys, "on")
        with computed_once(df) as source:
            if not keys_unique:
                check_unique_keys(source, keys, name)
            path = self.path(name)
            if not self._backend.exists(path):
                if when_not_matched == "ignore":
                    return MergeResult(inserted=0, updated=0)
                self.write(source, name, mode="append", partition_by=partition_by)
                # The new table's rows are the source's: counted from the log's
                # statistics, not by a pass over the source before the write.
                return MergeResult(inserted=self._backend.row_count(path), updated=0)
            check_schema_compatible(self._backend.schema(path), source.schema, name)
            if when_matched == "update":
                self._refuse_if_append_only(name, "a merge that updates matched rows")
            return self._backend.merge(
                source, path, keys, when_matched, when_not_matched, within=within
            )

    def replace_groups(
        self, df: DataFrame, name: str, on: Sequence[str], group: Sequence[str]
    ) -> MergeResult:
        """Make the rows of every group in ``df`` (its distinct ``group`` values, a part of
        the key ``on``) exactly ``df``'s, in one merge: rows of those groups are updated
        or inserted on ``on``, and their stored rows whose key ``df`` lacks are deleted.
        Rows of other groups are not touched. A missing table is created.

        Why not an upsert: a group may shrink (a user with three interests now has two),
        and an upsert would leave the third row behind. Why not delete then insert: one
        commit, so a reader never sees a group without rows and a crash leaves the old ones.
        """
        keys, groups = list(on), list(group)
        if not set(groups) <= set(keys):
            raise ValueError(f"replace_groups: group {groups} must be part of the key {keys}")
        check_columns_exist(df, keys, "on")
        with computed_once(df) as source:
            check_unique_keys(source, keys, name)
            return self._replace_checked_groups(source, name, keys, groups)

    def _replace_checked_groups(
        self, df: DataFrame, name: str, keys: list[str], groups: list[str]
    ) -> MergeResult:
        path = self.path(name)
        if not self._backend.exists(path):
            count = df.count()
            self.write(df, name, mode="append")
            return MergeResult(inserted=count, updated=0)
        check_schema_compatible(self._backend.schema(path), df.schema, name)
        self._refuse_if_append_only(name, "a merge that deletes rows")
        # Stored keys of the groups in df that df no longer has: each becomes a source row
        # flagged for deletion (its other columns null; only the key is matched on).
        gone = (
            self.read(name)
            .select(*keys)
            .join(df.select(*groups).distinct(), groups, "left_semi")
            .join(df.select(*keys), keys, "left_anti")
        )
        markers = gone.select(
            *[
                F.col(f.name) if f.name in keys else F.lit(None).cast(f.dataType).alias(f.name)
                for f in df.schema
            ]
        )
        source = df.withColumn(DELETE_FLAG, F.lit(False)).unionByName(
            markers.withColumn(DELETE_FLAG, F.lit(True))
        )
        return self._backend.merge(source, path, keys, "update", "insert", delete_flag=DELETE_FLAG)

    def properties(self, name: str) -> dict[str, str]:
        """The Delta properties of table ``name`` (``delta.appendOnly``, ...), as its
        log records them."""
        self.require(name)
        return self._backend.properties(self.path(name))

    def _refuse_if_append_only(self, name: str, what: str) -> None:
        """Raise ``StoreError`` before ``what`` is tried on an append-only table (Delta
        would refuse the commit anyway, after the rows were computed and written)."""
        if is_append_only(self._backend.properties(self.path(name))):
            raise StoreError(
                f"table '{name}' is append-only (delta.appendOnly=true), so {what} is "
                "refused: append to it (or merge with when_matched='ignore'), or, if its rows "
                "must change, lift the property with ALTER TABLE delta.`"
                f"{self.path(name)}` SET TBLPROPERTIES ('delta.appendOnly' = 'false')"
            )

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

    def row_count(self, name: str) -> int:
        """Rows in table ``name``'s current version, from the Delta log's statistics where
        they can vouch for it (no second scan of a table just written)."""
        self.require(name)
        return self._backend.row_count(self.path(name))

    def maintain(
        self,
        name: str,
        compact_min_files: int,
        retention_hours: float,
        zorder_by: Sequence[str] = (),
    ) -> Maintenance:
        """Keep table ``name`` fast to read as commits pile up: compact its small files
        into few (a new version with the same rows) once it has ``compact_min_files``,
        z-ordering them by ``zorder_by`` when given (OPTIMIZE ZORDER BY: rows of a key
        land in few files), checkpoint its log, and vacuum data files that no version
        of the last ``retention_hours`` needs (time travel beyond that is given up) when
        its history says some may be deletable (``retention.vacuum_due``)."""
        columns = tuple(zorder_by)
        if columns:
            present = self.schema(name).fieldNames()
            missing = [c for c in columns if c not in present]
            if missing:
                raise ValueError(
                    f"zorder_by {missing} are not columns of table '{name}' (has {present})"
                )
        path = self.path(name)
        before = after = self.file_count(name)
        zordered: tuple[str, ...] = ()
        if before >= compact_min_files:
            if columns:
                # A z-order rewrites every file, so it is done only when the table is
                # due for a rewrite anyway; it compacts as it clusters.
                self._backend.zorder(path, columns)
                zordered = columns
            else:
                self._backend.compact(path)
            after = self.file_count(name)
        self._backend.checkpoint(path)
        due = vacuum_due(self._backend.history(path), retention_hours, datetime.now(timezone.utc))
        vacuumed = self._backend.vacuum(path, retention_hours) if due else 0
        # Compacted means fewer files: a table already at one file per partition (events
        # by day) is left as it is by the backend.
        return Maintenance(name, before, after, after < before, vacuumed, zordered, due)

    def tables(self) -> list[str]:
        """Names of the tables present under the root (local roots only)."""
        if not is_local(self.root) or not local_path(self.root).is_dir():
            return []
        return sorted(
            p.name for p in local_path(self.root).iterdir() if p.is_dir() and self.exists(p.name)
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


def _normalise_root(root: str) -> str:
    """An absolute, ``~``-expanded path for a local root; an object-store URI unchanged."""
    if is_local(root):
        return str(local_path(root).resolve())
    return root
