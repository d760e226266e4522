"""Planted bad rows: the ways real logs go wrong, put into generated events on purpose.

Ingest must quarantine each kind with a reason and lose nothing; the generator's
manifest counts them so tests can reconcile. ``invalid_utf8`` rows are only marked here:
``files.write`` spoils their bytes when it writes the CSV.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

BAD_KINDS = ("null_user", "garbage_time", "empty_text", "invalid_utf8")


def plant_bad_rows(
    rng: np.random.Generator, frame: pd.DataFrame, bad_share: float, duplicate_share: float
) -> tuple[pd.DataFrame, dict[str, object]]:
    """Spoil ``bad_share`` of ``frame``'s rows (user_id, event_time, event_type, item_id,
    text, value) in known ways and duplicate ``duplicate_share`` of the clean ones; the
    frame gains ``_bad`` (the kind, or empty) and is shuffled. Returns it and the counts
    of each kind (the manifest's ``rows``, ``bad_rows`` and ``duplicates``)."""
    frame = frame.copy()
    n = len(frame)
    n_bad = int(round(n * bad_share))
    picked = rng.choice(n, size=n_bad, replace=False) if n_bad else np.array([], dtype=int)
    kinds = {k: 0 for k in BAD_KINDS}
    frame["_bad"] = ""
    for i, row in zip(picked, rng.integers(len(BAD_KINDS), size=n_bad), strict=True):
        kind = BAD_KINDS[row]
        if kind == "null_user":
            frame.iat[i, 0] = None if rng.random() < 0.5 else "  "
        elif kind == "garbage_time":
            frame.iat[i, 1] = ["not a time", "2024-13-45T99:00:00Z", "yesterday", ""][
                int(rng.integers(4))
            ]
        elif kind == "empty_text":
            # A search with a blank query: no item, so no catalog text either.
            frame.iat[i, 2], frame.iat[i, 3], frame.iat[i, 4] = "search", None, "   \t "
        else:  # invalid UTF-8: marked here, spoiled when the CSV bytes are written
            frame.iat[i, 2], frame.iat[i, 3] = "search", None
            frame.iat[i, 4] = "broken bytes query"
        frame.iat[i, 6] = kind
        kinds[kind] += 1
    n_dup = int(round(n * duplicate_share))
    clean = np.flatnonzero(frame["_bad"].to_numpy() == "")
    dups = rng.choice(clean, size=min(n_dup, len(clean)), replace=False)
    frame = pd.concat([frame, frame.iloc[dups]], ignore_index=True)
    order = rng.permutation(len(frame))
    frame = frame.iloc[order].reset_index(drop=True)
    manifest: dict[str, object] = {
        "rows": len(frame),
        "bad_rows": kinds,
        "duplicates": int(len(dups)),
    }
    return frame, manifest
