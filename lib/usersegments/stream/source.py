"""Where a stream's events come from: a landing folder of event files (Spark's file
source, or Auto Loader on Databricks) or an existing Delta table of events, read with
a fixed schema; and a micro-batch of them as ingest's raw frame of strings."""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from usersegments.config import Config, StreamConfig
from usersegments.errors import ConfigError, InputError, SetupError
from usersegments.ingest import RAW_COLUMNS, raw_from_frame
from usersegments.ingest.readers import CORRUPT
from usersegments.paths import is_local, local_path
from usersegments.session import delta_spark_ready

# Spark's name of each landing file format.
SPARK_FORMATS = {"jsonl": "json", "csv": "csv", "parquet": "parquet"}


def landing_schema(cfg: Config) -> T.StructType:
    """The schema every landing file is read with: ``stream.schema_ddl``, else each mapped
    input column (``input.columns``) as a string, plus the reader's corrupt-record column
    for JSON lines and CSV (a row that does not parse is quarantined, not lost)."""
    scfg = cfg.stream
    if scfg.schema_ddl:
        try:
            schema = T.StructType.fromDDL(scfg.schema_ddl)
        except Exception as error:  # pyspark raises its parse errors as several types
            raise ConfigError(
                f"stream.schema_ddl {scfg.schema_ddl!r} is no Spark DDL schema ({error}); write "
                "it as 'user_id string, event_time timestamp, text string, value double'"
            ) from None
    else:
        mapping = cfg.input.columns.model_dump()
        schema = T.StructType([T.StructField(mapping[c], T.StringType()) for c in RAW_COLUMNS])
    if scfg.format != "parquet" and CORRUPT not in schema.fieldNames():
        schema = schema.add(T.StructField(CORRUPT, T.StringType()))
    return schema


def read_events(
    spark: SparkSession, cfg: Config, path: str, on_databricks: bool = False
) -> DataFrame:
    """The streaming frame of new events at ``path`` (``stream.source``), each row with
    the ``source`` it came from (its file, or the table's path)."""
    scfg = cfg.stream
    if scfg.source == "delta":
        return _delta_table(spark, scfg, path)
    check_landing_folder(path)
    schema = landing_schema(cfg)
    if on_databricks and scfg.auto_loader:
        reader = _auto_loader(spark, scfg)
    else:
        reader = _file_source(spark, scfg)
    return reader.schema(schema).load(path).withColumn("source", F.col("_metadata.file_path"))


def check_landing_folder(path: str) -> None:
    """A local landing folder must exist (Spark would wait on a typo forever)."""
    if is_local(path) and not local_path(path).is_dir():
        raise InputError(
            f"--source {path!r} is no folder: give the landing folder the event files arrive "
            "in (create it first), or set stream.source to delta for a Delta table"
        )


def _file_source(spark: SparkSession, scfg: StreamConfig):
    """Spark's file source over the landing folder, oldest files first."""
    reader = spark.readStream.format(SPARK_FORMATS[scfg.format])
    return _trigger_limits(_reader_options(reader, scfg.format), scfg)


def _auto_loader(spark: SparkSession, scfg: StreamConfig):
    """Databricks Auto Loader (``cloudFiles``) over the landing folder: file discovery
    without listing the folder every batch; the schema stays the configured one."""
    reader = spark.readStream.format("cloudFiles").option(
        "cloudFiles.format", SPARK_FORMATS[scfg.format]
    )
    return _trigger_limits(_reader_options(reader, scfg.format), scfg, prefix="cloudFiles.")


def _trigger_limits(reader, scfg: StreamConfig, prefix: str = ""):
    """How much one micro-batch takes (``stream.max_files_per_trigger``/``max_bytes_per_
    trigger``); Auto Loader names the same options under ``cloudFiles.``."""
    if scfg.max_files_per_trigger:
        reader = reader.option(f"{prefix}maxFilesPerTrigger", scfg.max_files_per_trigger)
    if scfg.max_bytes_per_trigger:
        reader = reader.option(f"{prefix}maxBytesPerTrigger", scfg.max_bytes_per_trigger)
    return reader


def _reader_options(reader, fmt: str):
    """The options the batch ingest reads each format with: keep unparsable rows."""
    if fmt == "parquet":
        return reader
    reader = reader.option("mode", "PERMISSIVE").option("columnNameOfCorruptRecord", CORRUPT)
    if fmt == "csv":
        # The header is checked against the schema's names instead of being trusted.
        reader = (
            reader.option("header", True)
            .option("enforceSchema", False)
            .option("multiLine", True)
            .option("escape", '"')
        )
    return reader


def _delta_table(spark: SparkSession, scfg: StreamConfig, path: str) -> DataFrame:
    """An existing Delta table of events as a stream of its appended rows (delta-spark)."""
    if not delta_spark_ready(spark):
        raise SetupError(
            "stream.source delta reads the table with delta-spark, which this session lacks: "
            "run `make` (fetches the Delta jars) or start Spark with the delta-spark package"
        )
    reader = _trigger_limits(spark.readStream.format("delta"), scfg)
    return reader.load(path).withColumn("source", F.lit(path))


def raw_batch(frame: DataFrame, cfg: Config, path: str, items_given: bool) -> DataFrame:
    """One micro-batch as ingest's raw frame of strings (``ingest.raw_from_frame``)."""
    fmt = "delta" if cfg.stream.source == "delta" else cfg.stream.format
    return raw_from_frame(frame, cfg.input, fmt, path, items_given)
