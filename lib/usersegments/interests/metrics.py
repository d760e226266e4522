"""The figures the interests stage records in ``run_metrics``."""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F


def interest_counts(interests: DataFrame, max_per_user: int) -> dict[str, float]:
    """Users with 1..``max_per_user`` interests (``users_with_<n>_interests``), users
    with any, interests in all and the mean per user. One small aggregation."""
    per_user = interests.groupBy("user_id").agg(F.count(F.lit(1)).alias("n"))
    counts = {
        int(r["n"]): int(r["users"])
        for r in per_user.groupBy("n").agg(F.count(F.lit(1)).alias("users")).collect()
    }
    users = sum(counts.values())
    total = sum(n * u for n, u in counts.items())
    metrics: dict[str, float] = {
        f"users_with_{n}_interests": counts.get(n, 0) for n in range(1, max_per_user + 1)
    }
    metrics.update(
        {
            "users_with_interests": users,
            "interests": total,
            "interests_per_user_mean": total / users if users else 0.0,
        }
    )
    return metrics
