"""Ingest: raw event files -> ``events`` (clean, typed, deduplicated) + ``events_rejected``.

Nothing is lost: every row read is accepted, rejected with a stable reason
code, or counted as a duplicate, and ``rows read = accepted + rejected +
duplicates`` is checked at the end of every run. A run that rejects more than
``input.max_rejected_share`` of its rows stops once the rejects are quarantined,
naming each reason and the setting that changes it (or only warns, by
``input.on_rejections``).

Every input format first becomes one *raw* frame of strings (the columns of
the input contract, the reader's corrupt-record text and the source file), so
one parser serves CSV, JSON lines, Parquet and Delta alike and a rejected row
keeps exactly the values that arrived.

Modules:

- ``sources``: ``InputSource`` and ``resolve_inputs`` (globs, folders, formats, layouts).
- ``unreadable``: input Spark cannot read (corrupt, half-written, columns it refuses) as
  one ``InputError`` naming the file and the fix.
- ``readers``: event files and the item catalog read into the raw frame of strings (or a
  frame already read, such as a stream's micro-batch: ``raw_from_frame``).
- ``parsing``: event time parsing (ISO-8601, epoch by magnitude) and text normalisation.
- ``cleaning``: reject reasons, classify/accept, dedupe, heavy users, quarantine rows.
- ``rejections``: the report (count, example, fix per reason) when most rows are rejected,
  and the ``input.max_rejected_share`` / ``input.on_rejections`` decision.
- ``stage``: ``run_ingest``, writing both tables, the figures and the invariant check.
"""

from __future__ import annotations

from usersegments.ingest.cleaning import (
    BAD_EVENT_TIME,
    BAD_VALUE,
    EMPTY_TEXT,
    INVALID_ENCODING,
    MALFORMED_ROW,
    MISSING_USER_ID,
    REJECT_REASONS,
    USER_EVENT_CAP,
    classify_events,
    deduplicate,
    finish_accepted,
    split_heavy_users,
    to_events,
    to_rejected,
)
from usersegments.ingest.parsing import normalize_text_column, normalize_texts, parse_event_time
from usersegments.ingest.readers import RAW_COLUMNS, raw_from_frame, read_items, read_raw_events
from usersegments.ingest.sources import InputSource, resolve_inputs
from usersegments.ingest.stage import check_invariant, run_ingest
from usersegments.ingest.unreadable import reading, unreadable_input

__all__ = [
    "BAD_EVENT_TIME",
    "BAD_VALUE",
    "EMPTY_TEXT",
    "INVALID_ENCODING",
    "MALFORMED_ROW",
    "MISSING_USER_ID",
    "RAW_COLUMNS",
    "REJECT_REASONS",
    "USER_EVENT_CAP",
    "InputSource",
    "check_invariant",
    "classify_events",
    "deduplicate",
    "finish_accepted",
    "normalize_text_column",
    "normalize_texts",
    "parse_event_time",
    "raw_from_frame",
    "reading",
    "read_items",
    "read_raw_events",
    "resolve_inputs",
    "run_ingest",
    "split_heavy_users",
    "to_events",
    "to_rejected",
    "unreadable_input",
]
