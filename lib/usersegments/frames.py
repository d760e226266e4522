"""Small DataFrame helpers every stage uses: literal maps, a pandas function per key,
partitions for iterative fits, pandas or driver rows -> Spark frames, and a frame
computed once while a merge uses it."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from py4j.protocol import Py4JError
from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import to_arrow_schema
from pyspark.sql.types import StructType, TimestampType

from usersegments.times import collected_utc


def literal_map(mapping: Mapping[Any, Any]) -> Column:
    """A Spark map column holding ``mapping`` (a small driver-side dict: event weights,
    id renames, leaf -> cluster), for lookups like ``literal_map(m)[F.col("key")]``."""
    if not mapping:
        # A bare map() is map<void,void>, which Spark refuses to index with a typed key
        # (profile.event_weights: {} failed so); as strings it finds nothing for any key,
        # and its null coalesces with a default of any type.
        return F.create_map().cast("map<string,string>")
    return F.create_map(*[F.lit(part) for pair in mapping.items() for part in pair])


def fit_partitions(
    frame: DataFrame, spark: SparkSession, rows: int, max_rows_per_partition: int
) -> DataFrame:
    """``frame`` (of ``rows`` rows) coalesced, with no shuffle, to one partition per core,
    or more where a partition would hold over ``max_rows_per_partition`` rows; never to
    more partitions than it has.

    For a frame that an iterative MLlib fit reads a few hundred times (a Spark job per
    iteration): tasks beyond one per core add only scheduling cost, which on a small
    frame split by an upstream shuffle costs more than the work. On Spark Connect,
    where the core count is not known, ``frame`` is returned as it is.
    """
    if getattr(spark, "_jvm", None) is None:
        return frame
    cores = spark.sparkContext.defaultParallelism
    return frame.coalesce(max(cores, math.ceil(rows / max(max_rows_per_partition, 1))))


def apply_per_key(
    frame: DataFrame,
    key: str,
    order: Sequence[str],
    function: Callable[[dict[str, np.ndarray]], list[tuple]],
    schema: StructType,
    partitioned: bool = False,
) -> DataFrame:
    """``function`` applied to each ``key``'s rows, its output rows (tuples in
    ``schema``'s column order) gathered into one frame: what
    ``groupBy(key).applyInPandas`` does, for many small groups.

    ``function`` gets one key's columns as numpy arrays, sorted by ``order`` (an array
    column is an object array of arrays). ``applyInPandas`` sends every group to Python
    as its own Arrow stream, and a pandas frame per group in or out costs more than the
    work on a few dozen rows (``benchmarks/fit_overheads.py``: 2.6x as long on 2,000
    users' Ward interests; then a frame per user and per result was still about two
    thirds of the Python time). Here rows are hash-partitioned by ``key`` and sorted
    within each partition, ``mapInPandas`` walks the sorted batches and slices each
    batch's arrays per key: a key cut by a batch boundary is carried into the next
    batch, so a worker holds one Arrow batch (``spark.sql.execution.arrow.
    maxRecordsPerBatch`` rows) plus one key's rows. Like ``applyInPandas``, a key's rows
    must fit in one worker: cap them upstream. ``partitioned`` says ``frame`` is already
    hash-partitioned by ``key`` (a window over ``key`` followed by broadcast joins
    only): no second shuffle of its rows.
    """
    names = schema.fieldNames()

    def output(rows_of: pd.DataFrame) -> Iterator[pd.DataFrame]:
        rows = _rows_per_key(rows_of, key, function)
        if rows:
            yield pd.DataFrame.from_records(rows, columns=names)

    def complete_groups(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        carried: pd.DataFrame | None = None
        for batch in batches:
            if carried is not None:
                batch = pd.concat([carried, batch], ignore_index=True)
            if batch.empty:
                continue
            # Sorted by key: the last key's rows are the batch's tail, maybe cut short.
            keys = batch[key]
            last_key = keys.iloc[-1]
            last = (keys.isna() if pd.isna(last_key) else keys.eq(last_key)).to_numpy()
            carried = batch[last]
            yield from output(batch[~last])
        if carried is not None:
            yield from output(carried)

    grouped = frame if partitioned else frame.repartition(key)
    return grouped.sortWithinPartitions(key, *order).mapInPandas(complete_groups, schema=schema)


def _rows_per_key(
    batch: pd.DataFrame, key: str, function: Callable[[dict[str, np.ndarray]], list[tuple]]
) -> list[tuple]:
    """``function``'s rows for each run of equal keys of ``batch`` (sorted by ``key``;
    nulls are one key, as in ``groupBy``)."""
    if batch.empty:
        return []
    columns = {name: batch[name].to_numpy() for name in batch.columns}
    codes = pd.factorize(batch[key], use_na_sentinel=False)[0]
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    ends = np.r_[starts[1:], len(codes)]
    rows: list[tuple] = []
    for start, end in zip(starts, ends, strict=True):
        rows.extend(function({name: array[start:end] for name, array in columns.items()}))
    return rows


def to_spark(spark: SparkSession, frame: pd.DataFrame, schema: StructType) -> DataFrame:
    """A pandas frame as a Spark DataFrame of exactly ``schema``'s columns, in its order."""
    return spark.createDataFrame(frame[[field.name for field in schema.fields]], schema)


