"""The ONNX Runtime path: export to ONNX, int8 quantization, CPU sessions.

An exported model is cached on disk per encoder id (``onnx_cache_dir``) and shared
by every worker of the machine.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from usersegments.embed.model import EmbedderSpec
from usersegments.errors import SetupError


def onnx_cache_dir() -> Path:
    """Where exported ONNX models live: ``$USERSEGMENTS_CACHE/onnx`` (default
    ``~/.cache/usersegments/onnx``)."""
    base = os.environ.get("USERSEGMENTS_CACHE") or Path.home() / ".cache" / "usersegments"
    return Path(base) / "onnx"


def onnx_model_file(model: Any, spec: EmbedderSpec) -> Path:
    """The model exported to ONNX (int8 weights with ``quantize=int8``), built once per
    encoder id and reused by every worker; written to a temporary name and renamed, so
    workers exporting at once never read half a file."""
    import tempfile

    folder = onnx_cache_dir() / spec.encoder_id.replace("/", "_").replace("@", "-")
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
    feed-forward output (activation outliers, see ``embedder.INT8_KEEP_FP32``) kept in
    fp32."""
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
