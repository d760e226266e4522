"""Where the generator's planted drifters are after an update (``drift_recovery``)."""

from __future__ import annotations

from pyspark.sql import functions as F

from usersegments.config import PrivacyConfig
from usersegments.evaluate.truth import read_truth
from usersegments.store import TableStore


def _moved_since(store: TableStore, drift_date) -> set[str]:
    """Users with a ``segment_history`` row closed on or after ``drift_date``."""
    if not store.exists("segment_history"):
        return set()
    return {
        r["user_id"]
        for r in store.read("segment_history")
        .filter(F.col("valid_to").isNotNull() & (F.col("valid_to") >= F.lit(drift_date)))
        .select("user_id")
        .distinct()
        .collect()
    }


def drift_recovery(
    store: TableStore, truth_path: str, drift_date, privacy: PrivacyConfig | None = None
) -> dict[str, float]:
    """Where the generator's planted drifters are after an update.

    A segment's planted area is the most common current area of its members (the
    new area for users who drifted). Returns the share of drifted users whose
    segment's area is their new area, and the share of the other users whose
    segment changed since ``drift_date`` (a closed ``segment_history`` row).
    """
    truth = read_truth(truth_path, privacy)
    members = store.read("user_segments").select("user_id", "segment_id").toPandas()
    joined = members.merge(truth, on="user_id")
    drifted = joined["new_area"].notna()
    joined["current_area"] = joined["area"].where(~drifted, joined["new_area"])
    dominant = joined.groupby("segment_id")["current_area"].agg(lambda s: s.value_counts().index[0])
    in_new = joined.loc[drifted, "segment_id"].map(dominant) == joined.loc[drifted, "new_area"]
    stable = joined.loc[~drifted]
    stable_moved = stable["user_id"].isin(_moved_since(store, drift_date))
    # A stable user who moved into a segment of their own planted area was corrected
    # (their first window was too sparse); one who moved elsewhere drifted falsely.
    moved_away = stable_moved & (stable["segment_id"].map(dominant) != stable["area"])
    return {
        "drifted_users": int(drifted.sum()),
        "drifted_in_new_area_share": float(in_new.mean()) if drifted.any() else 0.0,
        "stable_users": len(stable),
        "stable_moved_share": float(stable_moved.mean()) if len(stable) else 0.0,
        "stable_moved_away_share": float(moved_away.mean()) if len(stable) else 0.0,
    }
