"""The Spark iterator pandas UDF that embeds a column of texts on the executors.

The UDF closes over nothing but a picklable ``EmbedderSpec`` and an optional
accumulator; torch and transformers are imported only when a worker first
loads the model.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pandas as pd
from pyspark.sql import functions as F
from pyspark.sql import types as T

from usersegments.embed.embedder import get_embedder
from usersegments.embed.model import EmbedderSpec


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
