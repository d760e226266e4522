"""Label: describe each segment with keywords, representative items and a label.

- **Keywords** by class-based TF-IDF (c-TF-IDF): every segment is one class, its
  document is the texts of its members' events. Texts are tokenised in Spark
  (MLlib ``RegexTokenizer``, ``StopWordsRemover`` with English and configured
  stop words, ``NGram`` for 1..``label.ngram_max``-grams); a term counts once per
  event, weighted by the same event weight as profiles (type x decay x value).
  ``score(t, c) = tf(t, c) / |c| * log(1 + A / f(t))`` where ``|c|`` is the class's
  total term weight, ``A`` the mean of those totals and ``f(t)`` the term's weight
  over all classes. Only each segment's top ``label.n_keywords`` terms reach the
  driver.
- **Top items**: among the segment's ``label.item_candidates`` most touched items,
  the ``label.n_top_items`` whose text vector is nearest (cosine) to the centroid.
- **Label**: the first ``label.label_keywords`` keywords that do not repeat one
  another, joined by ``label.separator`` ("trail running · ultramarathon"); or,
  when ``label.generator`` names a local text-generation model, its phrasing of
  the keywords and items.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
from pyspark.ml import Pipeline
from pyspark.ml.feature import NGram, RegexTokenizer, StopWordsRemover
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from usersegments.config import Config, LabelConfig
from usersegments.embed import model_id, model_vectors
from usersegments.errors import ConfigError
from usersegments.frames import to_spark
from usersegments.halflife import stored_profile_half_life, with_half_life
from usersegments.privacy import with_texts
from usersegments.profile import dot, event_weight, user_anchor
from usersegments.runlog import RunLog, StageResult
from usersegments.schema import SEGMENTS, conform
from usersegments.store import TableStore
from usersegments.times import max_time

# Letters and digits make tokens; everything else separates them.
TOKEN_GAPS = r"[^\p{L}\p{N}]+"


def stop_words(cfg: LabelConfig) -> list[str]:
    """English stop words (Spark's list) when enabled, plus ``label.stop_words``."""
    words = StopWordsRemover.loadDefaultStopWords("english") if cfg.english_stop_words else []
    return sorted({w.lower() for w in [*words, *cfg.stop_words]})


def event_terms(events: DataFrame, cfg: LabelConfig) -> DataFrame:
    """``events`` (with ``text``) plus ``terms``: its distinct 1..ngram_max-grams.

    Tokens are lowercase runs of letters and digits of length >= 2, without stop
    words and pure numbers (sizes, counts).
    """
    tokenizer = RegexTokenizer(
        inputCol="text", outputCol="_tokens", pattern=TOKEN_GAPS, gaps=True, minTokenLength=2
    )
    remover = StopWordsRemover(
        inputCol="_tokens", outputCol="_words", stopWords=stop_words(cfg), caseSensitive=False
    )
    stages: list[Any] = [tokenizer, remover]
    prepared = events.filter(F.col("text").isNotNull())
    tokens = Pipeline(stages=stages).fit(prepared).transform(prepared)
    tokens = tokens.withColumn("_words", F.filter("_words", lambda w: ~w.rlike(r"^\d+$")))
    gram_cols = ["_words"]
    for n in range(2, cfg.ngram_max + 1):
        out = f"_grams{n}"
        tokens = NGram(n=n, inputCol="_words", outputCol=out).transform(tokens)
        gram_cols.append(out)
    terms = F.array_distinct(F.flatten(F.array(*[F.col(c) for c in gram_cols])))
    return tokens.withColumn("terms", terms).drop("_tokens", *gram_cols)


def class_tfidf(weighted_terms: DataFrame, cfg: LabelConfig) -> DataFrame:
    """c-TF-IDF of (segment_id, term, weight) rows -> segment_id, term, score, rank.

    A term must occur in at least ``label.min_df`` events overall; ranks start at 1
    and keep the top ``label.n_keywords`` per segment (ties by term).
    """
    per_term = weighted_terms.groupBy("segment_id", "term").agg(
        F.sum("weight").alias("tf"), F.count(F.lit(1)).alias("events")
    )
    frequent = (
        per_term.groupBy("term")
        .agg(F.sum("events").alias("df"), F.sum("tf").alias("term_total"))
        .filter(F.col("df") >= cfg.min_df)
    )
    kept = per_term.join(frequent, "term")
    class_totals = kept.groupBy("segment_id").agg(F.sum("tf").alias("class_total"))
    mean_total = class_totals.agg(F.avg("class_total").alias("mean_total"))
    scored = (
        kept.join(class_totals, "segment_id")
        .crossJoin(mean_total)
        .withColumn(
            "score",
            F.col("tf")
            / F.col("class_total")
            * F.log(1.0 + F.col("mean_total") / F.col("term_total")),
        )
    )
    order = Window.partitionBy("segment_id").orderBy(F.desc("score"), F.asc("term"))
    return (
        scored.withColumn("rank", F.row_number().over(order))
        .filter(F.col("rank") <= cfg.n_keywords)
        .select("segment_id", "term", "score", "rank")
    )


def segment_keywords(
    member_events: DataFrame, cfg: Config, as_of: datetime
) -> dict[str, list[str]]:
    """segment_id -> its keywords, best first, from its members' weighted events.

    ``member_events``: segment_id plus the events columns (user_id, text, event_type,
    event_time, value); ``cfg.profile.half_life_days`` must be resolved (the stored
    profiles', ``halflife.stored_profile_half_life``).
    """
    # Each member's events weigh as in their profile: decayed from the member's own
    # anchor, so that long-idle members still describe their segment.
    with_terms = event_terms(member_events, cfg.label).withColumn(
        "weight", event_weight(cfg.profile, user_anchor(as_of))
    )
    weighted = with_terms.select("segment_id", F.explode("terms").alias("term"), "weight").filter(
        F.col("weight") > 0
    )
    ranked = class_tfidf(weighted, cfg.label).collect()
    keywords: dict[str, list[tuple[int, str]]] = {}
    for row in ranked:
        keywords.setdefault(row["segment_id"], []).append((row["rank"], row["term"]))
    return {seg: [term for _, term in sorted(terms)] for seg, terms in keywords.items()}


def item_texts(events: DataFrame) -> DataFrame:
    """One text per item id: the text (and its hash) its events carry most often."""
    counts = (
        events.filter(F.col("item_id").isNotNull() & F.col("text_hash").isNotNull())
        .groupBy("item_id", "text_hash", "text")
        .count()
    )
    order = Window.partitionBy("item_id").orderBy(F.desc("count"), F.asc("text_hash"))
    return (
        counts.withColumn("_rank", F.row_number().over(order))
        .filter("_rank = 1")
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
    items = item_texts(member_events).join(vectors, "text_hash")
    scored = (
        candidates.join(items.select("item_id", "embedding"), "item_id")
        .join(segments.select("segment_id", "centroid"), "segment_id")
        .withColumn("similarity", dot("embedding", "centroid"))
    )
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


def label_from_keywords(keywords: Sequence[str], parts: int, separator: str) -> str:
    """A short label: the first ``parts`` keywords that do not repeat one another.

    A phrase that contains an already chosen word replaces it ("trail" then
    "trail running" gives "trail running"); a keyword whose words are all chosen
    already is skipped.
    """
    chosen: list[str] = []
    for keyword in keywords:
        words = set(keyword.split())
        overlapping = [c for c in chosen if set(c.split()) & words]
        if not overlapping:
            if len(chosen) < parts:
                chosen.append(keyword)
            continue
        for c in overlapping:
            if set(c.split()) < words:  # a longer phrase of a chosen keyword
                chosen[chosen.index(c)] = keyword
                break
        chosen = list(dict.fromkeys(chosen))
    return separator.join(chosen)


class LabelGenerator:
    """Phrases labels with a local transformers text-generation model (``label.generator``)."""

    def __init__(self, path: str, max_new_tokens: int) -> None:
        if not Path(path).is_dir():
            raise ConfigError(
                f"label.generator {path!r} is not a folder; set it to a local transformers "
                "text-generation model folder or to null"
            )
        from transformers import pipeline

        self.max_new_tokens = max_new_tokens
        self._pipe = pipeline("text-generation", model=path, device="cpu")

    @staticmethod
    def prompt(keywords: Sequence[str], items: Sequence[str]) -> str:
        """The instruction given to the model for one segment."""
        return (
            "Name this audience of shoppers in a few words.\n"
            f"Keywords: {', '.join(keywords)}\n"
            f"Items: {'; '.join(items)}\n"
            "Name:"
        )

    def phrase(self, keywords: Sequence[str], items: Sequence[str]) -> str:
        """The model's label for one segment: its first non-empty line, or '' when none."""
        prompt = self.prompt(keywords, items)
        out = self._pipe(
            prompt,
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
            return_full_text=False,
        )
        text = out[0]["generated_text"] if out else ""
        lines = [line.strip(" \t\"'") for line in text.splitlines()]
        return next((line for line in lines if line), "")[:120]


def label_segments(
    segments: pd.DataFrame,
    keywords: dict[str, list[str]],
    top_items: dict[str, list[str]],
    item_text: dict[str, str],
    cfg: LabelConfig,
) -> tuple[pd.DataFrame, int]:
    """``segments`` with keywords, top_items and label filled; and how many labels a
    generator phrased (0 without ``label.generator``)."""
    out = segments.copy()
    out["keywords"] = [keywords.get(s, []) for s in out["segment_id"]]
    out["top_items"] = [top_items.get(s, []) for s in out["segment_id"]]
    out["label"] = [
        label_from_keywords(k, cfg.label_keywords, cfg.separator) or s
        for s, k in zip(out["segment_id"], out["keywords"], strict=True)
    ]
    generated = 0
    if cfg.generator:
        generator = LabelGenerator(cfg.generator, cfg.generator_max_new_tokens)
        labels = []
        for label, kws, items in zip(out["label"], out["keywords"], out["top_items"], strict=True):
            phrased = generator.phrase(kws, [item_text.get(i, i) for i in items])
            generated += bool(phrased)
            labels.append(phrased or label)
        out["label"] = labels
    return out, generated


def member_events(store: TableStore) -> DataFrame:
    """Events of clustered users, each with the user's segment_id."""
    members = store.read("user_segments").select("user_id", "segment_id")
    return with_texts(store, store.read("events")).join(members, "user_id")


def run_label(spark: SparkSession, store: TableStore, cfg: Config, run: RunLog) -> StageResult:
    """Fill ``segments``' keywords, top_items and label from its members' events."""
    store.require(
        "segments",
        "user_segments",
        "events",
        "text_embeddings",
        fix="run `usersegments run` (or `usersegments cluster`) first",
    )
    mid = model_id(cfg.embed)
    run.model_id = run.model_id or mid
    segments = store.read("segments")
    as_of = max_time(store.read("user_segments"), "as_of")
    events = member_events(store).cache()
    try:
        days = stored_profile_half_life(store, cfg.profile, events, run)
        profile_cfg = with_half_life(cfg.profile, days)
        keywords = segment_keywords(events, cfg.model_copy(update={"profile": profile_cfg}), as_of)
        vectors = model_vectors(store, mid)
        top_items = representative_items(events, segments, vectors, cfg.label)
        wanted = sorted({i for items in top_items.values() for i in items})
        texts = {
            r["item_id"]: r["text"]
            for r in item_texts(events).filter(F.col("item_id").isin(wanted)).collect()
        }
    finally:
        events.unpersist()
    # segments is small (one row per segment): described on the driver. A segment below
    # the privacy floor (possible after updates shrink it) is not described at all.
    rows = segments.toPandas()
    small = set(rows.loc[rows["size"] < cfg.privacy.min_segment_size, "segment_id"])
    keywords = {s: k for s, k in keywords.items() if s not in small}
    top_items = {s: i for s, i in top_items.items() if s not in small}
    described, generated = label_segments(rows, keywords, top_items, texts, cfg.label)
    described["run_id"] = run.run_id  # every row carries the run that last wrote it
    frame = to_spark(spark, described, SEGMENTS)
    store.write(conform(frame, SEGMENTS), "segments", mode="overwrite")
    metrics = {
        "segments_labelled": int((described["keywords"].map(len) > 0).sum()),
        "segments_without_keywords": int((described["keywords"].map(len) == 0).sum()),
        "segments_without_items": int((described["top_items"].map(len) == 0).sum()),
        "labels_generated": generated,
        "segments_below_privacy_floor": len(small),
    }
    run.record_all("label", metrics)
    return StageResult(
        stage="label", tables={"segments": store.version("segments")}, metrics=metrics
    )
