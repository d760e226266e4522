"""Texts embedded by their parts (``embed.parts: split``).

Ingest joins an item's text and the event's own text with ``TEXT_PART_SEPARATOR``
("item | review"), so a log where many events review few items holds far more distinct
texts than distinct parts. In ``split`` mode a text is cut in two where ingest joined
it (``input.text_source`` says which separator), the model embeds each distinct part once
(cached in ``text_embeddings`` like any text: a part is the text of its own hash), and a
text's vector is composed from its parts' vectors: their mean weighted by each part's
words, up to ``embed.max_length``. Mean pooling weighs a concatenated text's tokens the
same way, so the composed vector approximates the whole text's (cosine 0.97 on average
over the 39k texts of 1M generated events) at a fraction of the model's work.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from usersegments.ingest.cleaning import TEXT_PART_SEPARATOR

# Columns of ``text_parts``.
PART_HASH = "part_hash"
PART_TEXT = "part_text"
PART_WEIGHT = "part_weight"


def text_parts(texts: DataFrame, max_length: int, text_source: str) -> DataFrame:
    """``text_hash, part_hash, part_text, part_weight``: one row per non-blank part of each
    of ``texts`` (``text_hash, text``). A text is split in two where ingest joins its
    parts under ``input.text_source``: at the first separator for ``item_then_event`` (an
    item's text comes first, and a review may hold the separator itself), at the last for
    ``event_then_item``; never for ``item`` or ``event``, which join nothing. A text
    without a separator is its own single part, with its own hash."""
    text = F.col("text")
    if text_source in SPLIT_PATTERNS:
        split = F.regexp_extract(text, SPLIT_PATTERNS[text_source], 1)
        rest = F.regexp_extract(text, SPLIT_PATTERNS[text_source], 2)
        pieces = F.when(split != "", F.array(split, rest)).otherwise(F.array(text))
    else:
        pieces = F.array(text)
    exploded = texts.select("text_hash", F.explode(pieces).alias("_piece"))
    part = F.trim(F.col("_piece"))
    return exploded.filter(part != "").select(
        "text_hash",
        F.sha2(part, 256).alias(PART_HASH),  # ingest's text_hash of the same text
        part.alias(PART_TEXT),
        F.least(_words(part), F.lit(max_length)).cast("double").alias(PART_WEIGHT),
    )


# (?s): a part may span lines. The lazy group splits at the first separator, the greedy
# one at the last.
_SEP = re.escape(TEXT_PART_SEPARATOR)
SPLIT_PATTERNS = {
    "item_then_event": rf"(?s)^(.+?){_SEP}(.+)$",
    "event_then_item": rf"(?s)^(.+){_SEP}(.+?)$",
}


def _words(text: Column) -> Column:
    """Whitespace-separated words of a trimmed, non-blank ``text``."""
    return F.size(F.split(text, r"\s+"))


def distinct_parts(parts: DataFrame) -> DataFrame:
    """``text_hash, text`` of each distinct part of ``parts`` (``text_parts``): the texts
    the model embeds, in the shape ``flag_cached`` takes."""
    return parts.select(
        F.col(PART_HASH).alias("text_hash"), F.col(PART_TEXT).alias("text")
    ).dropDuplicates(["text_hash"])


def composite_parts(parts: DataFrame) -> DataFrame:
    """The rows of ``parts`` whose text is not its own single part: the texts whose vector
    is composed (a single-part text's vector is its part's, stored under its own hash)."""
    composite = parts.filter(F.col(PART_HASH) != F.col("text_hash")).select("text_hash")
    return parts.join(composite.distinct(), "text_hash", "left_semi")


def compose_vectors(parts: DataFrame, vectors: DataFrame, normalize: bool) -> DataFrame:
    """``text_hash, embedding`` of each text of ``parts`` (``text_parts``): its parts'
    ``vectors`` (``text_hash, embedding``) averaged with ``PART_WEIGHT``, L2-normalised
    when ``normalize`` (as the model's own vectors are). A text with a part that has no
    vector gets none, so a later run composes it once every part is embedded."""
    part_vectors = vectors.select(F.col("text_hash").alias(PART_HASH), "embedding")
    grouped = (
        parts.join(part_vectors, PART_HASH, "left")
        .groupBy("text_hash")
        .agg(
            # Sorted by part: the same sum in the same order, whichever order the rows came
            # in, so a replayed batch composes the same bits.
            F.array_sort(F.collect_list(F.struct(PART_HASH, PART_WEIGHT, "embedding"))).alias(
                "_parts"
            ),
            F.count(F.lit(1)).alias("_needed"),
            F.count("embedding").alias("_found"),
        )
    )
    complete = grouped.filter(F.col("_found") == F.col("_needed"))
    vectors_of = F.transform("_parts", lambda p: p["embedding"])
    weights_of = F.transform("_parts", lambda p: p[PART_WEIGHT])
    return complete.select(
        "text_hash", _weighted_mean_udf(normalize)(vectors_of, weights_of).alias("embedding")
    )


def _weighted_mean_udf(normalize: bool):
    """A pandas UDF: each row's vectors averaged with its weights (then L2-normalised when
    ``normalize``). Vectorised in numpy: Spark's higher-order array functions run this
    arithmetic interpreted, about 30x slower."""

    @F.pandas_udf(T.ArrayType(T.FloatType(), containsNull=False))
    def weighted_mean(vectors: pd.Series, weights: pd.Series) -> pd.Series:
        out = []
        for rows, row_weights in zip(vectors, weights, strict=True):
            mean = np.asarray(row_weights, dtype=np.float64) @ np.stack(rows).astype(np.float64)
            scale = np.linalg.norm(mean) if normalize else float(np.sum(row_weights))
            out.append((mean / scale).astype(np.float32))
        return pd.Series(out)

    return weighted_mean
