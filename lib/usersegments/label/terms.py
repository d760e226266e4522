"""Terms of event texts: addresses removed, tokens of letters and digits, and the
contiguous n-grams that begin and end with a content token."""

from __future__ import annotations

from pyspark.ml.feature import StopWordsRemover
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from usersegments.config import LabelConfig

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


def distinct_texts(events: DataFrame) -> DataFrame:
    """text_hash, text: each text of ``events`` once (events without a text left out)."""
    return (
        events.filter(F.col("text_hash").isNotNull() & F.col("text").isNotNull())
        .select("text_hash", "text")
        .dropDuplicates(["text_hash"])
    )


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
