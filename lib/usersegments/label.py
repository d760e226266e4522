"""Label: describe each segment with keywords, representative items and a label.

- **Keywords** by class-based TF-IDF (c-TF-IDF): every segment is one class, its
  document is the texts of its members' events. Web and e-mail addresses are
  removed, texts are split into lowercase runs of letters and digits, and terms
  are the 1..``label.ngram_max``-grams of that contiguous sequence that begin and
  end with a content token (not a stop word, number or single character), so
  every term occurs as written. A term counts once per event, weighted by the
  profile's event weight divided by the member's total, so every member weighs
  the same. ``score(t, c) = tf(t, c) / |c| * log(1 + A / f(t))``, ``|c|`` the
  class's total term weight, ``A`` the mean of those totals, ``f(t)`` the term's
  weight over all classes. A keyword must be used by ``label.min_members``
  members, be more frequent in its segment than in the others, and not be spread
  over more than ``1 + label.max_segment_share * (K - 1)`` of the K segments
  (boilerplate: reply prefixes, signatures), nor begin or end with such a
  word. Each segment's best
  ``label.keyword_candidates`` terms reach the driver, where near-duplicates
  merge, words compared up to a plural "s"/"es" ("stars five" and "five"
  after "five stars", "guns" after "gun"; an n-gram replaces its
  part when it scores ``label.phrase_share`` of it) down to ``label.n_keywords``.
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

import pandas as pd
from pyspark.ml.feature import StopWordsRemover
from pyspark.sql import Column, DataFrame, SparkSession, Window
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
# Web and e-mail addresses (and news message ids, which look like them) are removed
# before tokenising: their parts ("www", "com", "edu", a user's login) describe no
# interest, and a signature's address would otherwise label its poster's segment.
ADDRESSES = (
    r"(?i)(?:\b[a-z][a-z0-9+.-]*://\S+"  # scheme://anything up to a space
    r"|\bwww\.\S+"  # www.host/path without a scheme
    r"|[\w.+-]+@[\w-]+(?:\.[\w-]+)+)"  # user@host.domain
)
# An apostrophe inside a word joins it ("don't" -> "dont"), so contractions are one
# token (matched against stop words written the same way), not "don" + "t".
INNER_APOSTROPHE = r"(?<=\p{L})['\u2019](?=\p{L})"


def stop_words(cfg: LabelConfig) -> list[str]:
    """English stop words (Spark's list) when enabled, plus ``label.stop_words``;
    lowercase, each also without its apostrophes ("don't" and "dont")."""
    words = StopWordsRemover.loadDefaultStopWords("english") if cfg.english_stop_words else []
    lowered = {w.lower() for w in [*words, *cfg.stop_words]}
    return sorted(lowered | {w.replace("'", "").replace("\u2019", "") for w in lowered})


def event_terms(events: DataFrame, cfg: LabelConfig) -> DataFrame:
    """``events`` (with ``text``) plus ``terms``: its distinct 1..ngram_max-grams.

    Web and e-mail addresses are removed, then the text is split into lowercase
    runs of letters and digits. N-grams are taken from that contiguous sequence
    (so every term occurs as written), and an n-gram must begin and end with a
    content token: one of at least 2 characters that is neither a stop word nor
    a pure number (sizes, counts). A stop word or number inside a trigram is kept
    ("bill of rights", "windows 3 1" is not: it ends in a number).
    """
    stops = F.array(*[F.lit(w) for w in stop_words(cfg)])
    text = F.regexp_replace(F.col("text"), ADDRESSES, " ")
    text = F.regexp_replace(F.lower(text), INNER_APOSTROPHE, "")
    prepared = (
        events.filter(F.col("text").isNotNull())
        .withColumn("_tokens", F.filter(F.split(text, TOKEN_GAPS), lambda t: t != ""))
        .withColumn(
            "_content",
            F.transform(
                "_tokens",
                lambda t: (F.length(t) >= 2) & ~t.rlike(r"^\d+$") & ~F.array_contains(stops, t),
            ),
        )
    )
    grams = [_ngrams(n) for n in range(1, cfg.ngram_max + 1)]
    terms = F.array_distinct(F.flatten(F.array(*grams)))
    return prepared.withColumn("terms", terms).drop("_tokens", "_content")


def _ngrams(n: int) -> Column:
    """The n-grams of ``_tokens`` whose first and last tokens are content (``_content``)."""
    size = F.size("_tokens")
    starts = F.when(size >= n, F.sequence(F.lit(1), size - n + 1)).otherwise(
        F.array().cast("array<int>")
    )
    kept = F.filter(
        starts, lambda i: F.element_at("_content", i) & F.element_at("_content", i + (n - 1))
    )
    return F.transform(kept, lambda i: F.array_join(F.slice("_tokens", i, n), " "))


def class_tfidf(weighted_terms: DataFrame, cfg: LabelConfig) -> DataFrame:
    """c-TF-IDF of (segment_id, term, weight[, user_id]) rows -> segment_id, term,
    score, rank; only terms that describe their segment, at most
    ``label.keyword_candidates`` per segment.

    ``score(t, c) = tf(t, c) / |c| * log(1 + A / f(t))``: ``tf`` the term's weight
    in segment c, ``|c|`` c's total term weight, ``A`` the mean of those totals,
    ``f(t)`` the term's weight over all segments. A term is scored in a segment
    only when

    - it occurs in at least ``label.min_df`` events overall and (rows with a
      ``user_id``) is used by at least ``label.min_members`` members of c;
    - it is more frequent in c (tf / |c|) than in the other segments together:
      a keyword tells the segment apart;
    - it is no boilerplate: with ``p_c = tf(t, c) / |c|``, its weight is spread
      over ``(sum p_c)^2 / sum p_c^2`` segments (inverse Simpson; 1 when one
      segment has it all, K when all K have it equally), which must not exceed
      ``1 + label.max_segment_share * (K - 1)``. Measured relative to K - 1, the
      cut keeps distinctive terms when there are only 2 or 3 segments. An
      n-gram that begins or ends with such a boilerplate word is cut too.

    Ranks start at 1 (ties by term).
    """
    has_users = "user_id" in weighted_terms.columns
    members = (F.countDistinct("user_id") if has_users else F.count(F.lit(1))).alias("members")
    per_term = weighted_terms.groupBy("segment_id", "term").agg(
        F.sum("weight").alias("tf"), F.count(F.lit(1)).alias("events"), members
    )
    frequent = (
        per_term.groupBy("term")
        .agg(F.sum("events").alias("df"))
        .filter(F.col("df") >= cfg.min_df)
        .select("term")
    )
    kept = per_term.join(frequent, "term")
    class_totals = kept.groupBy("segment_id").agg(F.sum("tf").alias("class_total"))
    overall = class_totals.agg(
        F.avg("class_total").alias("mean_total"),
        F.sum("class_total").alias("grand_total"),
        F.count(F.lit(1)).alias("n_segments"),
    )
    shares = kept.join(class_totals, "segment_id").withColumn(
        "share", F.col("tf") / F.col("class_total")
    )
    spread = shares.groupBy("term").agg(
        F.sum("tf").alias("term_total"),
        (F.sum("share") * F.sum("share") / F.sum(F.col("share") * F.col("share"))).alias("spread"),
    )
    # A boilerplate word also does not begin or end a phrase ("re science" from a
    # "Re: Science ..." subject line), even when the phrase itself is rarer.
    too_spread = F.col("spread") > 1 + cfg.max_segment_share * (F.col("n_segments") - 1)
    boilerplate = (
        spread.crossJoin(overall)
        .filter(too_spread & ~F.col("term").contains(" "))
        .select(F.col("term").alias("_word"))
    )
    edges = [F.substring_index("term", " ", 1), F.substring_index("term", " ", -1)]
    for edge in edges:
        shares = shares.join(boilerplate, edge == F.col("_word"), "left_anti")
    rest_total = F.col("grand_total") - F.col("class_total")
    rest_share = F.when(rest_total > 0, (F.col("term_total") - F.col("tf")) / rest_total)
    scored = (
        shares.join(spread, "term")
        .crossJoin(overall)
        .filter(F.col("members") >= cfg.min_members)
        .filter(~too_spread)
        .filter(rest_share.isNull() | (F.col("share") > rest_share))
        .withColumn(
            "score",
            F.col("share") * F.log(1.0 + F.col("mean_total") / F.col("term_total")),
        )
    )
    order = Window.partitionBy("segment_id").orderBy(F.desc("score"), F.asc("term"))
    return (
        scored.withColumn("rank", F.row_number().over(order))
        .filter(F.col("rank") <= cfg.keyword_candidates)
        .select("segment_id", "term", "score", "rank")
    )


def distinct_keywords(ranked: Sequence[tuple[str, float]], cfg: LabelConfig) -> list[str]:
    """The best ``label.n_keywords`` of (term, score) candidates, best first, without
    near-duplicates.

    Words are compared up to a plural ending ("guns" is "gun"). A term whose words
    are all in a chosen keyword ("stars five", "five" or "star" after "five
    stars") is skipped. A term that contains all words of a chosen keyword
    (its n-gram: "clipper chip" after "clipper") takes that keyword's place when it
    scores at least ``label.phrase_share`` of it, and is skipped otherwise; a
    phrase covering several chosen keywords takes the first one's place.
    """
    chosen: list[tuple[str, float]] = []
    for term, score in sorted(ranked, key=lambda ts: (-ts[1], ts[0])):
        words = term.split()
        if any(_covers(c.split(), words) for c, _ in chosen):
            continue
        parts = [i for i, (c, _) in enumerate(chosen) if _covers(words, c.split())]
        if parts:
            if score < cfg.phrase_share * chosen[parts[0]][1]:
                continue
            chosen[parts[0]] = (term, chosen[parts[0]][1])  # keeps the part's place
            chosen = [c for i, c in enumerate(chosen) if i not in parts[1:]]
        elif len(chosen) < cfg.n_keywords:
            chosen.append((term, score))
    return [term for term, _ in chosen]


# English plural endings: "guns" repeats "gun", "windows" repeats "window".
PLURAL_ENDINGS = ("s", "es")


def _same_word(a: str, b: str) -> bool:
    """Whether two words are one, up to a plural ending."""
    short, long = sorted((a, b), key=len)
    return short == long or any(short + end == long for end in PLURAL_ENDINGS)


def _covers(words: Sequence[str], part: Sequence[str]) -> bool:
    """Whether every word of ``part`` is in ``words`` (up to plural endings)."""
    return all(any(_same_word(p, w) for w in words) for p in part)


def segment_keywords(
    member_events: DataFrame, cfg: Config, as_of: datetime
) -> dict[str, list[str]]:
    """segment_id -> its keywords, best first, from its members' weighted events.

    ``member_events``: segment_id, user_id plus the events columns (text,
    event_type, event_time, value); ``cfg.profile.half_life_days`` must be resolved
    (the stored profiles', ``halflife.stored_profile_half_life``). Each event has the
    profile's weight, decayed from its member's own anchor (so long-idle members
    still count) and divided by its user's total so that every member weighs the
    same in their segment's term frequencies, as in profiles: a prolific poster's
    signature or pet words do not become the segment's keywords.
    """
    weighted = event_terms(member_events, cfg.label).withColumn(
        "weight", event_weight(cfg.profile, user_anchor(as_of))
    )
    weighted = weighted.filter(F.col("weight") > 0).withColumn(
        "weight", F.col("weight") / F.sum("weight").over(Window.partitionBy("user_id"))
    )
    exploded = weighted.select("segment_id", "user_id", F.explode("terms").alias("term"), "weight")
    ranked = class_tfidf(exploded, cfg.label).collect()
    candidates: dict[str, list[tuple[str, float]]] = {}
    for row in ranked:
        candidates.setdefault(row["segment_id"], []).append((row["term"], row["score"]))
    return {seg: distinct_keywords(terms, cfg.label) for seg, terms in candidates.items()}


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
