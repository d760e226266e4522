"""Scoring a clustering against the synthetic generator's planted truth (ARI/NMI)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from usersegments.config import PrivacyConfig
from usersegments.errors import InputError
from usersegments.ingest.parsing import parse_event_time


def existing_truth_file(path: str) -> Path:
    """``path`` as a Path; an ``InputError`` naming ``--truth`` when there is no such file."""
    p = Path(path)
    if not p.exists():
        raise InputError(
            f"--truth {path!r} does not exist: pass the truth file `usersegments generate` "
            "wrote (Parquet or CSV)"
        )
    return p


# The truth columns scored: the planted interest, and the one a drifted user moved to.
LABEL_COLUMNS = ("area", "sub_style", "new_area", "new_sub_style")


def truth_frame(spark: SparkSession, path: str, privacy: PrivacyConfig | None = None) -> DataFrame:
    """The truth file as a Spark DataFrame (nothing of it on the driver), user ids
    pseudonymized like the stored ones when ``privacy.pseudonymize_user_ids`` is on."""
    from usersegments.privacy import pseudonym_column, pseudonym_key

    p = existing_truth_file(path)
    if p.suffix in (".parquet", ".pq"):
        truth = spark.read.parquet(str(p))
    else:
        truth = spark.read.csv(str(p), header=True, inferSchema=True)
    # Labels as text whatever the file's types: a column that is null throughout (no
    # user drifted) comes back from pandas as numbers or as no type at all.
    for column in ("user_id", *LABEL_COLUMNS):
        present = column in truth.columns
        truth = truth.withColumn(column, (F.col(column) if present else F.lit(None)).cast("string"))
    if "drift_date" not in truth.columns:
        truth = truth.withColumn("drift_date", F.lit(None).cast("string"))
    if privacy is not None and privacy.pseudonymize_user_ids:
        truth = truth.withColumn(
            "user_id", pseudonym_column(F.col("user_id"), pseudonym_key(privacy, spark))
        )
    return truth


def score_against_truth(
    spark: SparkSession,
    segs: DataFrame,
    truth_path: str,
    as_of: datetime | None,
    privacy: PrivacyConfig | None = None,
) -> dict[str, float]:
    """ARI/NMI of coarse clusters vs the planted area, and of segments vs (area, sub-style)
    and vs the area alone (how well the fine segments keep the areas apart).

    A user whose planted drift happened before ``as_of`` is scored on the new interest.
    Computed from contingency tables aggregated in Spark: only (truth label, cluster)
    counts reach the driver, never a row per user.
    """
    truth = truth_frame(spark, truth_path, privacy)
    drifted = F.lit(False)
    if as_of is not None:
        # Whatever the file holds: a timestamp, text, or epoch nanoseconds (pandas'
        # timestamps, read as numbers by the session), parsed as ingest parses times.
        zone = spark.conf.get("spark.sql.session.timeZone")
        drift_time = parse_event_time(F.col("drift_date").cast("string"), zone)
        drifted = drift_time.isNotNull() & (drift_time <= F.lit(as_of))
    joined = (
        segs.select("user_id", "cluster_id", "segment_id")
        .join(truth, "user_id")
        .select(
            "cluster_id",
            "segment_id",
            F.when(drifted, F.col("new_area")).otherwise(F.col("area")).alias("_area"),
            F.when(drifted, F.concat_ws("/", "new_area", "new_sub_style"))
            .otherwise(F.concat_ws("/", "area", "sub_style"))
            .alias("_style"),
        )
        .cache()
    )
    try:
        by_cluster = contingency(joined, "_area", "cluster_id")
        by_segment = contingency(joined, "_style", "segment_id")
        by_segment_area = contingency(joined, "_area", "segment_id")
    finally:
        joined.unpersist()
    users = int(by_cluster.sum())
    if users == 0:
        return {"truth_users": 0}
    return {
        "truth_users": users,
        "ari_cluster_vs_area": adjusted_rand(by_cluster),
        "nmi_cluster_vs_area": normalized_mutual_info(by_cluster),
        "nmi_segment_vs_substyle": normalized_mutual_info(by_segment),
        "ari_segment_vs_substyle": adjusted_rand(by_segment),
        "nmi_segment_vs_area": normalized_mutual_info(by_segment_area),
    }


def contingency(df: DataFrame, truth_col: str, predicted_col: str) -> np.ndarray:
    """Counts of users per (truth label, predicted label): labels x clusters, aggregated
    in Spark."""
    rows = df.groupBy(truth_col, predicted_col).count().collect()
    truths = {v: i for i, v in enumerate(sorted({str(r[0]) for r in rows}))}
    predicted = {v: i for i, v in enumerate(sorted({str(r[1]) for r in rows}))}
    table = np.zeros((len(truths), len(predicted)), dtype=np.float64)
    for r in rows:
        table[truths[str(r[0])], predicted[str(r[1])]] = r["count"]
    return table


def adjusted_rand(table: np.ndarray) -> float:
    """Adjusted Rand index of a contingency table (as scikit-learn's, from labels)."""
    n = table.sum()
    pairs = float((table * (table - 1) / 2).sum())
    rows = table.sum(axis=1)
    cols = table.sum(axis=0)
    row_pairs = float((rows * (rows - 1) / 2).sum())
    col_pairs = float((cols * (cols - 1) / 2).sum())
    total = n * (n - 1) / 2
    if total == 0:
        return 1.0
    expected = row_pairs * col_pairs / total
    best = (row_pairs + col_pairs) / 2
    if best == expected:  # one cluster on both sides, or every point its own
        return 1.0
    return float((pairs - expected) / (best - expected))


def normalized_mutual_info(table: np.ndarray) -> float:
    """NMI (arithmetic mean of the entropies) of a contingency table, as scikit-learn's."""
    rows_n, cols_n = table.shape
    if rows_n == cols_n == 1:
        return 1.0
    n = table.sum()
    p = table / n
    pr, pc = p.sum(axis=1), p.sum(axis=0)
    nz = p > 0
    mi = float((p[nz] * np.log(p[nz] / np.outer(pr, pc)[nz])).sum())
    h_rows = float(-(pr[pr > 0] * np.log(pr[pr > 0])).sum())
    h_cols = float(-(pc[pc > 0] * np.log(pc[pc > 0])).sum())
    mean = (h_rows + h_cols) / 2
    if mi <= 0 or mean <= 0:
        return 0.0
    return float(min(1.0, mi / mean))
