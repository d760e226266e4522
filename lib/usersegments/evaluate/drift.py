"""Where the generator's planted drifters are after an update (``drift_recovery``).

Computed in Spark: only one row of counts reaches the driver, whatever the number of
users."""

from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from usersegments.config import PrivacyConfig
from usersegments.evaluate.truth import truth_frame
from usersegments.store import TableStore


def _moved_since(store: TableStore, drift_date) -> DataFrame:
    """Users with a ``segment_history`` row closed on or after ``drift_date`` (column
    ``moved``, always true), or no rows when there is no history."""
    if not store.exists("segment_history"):
        return store.spark.createDataFrame([], "user_id string, moved boolean")
    closed = F.col("valid_to").isNotNull() & (F.col("valid_to") >= F.lit(drift_date))
    history = store.read("segment_history").filter(closed)
    return history.select("user_id").distinct().withColumn("moved", F.lit(True))


def _dominant_areas(members: DataFrame) -> DataFrame:
    """Each segment's most common current area (ties: the first area by name)."""
    counts = members.groupBy("segment_id", "current_area").count()
    order = Window.partitionBy("segment_id").orderBy(F.desc("count"), F.asc("current_area"))
    ranked = counts.withColumn("rank", F.row_number().over(order))
    return ranked.filter("rank = 1").select("segment_id", F.col("current_area").alias("dominant"))


def drift_recovery(
    store: TableStore, truth_path: str, drift_date, privacy: PrivacyConfig | None = None
) -> dict[str, float]:
    """Where the generator's planted drifters are after an update.

    A segment's planted area is the most common current area of its members (the
    new area for users who drifted). Returns the share of drifted users whose
    segment's area is their new area, and the share of the other users whose
    segment changed since ``drift_date`` (a closed ``segment_history`` row).
    """
    truth = truth_frame(store.spark, truth_path, privacy).select("user_id", "area", "new_area")
    members = (
        store.read("user_segments")
        .select("user_id", "segment_id")
        .join(truth, "user_id")
        .withColumn("drifted", F.col("new_area").isNotNull())
        .withColumn("current_area", F.coalesce("new_area", "area"))
    )
    scored = (
        members.join(_dominant_areas(members), "segment_id")
        .join(_moved_since(store, drift_date), "user_id", "left")
        .withColumn("moved", F.coalesce("moved", F.lit(False)))
    )
    drifted, stable = F.col("drifted"), ~F.col("drifted")
    # A stable user who moved into a segment of their own planted area was corrected
    # (their first window was too sparse); one who moved elsewhere drifted falsely.
    moved_away = stable & F.col("moved") & (F.col("dominant") != F.col("area"))
    totals = scored.agg(
        F.sum(drifted.cast("int")).alias("drifted_users"),
        F.sum((drifted & (F.col("dominant") == F.col("new_area"))).cast("int")).alias("in_new"),
        F.sum(stable.cast("int")).alias("stable_users"),
        F.sum((stable & F.col("moved")).cast("int")).alias("stable_moved"),
        F.sum(moved_away.cast("int")).alias("moved_away"),
    ).first()
    n_drifted, n_stable = int(totals["drifted_users"] or 0), int(totals["stable_users"] or 0)
    return {
        "drifted_users": n_drifted,
        "drifted_in_new_area_share": (totals["in_new"] or 0) / n_drifted if n_drifted else 0.0,
        "stable_users": n_stable,
        "stable_moved_share": (totals["stable_moved"] or 0) / n_stable if n_stable else 0.0,
        "stable_moved_away_share": (totals["moved_away"] or 0) / n_stable if n_stable else 0.0,
    }
