"""Reading event files and the item catalog into frames of strings (the raw contract)."""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from usersegments.config import InputConfig
from usersegments.errors import InputError
from usersegments.ingest.parsing import normalize_text_column
from usersegments.ingest.sources import InputSource, resolve_inputs
from usersegments.ingest.unreadable import reading
from usersegments.store import TableStore

RAW_COLUMNS = ("user_id", "event_time", "event_type", "item_id", "text", "value")
CORRUPT = "_corrupt_record"


def read_raw_events(
    spark: SparkSession,
    sources: list[InputSource],
    cfg: InputConfig,
    items_given: bool,
    store: TableStore | None = None,
) -> DataFrame:
    """Read every source into one frame of strings: RAW_COLUMNS, raw_record, source.

    No source (every file given was empty) reads as no rows.
    """
    frames = []
    for source in sources:
        with reading(source.paths):
            frames.append(_to_raw(_read_source(spark, source, store), source, cfg, items_given))
    if not frames:
        schema = ", ".join(f"{c} string" for c in (*RAW_COLUMNS, "raw_record", "source"))
        return spark.createDataFrame([], schema)
    raw = frames[0]
    for frame in frames[1:]:
        raw = raw.unionByName(frame)
    return raw


def raw_from_frame(
    df: DataFrame, cfg: InputConfig, fmt: str, where: str, items_given: bool
) -> DataFrame:
    """A frame already read (a stream's micro-batch, with a ``source`` column naming each
    row's file or table) as the raw frame of strings ``read_raw_events`` makes; ``where``
    names it in errors."""
    return _to_raw(df, InputSource((where,), fmt), cfg, items_given)


def _read_source(spark: SparkSession, source: InputSource, store: TableStore | None) -> DataFrame:
    """One source as Spark reads it, plus the ``source`` file of every row."""
    paths = list(source.paths)
    if source.format == "csv":
        df = _read_csv(spark, paths)
    elif source.format == "jsonl":
        df = (
            spark.read.option("mode", "PERMISSIVE")
            .option("columnNameOfCorruptRecord", CORRUPT)
            .option("primitivesAsString", True)
            .json(paths)
        )
    elif source.format == "parquet":
        df = spark.read.option("mergeSchema", True).parquet(*paths)
    elif source.format == "delta":
        if store is None:
            raise InputError(
                f"{paths[0]!r} is a Delta table, which cannot be read without a table store: "
                "give the item catalog as Parquet, CSV or JSON lines"
            )
        return store.read_path(paths[0]).withColumn("source", F.lit(paths[0]))
    else:
        raise InputError(
            f"unknown input format {source.format!r}: set input.format (--format) to auto, "
            "parquet, csv, jsonl or delta"
        )
    return df.withColumn("source", F.col("_metadata.file_path"))


def _read_csv(spark: SparkSession, paths: list[str]) -> DataFrame:
    """CSV files of one header, every column a string; a row that does not fit the
    header keeps its text in the corrupt-record column instead of failing the read."""
    header = spark.read.option("header", True).option("multiLine", True).csv(paths[0]).columns
    schema = T.StructType(
        [T.StructField(c, T.StringType()) for c in header]
        + [T.StructField(CORRUPT, T.StringType())]
    )
    return (
        spark.read.option("header", True)
        .option("multiLine", True)
        .option("escape", '"')
        .option("mode", "PERMISSIVE")
        .option("columnNameOfCorruptRecord", CORRUPT)
        .schema(schema)
        .csv(paths)
    )


def _to_raw(df: DataFrame, source: InputSource, cfg: InputConfig, items_given: bool) -> DataFrame:
    """The mapped input columns as RAW_COLUMNS strings, after checking the required ones."""
    mapping = cfg.columns.model_dump()
    where = (
        source.paths[0]
        if len(source.paths) == 1
        else f"{source.paths[0]} (+{len(source.paths) - 1} more)"
    )
    present = [c for c in df.columns if c not in (CORRUPT, "source")]
    if not present and CORRUPT in df.columns:
        return _unparsed_lines(df.sparkSession, source.paths)
    for required in ("user_id", "event_time"):
        if mapping[required] not in df.columns:
            raise InputError(
                f"events in {where} have no column {mapping[required]!r} for {required}: map it "
                f"with input.columns.{required} (columns found: {present})"
                + _layout_hint(present, source.format)
            )
    if mapping["text"] not in df.columns and not (items_given and mapping["item_id"] in df.columns):
        raise InputError(
            f"events in {where} have no text column {mapping['text']!r} and no item catalog to "
            "supply text: map input.columns.text, or pass --items with input.columns.item_id mapped"
        )
    columns = [
        (
            _as_string(df, mapping[name])
            if mapping[name] in df.columns
            else F.lit(None).cast("string")
        ).alias(name)
        for name in RAW_COLUMNS
    ]
    corrupt = F.col(CORRUPT) if CORRUPT in df.columns else F.lit(None).cast("string")
    return df.select(*columns, corrupt.alias("raw_record"), F.col("source").cast("string"))


