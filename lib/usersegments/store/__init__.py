"""TableStore: every table of a run is a Delta table under one root.

Two real Delta backends sit behind one interface:

- ``delta-spark``: ``format("delta")`` and ``DeltaTable.forPath(...).merge``, for
  clusters and Databricks (the Delta jars on the JVM classpath).
- ``delta-rs`` (the ``deltalake`` package): the embedded default in local mode
  (no jars needed; refused elsewhere). Spark computes; the DataFrame is staged as
  Parquet and streamed as Arrow batches into delta-rs.

Modules:

- ``table_store``: ``TableStore``.
- ``choice``: ``resolve_backend``, which backend a store uses on this session.
- ``backend``: the ``Backend`` protocol, ``MergeResult``, ``Maintenance``, ``TableVersion``,
  ``Txn`` (an idempotent write's application transaction), mode literals.
- ``checks``: option, column, merge-key and schema-compatibility checks before a commit.
- ``delta_rs``: the delta-rs backend and ``StagedRows`` (Spark -> Parquet -> Arrow stream).
- ``delta_spark``: the delta-spark backend and ``DELTA_SPARK_PACKAGE`` (its jars).
- ``retention``: ``vacuum_due``, whether a table's history says a VACUUM may delete a file.

>>> store = TableStore.from_config(spark, cfg)          # doctest: +SKIP
>>> store.write(df, "events", mode="append", partition_by=["event_month"])  # doctest: +SKIP
>>> store.merge(df, "events", on=["event_id"])           # doctest: +SKIP
"""

from usersegments.store.backend import (
    Maintenance,
    MatchedAction,
    MergeResult,
    NotMatchedAction,
    TableVersion,
    Txn,
    WriteMode,
)
from usersegments.store.checks import check_schema_compatible
from usersegments.store.choice import resolve_backend
from usersegments.store.delta_spark import DELTA_SPARK_PACKAGE, delta_spark_package
from usersegments.store.table_store import TableStore

__all__ = [
    "DELTA_SPARK_PACKAGE",
    "Maintenance",
    "MatchedAction",
    "MergeResult",
    "NotMatchedAction",
    "TableStore",
    "TableVersion",
    "Txn",
    "WriteMode",
    "check_schema_compatible",
    "delta_spark_package",
    "resolve_backend",
]
