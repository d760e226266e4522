"""Small DataFrame helpers every stage uses: literal maps, a pandas function per key,
partitions for iterative fits, and pandas -> Spark frames."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import pandas as pd
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructType


def literal_map(mapping: Mapping[Any, Any]) -> Column:
    """A Spark map column holding ``mapping`` (a small driver-side dict: event weights,
    id renames, leaf -> cluster), for lookups like ``literal_map(m)[F.col("key")]``."""
    if not mapping:
        # A bare map() is map<void,void>, which Spark refuses to index with a typed key
        # (profile.event_weights: {} failed so); as strings it finds nothing for any key,
        # and its null coalesces with a default of any type.
        return F.create_map().cast("map<string,string>")
    return F.create_map(*[F.lit(part) for pair in mapping.items() for part in pair])


def one_partition_per_core(frame: DataFrame, spark: SparkSession) -> DataFrame:
    """``frame`` in at most as many partitions as the cluster has cores (a coalesce: no
    shuffle). For a frame that iterative MLlib fits read a few hundred times (one job a
    bisecting iteration): every task beyond one per core is only scheduling overhead,
    which on a small frame split by an upstream shuffle costs more than the work."""
    cores = spark.sparkContext.defaultParallelism
    if frame.rdd.getNumPartitions() <= cores:
        return frame
    return frame.coalesce(cores)


def apply_per_key(
    frame: DataFrame,
    key: str,
    order: Sequence[str],
    function: Callable[[pd.DataFrame], pd.DataFrame],
    schema: StructType,
) -> DataFrame:
    """``function`` applied to each ``key``'s rows (a pandas frame sorted by ``order``),
    its results concatenated: what ``groupBy(key).applyInPandas`` does, for many small
    groups.

    ``applyInPandas`` sends every group to Python as its own Arrow stream; with a group
    per user that per-group cost dominates (on 2,000 users' Ward interests it took 3.7x
    as long as this). Here rows are hash-partitioned by ``key`` and sorted within each
    partition, and ``mapInPandas`` walks the sorted batches: a key cut by a batch
    boundary is carried into the next batch, so a worker holds one Arrow batch
    (``spark.sql.execution.arrow.maxRecordsPerBatch`` rows) plus one key's rows. Like
    ``applyInPandas``, a key's rows must fit in one worker: cap them upstream.
    """

    def complete_groups(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        carried: pd.DataFrame | None = None
        for batch in batches:
            if carried is not None:
                batch = pd.concat([carried, batch], ignore_index=True)
            if batch.empty:
                continue
            # Sorted by key: the last key's rows are the batch's tail, maybe cut short.
            last = batch[key].to_numpy() == batch[key].iloc[-1]
            carried = batch[last]
            done = [function(rows) for _, rows in batch[~last].groupby(key, sort=False)]
            done = [result for result in done if len(result)]
            if done:
                yield pd.concat(done, ignore_index=True)
        if carried is not None and len(carried):
            result = function(carried.reset_index(drop=True))
            if len(result):
                yield result

    return (
        frame.repartition(key)
        .sortWithinPartitions(key, *order)
        .mapInPandas(complete_groups, schema=schema)
    )


def to_spark(spark: SparkSession, frame: pd.DataFrame, schema: StructType) -> DataFrame:
    """A pandas frame as a Spark DataFrame of exactly ``schema``'s columns, in its order."""
    return spark.createDataFrame(frame[[field.name for field in schema.fields]], schema)
