"""Representative items: a segment's most touched items nearest its centroid."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from usersegments.config import LabelConfig
from usersegments.label.terms import distinct_texts
from usersegments.profile import target_matrix


def item_hashes(events: DataFrame) -> DataFrame:
    """One text hash per item id: the one its events carry most often (ties by hash)."""
    counts = (
        events.filter(F.col("item_id").isNotNull() & F.col("text_hash").isNotNull())
        .groupBy("item_id", "text_hash")
        .count()
    )
    order = Window.partitionBy("item_id").orderBy(F.desc("count"), F.asc("text_hash"))
    return (
        counts.withColumn("_rank", F.row_number().over(order))
        .filter("_rank = 1")
        .select("item_id", "text_hash")
    )


def item_texts(events: DataFrame) -> DataFrame:
    """One text per item id: the text (and its hash) its events carry most often.
    Texts travel once per distinct hash, not once per event: narrow ``events`` to the
    items wanted first where only some are."""
    return (
        item_hashes(events)
        .join(distinct_texts(events), "text_hash", "left")
        .select("item_id", "text_hash", "text")
    )


def representative_items(
    member_events: DataFrame,
    segments: DataFrame,
    vectors: DataFrame,
    cfg: LabelConfig,
) -> dict[str, list[str]]:
    """segment_id -> item ids nearest to its centroid among its most touched items."""
    touched = (
        member_events.filter(F.col("item_id").isNotNull())
        .groupBy("segment_id", "item_id")
        .agg(F.countDistinct("user_id").alias("members"))
    )
    popular = Window.partitionBy("segment_id").orderBy(F.desc("members"), F.asc("item_id"))
    candidates = touched.withColumn("_p", F.row_number().over(popular)).filter(
        F.col("_p") <= cfg.item_candidates
    )
    items = item_hashes(member_events).join(vectors, "text_hash")
    # segments has one row per segment: its centroids travel with the function.
    centroids = {
        r["segment_id"]: r["centroid"] for r in segments.select("segment_id", "centroid").collect()
    }
    scored = centroid_similarities(candidates, items.select("item_id", "embedding"), centroids)
    nearest = Window.partitionBy("segment_id").orderBy(F.desc("similarity"), F.asc("item_id"))
    rows = (
        scored.withColumn("_rank", F.row_number().over(nearest))
        .filter(F.col("_rank") <= cfg.n_top_items)
        .select("segment_id", "item_id", "_rank")
        .collect()
    )
    out: dict[str, list[tuple[int, str]]] = {}
    for row in rows:
        out.setdefault(row["segment_id"], []).append((row["_rank"], row["item_id"]))
    return {seg: [item for _, item in sorted(pairs)] for seg, pairs in out.items()}


SIMILARITY_SCHEMA = T.StructType(
    [
        T.StructField("segment_id", T.StringType()),
        T.StructField("item_id", T.StringType()),
        T.StructField("similarity", T.DoubleType()),
    ]
)


def centroid_similarities(
    pairs: DataFrame, item_vectors: DataFrame, centroids: Mapping[str, Sequence[float]]
) -> DataFrame:
    """segment_id, item_id, similarity (cosine for unit vectors) of each (segment_id,
    item_id) of ``pairs`` whose item has a vector in ``item_vectors`` (item_id,
    embedding) and whose segment a centroid in ``centroids``.

    Each item's vector crosses to Python once with the segments it is a candidate of,
    and the centroids travel with the function: per pair, a copy of both vectors (a
    join, then a per-row dot) costs more than the arithmetic.
    """
    index, matrix = target_matrix(centroids)
    per_item = (
        pairs.groupBy("item_id")
        .agg(F.collect_list("segment_id").alias("_segments"))
        .join(item_vectors, "item_id")
    )

    def similarities(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for pdf in batches:
            out: list[tuple[str, str, float]] = []
            for item, segments, vector in zip(
                pdf["item_id"], pdf["_segments"], pdf["embedding"], strict=True
            ):
                known = [s for s in segments if s in index]
                if vector is None or not known or len(vector) != matrix.shape[1]:
                    continue
                rows = matrix[[index[s] for s in known]]
                sims = rows @ np.asarray(vector, dtype=np.float64)
                out.extend(zip(known, [item] * len(known), sims.tolist(), strict=True))
            if out:
                yield pd.DataFrame.from_records(out, columns=SIMILARITY_SCHEMA.fieldNames())

    return per_item.mapInPandas(similarities, schema=SIMILARITY_SCHEMA)
