"""Scoring a clustering against the synthetic generator's planted truth (ARI/NMI)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pandas as pd
from pyspark.sql import DataFrame, SparkSession

from usersegments.config import PrivacyConfig
from usersegments.errors import InputError


def read_truth(path: str, privacy: PrivacyConfig | None = None) -> pd.DataFrame:
    """The generator's truth file (Parquet or CSV) as pandas; its user ids are
    pseudonymized like the stored ones when ``privacy.pseudonymize_user_ids`` is on."""
    from usersegments.privacy import pseudonym_key, pseudonymize_ids

    p = Path(path)
    if not p.exists():
        raise InputError(
            f"--truth {path!r} does not exist: pass the truth file `usersegments generate` "
            "wrote (Parquet or CSV)"
        )
    truth = pd.read_parquet(p) if p.suffix in (".parquet", ".pq") else pd.read_csv(p)
    if privacy is not None and privacy.pseudonymize_user_ids:
        truth["user_id"] = pseudonymize_ids(truth["user_id"].astype(str), pseudonym_key(privacy))
    return truth


def score_against_truth(
    spark: SparkSession,
    segs: DataFrame,
    truth_path: str,
    as_of: datetime | None,
    privacy: PrivacyConfig | None = None,
) -> dict[str, float]:
    """ARI/NMI of coarse clusters vs the planted area and of segments vs (area, sub-style).

    A user whose planted drift happened before ``as_of`` is scored on the new interest.
    """
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    truth = read_truth(truth_path, privacy)
    joined = (
        segs.select("user_id", "cluster_id", "segment_id")
        .toPandas()
        .merge(truth, on="user_id", how="inner")
    )
    if joined.empty:
        return {"truth_users": 0}
    as_of_ts = pd.Timestamp(as_of)
    as_of_ts = as_of_ts.tz_localize("UTC") if as_of_ts.tzinfo is None else as_of_ts
    drifted = joined["drift_date"].notna() & (
        pd.to_datetime(joined["drift_date"], utc=True) <= as_of_ts
    )
    area = joined["area"].where(~drifted, joined["new_area"])
    style = joined["sub_style"].where(~drifted, joined["new_sub_style"])
    return {
        "truth_users": len(joined),
        "ari_cluster_vs_area": float(adjusted_rand_score(area, joined["cluster_id"])),
        "nmi_cluster_vs_area": float(normalized_mutual_info_score(area, joined["cluster_id"])),
        "nmi_segment_vs_substyle": float(
            normalized_mutual_info_score(area + "/" + style, joined["segment_id"])
        ),
        "ari_segment_vs_substyle": float(
            adjusted_rand_score(area + "/" + style, joined["segment_id"])
        ),
    }
