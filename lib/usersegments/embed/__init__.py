"""Embed: distinct texts of ``events`` -> ``text_embeddings``, each text once per model.

Modules:

- ``model``: ``resolve_model_path``, ``weights_digest``, ``resolve_runtime`` (what
  ``embed.runtime: auto`` becomes), ``model_id`` and the picklable ``EmbedderSpec``
  (which model, and every setting that changes vectors).
- ``embedder``: ``TextEmbedder`` on torch (length-sorted micro-batches, pooling,
  int8), device resolution and the per-process embedder cache ``get_embedder``.
- ``onnx``: ONNX export, ONNX Runtime int8 quantization and CPU sessions.
- ``udf``: the Spark iterator pandas UDF and the task's GPU address.
- ``parts``: ``embed.parts: split``, "item | review" texts cut where ingest joined them,
  each distinct part embedded once, a text's vector composed from its parts'.
- ``stage``: the ``embed`` stage ``run_embed``, ``flag_cached`` (which texts it embeds) and
  ``model_vectors`` (the cached vectors later stages read).
"""

from __future__ import annotations

from usersegments.config import DEFAULT_MODEL
from usersegments.embed.embedder import TextEmbedder, get_embedder
from usersegments.embed.model import EmbedderSpec, model_id, resolve_model_path, resolve_runtime
from usersegments.embed.stage import model_vectors, run_embed

__all__ = [
    "DEFAULT_MODEL",
    "EmbedderSpec",
    "TextEmbedder",
    "get_embedder",
    "model_id",
    "model_vectors",
    "resolve_model_path",
    "resolve_runtime",
    "run_embed",
]