def rows_to_spark(
    spark: SparkSession, rows: Sequence[Sequence[Any]], schema: StructType
) -> DataFrame:
    """Rows built on the driver (run records, figures) as a Spark DataFrame of ``schema``.

    The frame is a local relation, as from pandas, so the delta-rs store commits it
    without a Spark job. A naive datetime is local time, as ``createDataFrame`` of
    tuples reads it; nulls stay nulls in every column type.
    """
    arrow_schema = to_arrow_schema(schema, timezone="UTC")
    columns = list(zip(*rows, strict=True)) if rows else [()] * len(schema.fields)
    arrays = [
        pa.array(
            [v if v is None else collected_utc(v) for v in values]
            if isinstance(field.dataType, TimestampType)
            else values,
            type=arrow_schema.field(field.name).type,
        )
        for field, values in zip(schema.fields, columns, strict=True)
    ]
    return spark.createDataFrame(pa.Table.from_arrays(arrays, schema=arrow_schema), schema)


def driver_held(df: DataFrame) -> bool:
    """Whether ``df``'s optimized plan is a local relation: rows that the driver holds
    already (``createDataFrame`` of pandas or Arrow data, ``rows_to_spark``, and
    projections of them), which need no Spark job to reach the driver again."""
    try:
        plan = df._jdf.queryExecution().optimizedPlan()
        return bool(plan.getClass().getSimpleName() == "LocalRelation")
    except (AttributeError, Py4JError):  # Spark Connect has no JVM plan to ask
        return False


@contextmanager
def computed_once(df: DataFrame) -> Iterator[DataFrame]:
    """Context manager: ``df`` persisted (in memory, spilling to disk) while a merge checks
    its keys and commits it, so that its plan (often joins over events) runs once, not
    once per pass; rows the driver holds, and a frame its caller cached, are yielded as
    they are (and stay as they were)."""
    if df.is_cached or driver_held(df):
        yield df
        return
    source = df.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        yield source
    finally:
        source.unpersist()


@contextmanager
def sorted_aggregation(spark: SparkSession) -> Iterator[None]:
    """Context manager: aggregates planned inside it group rows by sorting, not in a hash
    map. MLlib's ``Summarizer`` keeps one object buffer per key; a hash aggregate gives up
    after 128 keys per task (``spark.sql.objectHashAggregate.sortBased.fallbackThreshold``)
    and re-sorts every row with its vector, while rows already sorted by the key (a window
    over it) stream through a sort aggregate as they come. Measured on the profile of 1M
    events: 25.1 s -> 11.8 s with the ``sum`` metric (RESULTS.md)."""
    key = "spark.sql.execution.useObjectHashAggregateExec"
    before = spark.conf.get(key, None)
    spark.conf.set(key, "false")
    try:
        yield
    finally:
        if before is None:
            spark.conf.unset(key)
        else:
            spark.conf.set(key, before)
