"""When ingest rejects most of what it read: a report of the reasons (count, one example
row, the setting or fix that changes each) and the ``input.on_rejections`` decision.

The report reads quarantine rows (the ``events_rejected`` contract), so it serves both
the ingest that just wrote them and a later stage that finds no event at all.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from pyspark.sql import DataFrame, Row
from pyspark.sql import functions as F

from usersegments.config import InputConfig
from usersegments.errors import InputError
from usersegments.ingest.cleaning import (
    BAD_EVENT_TIME,
    BAD_VALUE,
    EMPTY_TEXT,
    INVALID_ENCODING,
    MALFORMED_ROW,
    MISSING_USER_ID,
    REJECT_REASONS,
    USER_EVENT_CAP,
)
from usersegments.ingest.parsing import parse_event_time
from usersegments.ingest.readers import RAW_COLUMNS
from usersegments.times import setting_utc

log = logging.getLogger(__name__)

_FIXES = {
    MALFORMED_ROW: "the row does not fit the CSV header or is not a JSON object (JSON lines "
    "hold one UTF-8 object per line, not a JSON array or pretty-printed JSON): fix the file, "
    "or set input.format when its extension misleads",
    MISSING_USER_ID: "map the user column with input.columns.user_id",
    INVALID_ENCODING: "the text is not valid UTF-8: write the file as UTF-8",
    BAD_VALUE: "map a numeric column (or none) with input.columns.value",
    EMPTY_TEXT: "map the text with input.columns.text or input.text_source, or pass --items "
    "with input.columns.item_id mapped",
    USER_EVENT_CAP: "raise input.max_events_per_user, or set input.cap_heavy_users=false",
}
_TIME_FORMATS = "ISO-8601 such as 2026-01-05T10:00:00Z or 2026-01-05 10:00, or epoch s/ms/µs/ns"
_EXAMPLE_VALUE_CHARS = 40
_EXAMPLE_CHARS = 200


@dataclass(frozen=True)
class ReasonSummary:
    """One reject reason in the report: how many rows, an example, and what changes it."""

    reason: str
    rows: int
    example: str
    fix: str

    def line(self) -> str:
        """The reason as one line of the report."""
        rows = f"{self.rows:,} row" + ("" if self.rows == 1 else "s")
        return f"  - {self.reason}: {rows}, e.g. {self.example}; {self.fix}"


def check_rejections(
    rows_read: int, rejected_rows: int, quarantine: DataFrame, icfg: InputConfig, now: datetime
) -> None:
    """Fail (``input.on_rejections=fail``) or warn when more than ``input.max_rejected_share``
    of the rows read were rejected; call it once the quarantine is written.

    ``quarantine`` holds this batch's rejected rows in the ``events_rejected`` contract.
    """
    share = rejected_rows / rows_read if rows_read else 0.0
    if share <= icfg.max_rejected_share:
        return
    head = (
        f"ingest rejected {rejected_rows:,} of the {rows_read:,} rows read ({share:.1%}), more "
        f"than input.max_rejected_share={icfg.max_rejected_share:g} allows. By reason:"
    )
    lines = "\n".join(s.line() for s in summarize_rejections(quarantine, icfg, now))
    if icfg.on_rejections == "warn":
        log.warning(
            "%s\n%s\nThe accepted rows are kept (input.on_rejections=warn); every rejected row "
            "is in the events_rejected table",
            head,
            lines,
        )
        return
    raise InputError(
        f"{head}\n{lines}\nEvery rejected row is in the events_rejected table and no event was "
        "written. Fix the input or the settings named above and rerun, or set "
        "input.on_rejections=warn to keep the accepted rows"
    )


def summarize_rejections(
    quarantine: DataFrame, icfg: InputConfig, now: datetime
) -> list[ReasonSummary]:
    """Every reason in ``quarantine`` (``events_rejected`` rows), most rows first."""
    earliest = F.lit(setting_utc(icfg.min_time))
    parsed = parse_event_time(F.col("event_time"), icfg.timezone)
    n = F.col("occurrences")
    rows = (
        quarantine.groupBy("reject_reason")
        .agg(
            F.sum(n).alias("rows"),
            # The smallest row, not any row: the same quarantine gives the same report.
            F.min(F.struct(*RAW_COLUMNS, "raw_record")).alias("example"),
            F.sum(F.when(parsed.isNull(), n).otherwise(0)).alias("unparseable"),
            F.sum(F.when(parsed < earliest, n).otherwise(0)).alias("early"),
        )
        .collect()
    )
    order = {reason: i for i, reason in enumerate(REJECT_REASONS)}
    rows.sort(key=lambda r: (-r["rows"], order.get(r["reject_reason"], len(order))))
    return [
        ReasonSummary(
            reason=r["reject_reason"],
            rows=int(r["rows"]),
            example=_example(r["example"]),
            fix=_fix(r, icfg, now),
        )
        for r in rows
    ]


def _fix(row: Row, icfg: InputConfig, now: datetime) -> str:
    """What changes the reason of ``row`` (a reason's aggregate): a setting, or the input."""
    reason = row["reject_reason"]
    if reason != BAD_EVENT_TIME:
        return _FIXES.get(reason, "see the events_rejected table")
    unparseable, early = int(row["unparseable"]), int(row["early"])
    late = int(row["rows"]) - unparseable - early
    parts = []
    if unparseable:
        parts.append(
            f"{unparseable:,} unparseable (times are {_TIME_FORMATS}): map another column "
            "with input.columns.event_time or convert the times"
        )
    if early:
        parts.append(
            f"{early:,} before input.min_time={setting_utc(icfg.min_time).isoformat()}: "
            "lower input.min_time"
        )
    if late:
        latest = now + timedelta(hours=icfg.future_tolerance_hours)
        parts.append(
            f"{late:,} after {latest:%Y-%m-%d %H:%M} UTC (now + input.future_tolerance_hours="
            f"{icfg.future_tolerance_hours:g}): raise it, or set input.timezone when times "
            "without a zone are not UTC"
        )
    return "; ".join(parts)


def _example(raw: Row) -> str:
    """One quarantined row as it arrived, its values clipped, on one line."""
    if raw["raw_record"] is not None:
        return _clip(raw["raw_record"], _EXAMPLE_CHARS)
    values = [
        f"{name}={_clip(raw[name], _EXAMPLE_VALUE_CHARS)}"
        for name in RAW_COLUMNS
        if raw[name] is not None
    ]
    return _clip_plain(", ".join(values), _EXAMPLE_CHARS) if values else "(a row of no values)"


def _clip(text: str, limit: int) -> str:
    """``text`` quoted with its line breaks escaped, cut to about ``limit`` characters."""
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")


def _clip_plain(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, an ellipsis saying it was cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"
