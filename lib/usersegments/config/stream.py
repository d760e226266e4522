"""The ``stream`` section: continuous updates with Spark Structured Streaming (see
``usersegments.stream``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from usersegments.config.section import Section

DEFAULT_INTERVAL = "10 seconds"


class StreamConfig(Section):
    """Where ``usersegments stream`` reads new events and how often it updates."""

    source: Literal["files", "delta"] = Field(
        "files",
        description="files: a landing folder of event files (format below); delta: an "
        "existing Delta table of events, read as a stream (delta-spark readStream).",
    )
    format: Literal["jsonl", "csv", "parquet"] = Field(
        "jsonl",
        description="Format of the landing folder's files (source files). Every file of the "
        "folder is read with one fixed schema (below), never inferred per batch.",
    )
    schema_ddl: str | None = Field(
        None,
        description="Schema of the landing files as a Spark DDL string, e.g. 'user_id string, "
        "event_time timestamp, text string, value double'. Default: every mapped input column "
        "(input.columns) as a string, which fits JSON lines and CSV; required for Parquet.",
    )
    max_files_per_trigger: int | None = Field(
        None, ge=1, description="At most this many new files per micro-batch (default: all)."
    )
    max_bytes_per_trigger: str | None = Field(
        None,
        description="Soft cap on the bytes of one micro-batch, e.g. '64m' (Delta sources and "
        "Auto Loader; default: no cap).",
    )
    trigger: Literal["availableNow", "processingTime"] = Field(
        "availableNow",
        description="availableNow: process what has landed, in micro-batches, then stop; "
        "processingTime: keep running, one micro-batch every interval.",
    )
    interval: str = Field(
        DEFAULT_INTERVAL, description="processingTime trigger: the time between micro-batches."
    )
    checkpoint: str | None = Field(
        None,
        description="Checkpoint folder of the query (offsets, commits, the query id). "
        "Default: <store.root>/checkpoints/<query_name>. Keep it with the store: it is what "
        "makes a restarted stream resume where it stopped, exactly once.",
    )
    query_name: str = Field(
        "usersegments",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$",
        description="Name of the streaming query (and of its default checkpoint folder).",
    )
    auto_loader: bool = Field(
        True,
        description="On Databricks (spark.mode databricks), read the landing folder with Auto "
        "Loader (cloudFiles) instead of Spark's file source.",
    )
    maintain_every: int = Field(
        10,
        ge=1,
        description="Maintain the tables (the maintain stage: compact, checkpoint, vacuum) in "
        "every n-th micro-batch only (batch ids n-1, 2n-1, ...): each batch commits a few "
        "small files, while maintenance costs seconds per table (1: every batch, as update).",
    )
    run_report: bool = Field(
        True,
        description="Write the HTML report after every micro-batch, as update does (off: "
        "only the tables are updated; `usersegments report` writes it on demand).",
    )

    @field_validator("interval")
    @classmethod
    def _interval_has_unit(cls, value: str) -> str:
        parts = value.split()
        if len(parts) != 2 or not parts[0].replace(".", "", 1).isdigit():
            raise ValueError(
                f"interval {value!r} must be a number and a unit, e.g. '10 seconds' or '1 minute'"
            )
        return value

    @model_validator(mode="after")
    def _parquet_needs_schema(self) -> StreamConfig:
        if self.source == "files" and self.format == "parquet" and not self.schema_ddl:
            raise ValueError(
                "stream.format parquet needs stream.schema_ddl (the files' columns and types, "
                "e.g. 'user_id string, event_time timestamp, text string, value double'): "
                "Parquet columns keep their types, so strings cannot be assumed"
            )
        return self