def _unparsed_lines(spark: SparkSession, paths: list[str]) -> DataFrame:
    """Every non-blank line of files in which no line parsed (invalid UTF-8 bytes, not JSON
    lines) as a malformed row, so the rejection report says why instead of losing them.

    Read again as text: Spark refuses a query of the corrupt-record column alone.
    """
    nothing = F.lit(None).cast("string")
    return (
        spark.read.text(paths)
        .where(F.trim("value") != "")
        .select(
            *[nothing.alias(name) for name in RAW_COLUMNS],
            F.col("value").alias("raw_record"),
            F.col("_metadata.file_path").alias("source"),
        )
    )


def _layout_hint(present: list[str], fmt: str) -> str:
    """Why a required column may be missing when the file's layout, not the mapping, is off."""
    if any("\x00" in name for name in present):
        return "; the header holds NUL characters: the file looks UTF-16, save it as UTF-8"
    if fmt == "csv" and len(present) == 1 and any(sep in present[0] for sep in "\t;|"):
        return (
            f"; the header {present[0]!r} is one column: the file is not comma-separated, "
            "write it with commas"
        )
    return ""


def _column(name: str) -> Column:
    """The column called ``name``, whatever characters (dots, backticks) the name holds."""
    return F.col("`" + name.replace("`", "``") + "`")


def _as_string(df: DataFrame, name: str) -> Column:
    """A column as text that parses back to the same value (times with their zone).

    Bytes that are not UTF-8 (a Parquet binary column) become U+FFFD, so the row is
    rejected as invalid_encoding, as a CSV reader's replacement characters are.
    """
    dtype = df.schema[name].dataType
    col = _column(name)
    if isinstance(dtype, T.TimestampType):
        return F.date_format(col, "yyyy-MM-dd'T'HH:mm:ss.SSSSSSXXX")
    if isinstance(dtype, T.TimestampNTZType):
        return F.date_format(col, "yyyy-MM-dd'T'HH:mm:ss.SSSSSS")
    return F.make_valid_utf8(col.cast("string"))


def read_items(spark: SparkSession, path: str, cfg: InputConfig) -> DataFrame:
    """The item catalog as (item_id, item_text, category), one row per item id."""
    sources = resolve_inputs([path], "auto")
    with reading([p for source in sources for p in source.paths]):
        frames = [_read_source(spark, source, None) for source in sources]
    if not frames:
        raise InputError(
            f"item catalog {path!r} holds no rows (its files are empty): pass a catalog with "
            "items in it to --items, or leave --items out"
        )
    df = frames[0]
    for frame in frames[1:]:
        df = df.unionByName(frame, allowMissingColumns=True)
    mapping = cfg.item_columns
    for key in ("item_id", "text"):
        name = getattr(mapping, key)
        if name not in df.columns:
            found = [c for c in df.columns if c not in (CORRUPT, "source")]
            raise InputError(
                f"item catalog {path!r} has no column {name!r} for {key}: map it with "
                f"input.item_columns.{key} (columns found: {found})"
            )
    category = (
        _as_string(df, mapping.category)
        if mapping.category in df.columns
        else F.lit(None).cast("string")
    )
    items = df.select(
        F.trim(_as_string(df, mapping.item_id)).alias("item_id"),
        normalize_text_column(_as_string(df, mapping.text), cfg.lowercase).alias("item_text"),
        category.alias("category"),
    ).filter(F.col("item_id").isNotNull() & (F.col("item_id") != ""))
    # One row per item: the catalog may repeat an id; keep a deterministic choice.
    pick = Window.partitionBy("item_id").orderBy(F.col("item_text").asc_nulls_last())
    return items.withColumn("_n", F.row_number().over(pick)).filter("_n = 1").drop("_n")
