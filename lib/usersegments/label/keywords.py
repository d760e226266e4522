"""Segment keywords: class-based TF-IDF over members' weighted terms, then the
distinctive, non-repeating ones (see the package docstring)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from usersegments.config import Config, LabelConfig
from usersegments.label.terms import distinct_texts, event_terms
from usersegments.profile import event_weight, user_anchor


def class_tfidf(weighted_terms: DataFrame, cfg: LabelConfig) -> DataFrame:
    """c-TF-IDF of (segment_id, term, weight[, user_id][, events]) rows -> segment_id, term,
    score, rank; only terms that describe their segment, at most
    ``label.keyword_candidates`` per segment.

    ``score(t, c) = tf(t, c) / |c| * log(1 + A / f(t))``: ``tf`` the term's weight
    in segment c, ``|c|`` c's total term weight, ``A`` the mean of those totals,
    ``f(t)`` the term's weight over all segments. A term is scored in a segment
    only when

    - it occurs in at least ``label.min_df`` events overall and (rows with a
      ``user_id`` or ``MEMBER_BOUNDS``) is used by at least ``label.min_members``
      members of c;
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
    return scored_terms(term_counts(weighted_terms, cfg), cfg)


def term_counts(weighted_terms: DataFrame, cfg: LabelConfig) -> DataFrame:
    """segment_id, term, tf (summed weight), events, members: the terms that occur in
    at least ``label.min_df`` events overall. A row of ``weighted_terms`` stands for
    one event, or for ``events`` events when it has that column. One row per segment
    and term, so small enough to cache while ``scored_terms`` reads it several times."""
    members = _members(weighted_terms.columns, cfg).alias("members")
    # Rows that stand for several events of one text carry their count (``events``).
    has_counts = "events" in weighted_terms.columns
    events = (F.sum("events") if has_counts else F.count(F.lit(1))).alias("events")
    per_term = weighted_terms.groupBy("segment_id", "term").agg(
        F.sum("weight").alias("tf"), events, members
    )
    frequent = (
        per_term.groupBy("term")
        .agg(F.sum("events").alias("df"))
        .filter(F.col("df") >= cfg.min_df)
        .select("term")
    )
    return per_term.join(frequent, "term")


# Columns of a row of terms that stands for several members' events: the least and the
# greatest of their user ids (see ``_members``).
MEMBER_BOUNDS = ("first_member", "last_member")


def _members(columns: Sequence[str], cfg: LabelConfig) -> Column:
    """How many members use a (segment, term): distinct ``user_id``s; with
    ``MEMBER_BOUNDS`` instead, 1 when the least and greatest member ids agree and 2
    otherwise (at least two members: exact for ``label.min_members`` up to 2, without a
    row per member and term); rows without either stand for one member each."""
    if "user_id" in columns:
        return F.countDistinct("user_id")
    if MEMBER_BOUNDS[0] in columns:
        if cfg.min_members > 2:
            raise ValueError("member bounds tell 1 member from 2 or more: min_members <= 2")
        first, last = MEMBER_BOUNDS
        return F.when(F.min(first) == F.max(last), F.lit(1)).otherwise(F.lit(2))
    return F.count(F.lit(1))


def scored_terms(kept: DataFrame, cfg: LabelConfig) -> DataFrame:
    """``class_tfidf`` of the ``term_counts`` rows ``kept``."""
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
    too_spread = _too_spread(cfg)
    shares = _without_boilerplate_edges(shares, spread, overall, cfg)
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


def _too_spread(cfg: LabelConfig) -> Column:
    """Whether a term's weight is spread over more segments than boilerplate may be
    (``spread`` against ``n_segments``, see ``class_tfidf``)."""
    return F.col("spread") > 1 + cfg.max_segment_share * (F.col("n_segments") - 1)


def _without_boilerplate_edges(
    shares: DataFrame, spread: DataFrame, overall: DataFrame, cfg: LabelConfig
) -> DataFrame:
    """``shares`` less the n-grams that begin or end with a boilerplate word.

    A boilerplate word does not edge a phrase ("re science" from a "Re: Science ..."
    subject line) even when the phrase itself is rarer.
    """
    boilerplate = (
        spread.crossJoin(overall)
        .filter(_too_spread(cfg) & ~F.col("term").contains(" "))
        .select(F.col("term").alias("_word"))
    )
    for edge in (F.substring_index("term", " ", 1), F.substring_index("term", " ", -1)):
        shares = shares.join(boilerplate, edge == F.col("_word"), "left_anti")
    return shares


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

    ``member_events``: segment_id, user_id plus the events columns (text, text_hash,
    event_type, event_time, value); each distinct text is tokenized once, however
    many events carry it; ``cfg.profile.half_life_days`` must be resolved
    (the stored profiles', ``halflife.stored_profile_half_life``). Each event has the
    profile's weight, decayed from its member's own anchor (so long-idle members
    still count) and divided by its user's total so that every member weighs the
    same in their segment's term frequencies, as in profiles: a prolific poster's
    signature or pet words do not become the segment's keywords.
    """
    with_text = member_events.filter(F.col("text_hash").isNotNull() & F.col("text").isNotNull())
    weighted = with_text.withColumn("weight", event_weight(cfg.profile, user_anchor(as_of)))
    weighted = weighted.filter(F.col("weight") > 0).withColumn(
        "weight", F.col("weight") / F.sum("weight").over(Window.partitionBy("user_id"))
    )
    # Each distinct text is tokenized once: a segment's events of one text become one
    # row (their weights summed, their count kept) before the texts' terms join in.
    # Members are told apart by their least and greatest user ids (``_members``), so a
    # text's row stands for all its members' events; a higher label.min_members needs a
    # row per member and text.
    if cfg.label.min_members <= 2:
        first, last = MEMBER_BOUNDS
        keys, bounds = [], [F.min("user_id").alias(first), F.max("user_id").alias(last)]
        members = list(MEMBER_BOUNDS)
    else:
        keys, bounds, members = ["user_id"], [], ["user_id"]
    per_text = weighted.groupBy("segment_id", *keys, "text_hash").agg(
        F.sum("weight").alias("weight"), F.count(F.lit(1)).alias("events"), *bounds
    )
    terms = event_terms(distinct_texts(member_events), cfg.label).select("text_hash", "terms")
    exploded = per_text.join(terms, "text_hash").select(
        "segment_id", *members, F.explode("terms").alias("term"), "weight", "events"
    )
    # Every join of the scoring reads the counts again: without the cache each one would
    # aggregate the member events and tokenize the texts anew.
    counts = term_counts(exploded, cfg.label).persist()
    try:
        ranked = scored_terms(counts, cfg.label).collect()
    finally:
        counts.unpersist()
    candidates: dict[str, list[tuple[str, float]]] = {}
    for row in ranked:
        candidates.setdefault(row["segment_id"], []).append((row["term"], row["score"]))
    return {seg: distinct_keywords(terms, cfg.label) for seg, terms in candidates.items()}
