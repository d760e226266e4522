"""Generated data as files: events (CSV with planted invalid UTF-8 and malformed lines,
and Parquet), items, truth and the manifest, the layout ``usersegments`` ingests."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from usersegments.testing.synthetic import GeneratedData

INVALID_UTF8 = b"broken \xff\xfe bytes query"


def write(data: GeneratedData, output: str | Path) -> dict[str, str]:
    """Write events (CSV and Parquet), items, truth and the manifest under ``output``."""
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    paths = output_paths(out)
    events = data.events.drop(columns=["_bad"])
    invalid = data.events["_bad"].to_numpy() == "invalid_utf8"
    # Parquet strings must be valid UTF-8: there the spoiled text carries what a decoder
    # that replaces bad bytes would produce.
    parquet_events = events.copy()
    parquet_events.loc[invalid, "text"] = INVALID_UTF8.decode("utf-8", errors="replace")
    parquet_events.to_parquet(paths["events_parquet"], index=False)
    Path(paths["events_csv"]).write_bytes(
        _csv_bytes(events, invalid, data.settings.malformed_csv_lines)
    )
    data.items.to_parquet(paths["items"], index=False)
    data.items.to_csv(out / "items.csv", index=False)
    data.truth.to_parquet(paths["truth"], index=False)
    data.truth.to_csv(out / "truth.csv", index=False)
    Path(paths["manifest"]).write_text(json.dumps(data.manifest, indent=2, default=str))
    return paths


def output_paths(output: str | Path) -> dict[str, str]:
    """The files ``write`` puts under ``output``: events_csv, events_parquet, items,
    truth and manifest."""
    out = Path(output)
    return {
        "events_csv": str(out / "events.csv"),
        "events_parquet": str(out / "events.parquet"),
        "items": str(out / "items.parquet"),
        "truth": str(out / "truth.parquet"),
        "manifest": str(out / "manifest.json"),
    }


def _csv_bytes(events: pd.DataFrame, invalid: np.ndarray, malformed_lines: int) -> bytes:
    """Events as CSV bytes, with the invalid UTF-8 bytes and malformed lines planted."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
    writer.writerow(events.columns)
    marker = "\u0000INVALID\u0000"
    for bad, row in zip(invalid, events.itertuples(index=False), strict=True):
        values = ["" if v is None or (isinstance(v, float) and np.isnan(v)) else v for v in row]
        if bad:
            values[4] = marker
        writer.writerow(values)
    # Too many fields: the reader's corrupt-record column catches these lines.
    for n in range(malformed_lines):
        buffer.write(f"u9{n:05d},2026-09-01T00:00:00Z,view,i00001,extra,1.0,field,another\n")
    return buffer.getvalue().encode("utf-8").replace(marker.encode("utf-8"), INVALID_UTF8)
