"""Parsing raw strings: event times (ISO-8601 or epoch) and text normalisation."""

from __future__ import annotations

import pandas as pd
from pyspark.sql import Column
from pyspark.sql import functions as F
from pyspark.sql import types as T

# Zero-width and bidirectional formatting marks: invisible, and they split words.
_FORMAT_CHARS = r"[\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]"
_CONTROL_CHARS = r"[\x00-\x1f\x7f-\x9f]"
_ZONELESS = (
    r"^(\d{4})-(\d{1,2})-(\d{1,2})(?:[T ](\d{1,2}):(\d{1,2})(?::(\d{1,2}(?:\.\d{1,6})?)\d*)?)?$"
)
_HAS_ZONE = r"(Z|z|[+-]\d{2}(:?\d{2})?|UTC|GMT|[A-Za-z]+/[A-Za-z_]+)$"
_NUMBER = r"^[+-]?\d+(\.\d+)?([eE][+-]?\d+)?$"


def normalize_texts(texts: pd.Series, lowercase: bool = False) -> pd.Series:
    """NFKC, control and formatting characters removed, whitespace collapsed, trimmed."""
    out = texts.astype("string")
    out = out.str.normalize("NFKC")
    out = out.str.replace(_FORMAT_CHARS, "", regex=True)
    out = out.str.replace(_CONTROL_CHARS, " ", regex=True)
    out = out.str.replace(r"\s+", " ", regex=True).str.strip()
    if lowercase:
        out = out.str.lower()
    return out.astype(object).where(out.notna(), None)


def normalize_text_column(col: Column, lowercase: bool) -> Column:
    """``normalize_texts`` as a vectorised pandas UDF over a string column."""

    @F.pandas_udf(T.StringType())
    def _normalize(texts: pd.Series) -> pd.Series:
        return normalize_texts(texts, lowercase)

    return _normalize(col)


def parse_event_time(raw: Column, timezone_name: str) -> Column:
    """Parse a string time: ISO-8601 with or without zone, or epoch s/ms/µs/ns by magnitude.

    Zone-less times are taken in ``timezone_name``. Returns null when unparseable.
    """
    s = F.trim(raw)
    zoned = F.when(s.rlike(_HAS_ZONE), s.try_cast("timestamp"))
    return (
        F.when(s.rlike(_NUMBER), _epoch_time(s))
        .when(s.rlike(_ZONELESS), _zoneless_time(s, timezone_name))
        .otherwise(zoned)
    )


def _epoch_time(s: Column) -> Column:
    """A number as seconds, milliseconds, microseconds or nanoseconds since the epoch,
    told apart by magnitude (nothing after year 5138 is meant as seconds)."""
    number = s.try_cast("double")
    magnitude = F.abs(number)
    seconds = (
        F.when(magnitude < 1e11, number)
        .when(magnitude < 1e14, number / 1e3)
        .when(magnitude < 1e17, number / 1e6)
        .when(magnitude < 1e20, number / 1e9)
    )
    return F.when(s.rlike(_NUMBER) & ~F.isnan(number), F.timestamp_seconds(seconds))


def _zoneless_time(s: Column, timezone_name: str) -> Column:
    """A ``yyyy-m-d[ h:m[:s.ffffff]]`` time in ``timezone_name``; null for a date that does
    not exist (Feb 30, month 13)."""
    parts = [F.regexp_extract(s, _ZONELESS, i) for i in range(1, 7)]

    def part(i: int, default: str) -> Column:
        return F.when(parts[i] == "", F.lit(default)).otherwise(parts[i])

    return F.try_make_timestamp(
        parts[0].try_cast("int"),
        parts[1].try_cast("int"),
        parts[2].try_cast("int"),
        part(3, "0").try_cast("int"),
        part(4, "0").try_cast("int"),
        part(5, "0").try_cast("decimal(16,6)"),
        F.lit(timezone_name),
    )
