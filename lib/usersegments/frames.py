"""Small DataFrame helpers every stage uses: literal maps and pandas -> Spark frames."""

from __future__ import annotations

from collections.abc import Mapping
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


def to_spark(spark: SparkSession, frame: pd.DataFrame, schema: StructType) -> DataFrame:
    """A pandas frame as a Spark DataFrame of exactly ``schema``'s columns, in its order."""
    return spark.createDataFrame(frame[[field.name for field in schema.fields]], schema)
