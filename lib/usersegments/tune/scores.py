"""What a trial is scored on: held-out hit-rate lift, held-out interest fit, silhouette.

Every function takes DataFrames and aggregates in Spark; only single figures (and
no per-user row) reach the driver.
"""

from __future__ import annotations

from pyspark.ml.evaluation import ClusteringEvaluator
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.ml.stat import Summarizer
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from usersegments.profile import dot, with_unit_vector

HIT_RATE_LIFT = "hit_rate_lift"
INTEREST_FIT = "interest_fit"
OBJECTIVES = (HIT_RATE_LIFT, INTEREST_FIT)


def repeat_share(train: DataFrame, held_out: DataFrame) -> float:
    """The share of ``held_out`` events (item_id, may be null) on an item that some
    user touched in ``train``: high for shops and catalogs, where the same items come
    back across users; near 0 for posts and reviews of unique items."""
    known = (
        train.filter(F.col("item_id").isNotNull())
        .select("item_id")
        .distinct()
        .withColumn("_known", F.lit(1.0))
    )
    row = (
        held_out.select("item_id")
        .join(known, "item_id", "left")
        .agg(F.avg(F.coalesce(F.col("_known"), F.lit(0.0))).alias("share"))
        .first()
    )
    return float(row["share"] or 0.0)


def choose_objective(setting: str, share: float, share_min: float) -> str:
    """``tune.objective`` resolved: ``auto`` is hit-rate lift when at least
    ``share_min`` of held-out events repeat items seen in training, else interest fit."""
    if setting != "auto":
        return setting
    return HIT_RATE_LIFT if share >= share_min else INTEREST_FIT


def _unit_mean(frame: DataFrame, by: list[str]) -> DataFrame:
    """Per ``by`` group (one row when empty) of ``frame``'s ``embedding``: the unit
    mean vector ``centroid``."""
    mean = Summarizer.mean(array_to_vector(F.col("embedding"))).alias("_mean")
    grouped = frame.groupBy(*by).agg(mean) if by else frame.agg(mean)
    as_array = grouped.withColumn("_mean", vector_to_array(F.col("_mean"), dtype="float32"))
    return with_unit_vector(as_array, "_mean", "centroid").drop("_mean")


def interest_fit(groups: DataFrame, profiles: DataFrame, later: DataFrame) -> dict:
    """How much closer users' later events lie to their segment than to everyone.

    ``groups``: user_id, segment_id; ``profiles``: user_id, embedding (the interest
    vectors the grouping was made from); ``later``: user_id, embedding of each held-out
    event. A segment's centroid and the global centroid are unit means of the member
    profiles. Per held-out event: cos(event, segment centroid) - cos(event, global
    centroid); averaged per user, then over users. 0 = the segments say no more than
    one segment of everyone would. Returns ``interest_fit`` (None when no grouped user
    has a later event) and ``users``, the users it averages over.
    """
    members = groups.select("user_id", "segment_id").join(
        profiles.select("user_id", "embedding"), "user_id"
    )
    segment = _unit_mean(members, ["segment_id"]).withColumnRenamed("centroid", "_segment")
    overall = _unit_mean(members, []).withColumnRenamed("centroid", "_overall")
    events = with_unit_vector(later.select("user_id", "embedding"), "embedding", "_event")
    per_event = (
        events.join(groups.select("user_id", "segment_id"), "user_id")
        .join(segment, "segment_id")
        .crossJoin(overall)
        .select("user_id", (dot("_event", "_segment") - dot("_event", "_overall")).alias("_gain"))
    )
    per_user = per_event.groupBy("user_id").agg(F.avg("_gain").alias("_gain"))
    row = per_user.agg(F.avg("_gain").alias("fit"), F.count(F.lit(1)).alias("users")).first()
    fit = None if row["fit"] is None else float(row["fit"])
    return {"interest_fit": fit, "users": int(row["users"])}


def silhouette(user_segments: DataFrame, profiles: DataFrame) -> float | None:
    """Cosine silhouette of the coarse clusters on the users' interest vectors (as the
    cluster stage measures it); None when fewer than two clusters are left."""
    evaluator = ClusteringEvaluator(
        featuresCol="_features", predictionCol="cluster_id", distanceMeasure="cosine"
    )
    frame = user_segments.select("user_id", "cluster_id").join(
        profiles.select("user_id", array_to_vector(F.col("embedding")).alias("_features")),
        "user_id",
    )
    if frame.select("cluster_id").distinct().limit(2).count() < 2:
        return None
    return float(evaluator.evaluate(frame))
