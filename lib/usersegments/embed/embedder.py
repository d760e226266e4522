"""``TextEmbedder``: texts -> unit float32 vectors with torch (or an ONNX session).

It runs wherever it is called: driver, executor, benchmark. Texts are tokenised
once, sorted by token length and run in micro-batches padded only to their own
longest text; vectors are pooled over the attention mask, L2-normalised and
returned in the original order. ``get_embedder`` keeps one loaded embedder per
spec and device in each process, so a Spark worker loads the model once and
reuses it across batches and tasks.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from usersegments.config import DEFAULT_MODEL
from usersegments.embed.model import EmbedderSpec, resolve_model_path
from usersegments.embed.onnx import onnx_session
from usersegments.errors import SetupError

log = logging.getLogger(__name__)

# BERT's first feed-forward output carries activation outliers; int8 there costs most
# of the accuracy (mean cosine to fp32 0.978 -> 0.983 when it stays fp32).
INT8_KEEP_FP32 = ("encoder.layer.0.output.dense",)

_EMBEDDERS: dict[tuple[EmbedderSpec, str | None], TextEmbedder] = {}
_EMBEDDERS_LOCK = threading.Lock()


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
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # one bar per worker would flood the console
        spec = self.spec
        path = resolve_model_path(spec.model)
        self.device_ = resolve_device(spec.device, self.gpu_address)
        if self.device_.type == "cpu" and spec.cpu_threads:
            torch.set_num_threads(spec.cpu_threads)
        model = self._pretrained(path)
        model.eval()
        self.dimension_ = int(model.config.hidden_size)
        if spec.runtime == "onnxruntime":
            if self.device_.type != "cpu":
                raise SetupError("embed.runtime=onnxruntime runs on CPU; set embed.device=cpu")
            self.session_ = onnx_session(model, spec)
            log.info("embedder %s loaded in ONNX Runtime (%s)", spec.model_id, spec.quantize)
            return self
        self.model_ = self._in_precision(model).to(self.device_)
        log.info(
            "embedder %s loaded on %s (%s)",
            spec.model_id,
            self.device_,
            next(self.model_.parameters()).dtype,
        )
        return self

    def _pretrained(self, path: str) -> Any:
        """Tokenizer (kept on self) and model from ``path``; a load failure names the fix."""
        from transformers import AutoModel, AutoTokenizer

        spec = self.spec
        try:
            self.tokenizer_ = AutoTokenizer.from_pretrained(path, revision=spec.revision)
            return AutoModel.from_pretrained(path, revision=spec.revision)
        except OSError as exc:
            offline = os.environ.get("HF_HUB_OFFLINE") == "1"
            raise SetupError(
                f"cannot load embed.model {spec.model!r}"
                + (" (HF_HUB_OFFLINE=1: the hub is not consulted)" if offline else "")
                + f": {str(exc).splitlines()[0].rstrip('.')}. Set embed.model to a local "
                "Hugging Face model folder "
                f"(for example the default, '{DEFAULT_MODEL}')"
            ) from None

    def _in_precision(self, model: Any) -> Any:
        """``model`` int8-quantized (CPU) or in the CUDA dtype the spec asks for."""
        import torch

        spec = self.spec
        if spec.quantize == "int8":
            if self.device_.type != "cpu":
                raise SetupError("embed.quantize=int8 runs on CPU only; set embed.device=cpu")
            return quantize_int8(model)
        if self.device_.type == "cuda" and spec.cuda_dtype != "fp32":
            return model.to(torch.float16 if spec.cuda_dtype == "fp16" else torch.bfloat16)
        return model

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
        # Length-sorted micro-batches pad each text only to its neighbours' length.
        order = np.argsort([len(ids) for ids in encoded], kind="stable")
        pad_id = self.tokenizer_.pad_token_id or 0
        batch_size = forward_batch_size(self.spec)
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            ids, mask = pad_batch([encoded[i] for i in index], pad_id)
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
        """How many of ``texts`` are longer than max_length tokens (re-tokenising only
        those that reached the limit)."""
        limit = self.spec.max_length
        candidates = [texts[i] for i, ids in enumerate(encoded) if len(ids) >= limit]
        if not candidates:
            return 0
        # One token past the limit tells a longer text apart; a length cap also keeps the
        # tokenizer's "sequence length is longer than the maximum" warning from users.
        longer = self.tokenizer_(candidates, truncation=True, max_length=limit + 1, padding=False)
        return sum(len(ids) > limit for ids in longer["input_ids"])


def forward_batch_size(spec: EmbedderSpec) -> int:
    """Texts per forward pass: ``embed.batch_size``, but one under int8. Dynamic int8
    quantizes activations with one scale per pass, so a text's vector would follow its
    batch-mates (cosine ~0.99 between batchings), and a replayed stream batch or an
    update would not reproduce a run's vectors. Alone, a text's vector depends on the
    text only; on one CPU thread int8 that way still runs ~1.8x torch fp32 batched."""
    return 1 if spec.quantize == "int8" else spec.batch_size


def pad_batch(batch: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """``input_ids`` and ``attention_mask`` of token lists, padded to the longest."""
    width = max(len(ids) for ids in batch)
    ids = np.full((len(batch), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(batch), width), dtype=np.int64)
    for row, seq in enumerate(batch):
        ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
    return ids, mask


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


def get_embedder(spec: EmbedderSpec, gpu_address: str | None = None) -> TextEmbedder:
    """The worker's embedder for ``spec``: loaded on first use, then reused."""
    key = (spec, gpu_address)  # frozen dataclass: hashable, every field counts
    with _EMBEDDERS_LOCK:
        if key not in _EMBEDDERS:
            _EMBEDDERS[key] = TextEmbedder(spec, gpu_address).load()
        return _EMBEDDERS[key]
