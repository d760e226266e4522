"""Recommend: the items each segment's members are into now.

An item's score in a group (a segment, a coarse cluster, or everyone) is the
recency-decayed, event-weighted popularity of the item among the group's
members, per member: ``sum(w_e) / members``, with ``w_e`` the profile event
weight (type x value) decayed from the run's ``as_of`` with ``recommend.half_life_days``
(``auto``: derived from the events each run, see ``usersegments.halflife``). The top
``recommend.top_n`` per segment go to ``segment_recommendations``.

With ``recommend.per_user`` each user also gets a list in ``user_recommendations``,
minus the items they already touched: a user with interests (``user_interests``) gets the
lists of their interests' segments blended by interest weight (``blended``: an item
scores ``sum(interest weight x its share of the segment's decayed engagement)``, so a
secondary interest's item comes in only where it is likelier to be engaged with than
the primary's next one), others their segment's list.
"""

from __future__ import annotations

from datetime import datetime

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from usersegments.config import Config
from usersegments.halflife import recommend_half_life
from usersegments.label import item_texts
from usersegments.privacy import with_texts
from usersegments.profile import event_weight
from usersegments.runlog import RunLog, StageResult
from usersegments.schema import SEGMENT_RECOMMENDATIONS, USER_RECOMMENDATIONS, conform
from usersegments.store import TableStore
from usersegments.times import max_time


def with_recommend_half_life(cfg: Config, days: float) -> Config:
    """``cfg`` with a resolved ``recommend.half_life_days`` (``popularity_weight`` needs it)."""
    recommend = cfg.recommend.model_copy(update={"half_life_days": float(days)})
    return cfg.model_copy(update={"recommend": recommend})


def popularity_weight(cfg: Config, as_of: datetime) -> Column:
    """An event's weight for item popularity: the profile weight, decayed with
    ``recommend.half_life_days`` (resolved: ``with_recommend_half_life``) from ``as_of``,
    the same instant for every user (popularity is about now, not about each user)."""
    if cfg.recommend.half_life_days == "auto":
        raise ValueError(
            "recommend.half_life_days is 'auto': resolve it first (with_recommend_half_life)"
        )
    recency = cfg.profile.model_copy(update={"half_life_days": cfg.recommend.half_life_days})
    return event_weight(recency, as_of)


def item_scores(
    events: DataFrame, groups: DataFrame, group_col: str, cfg: Config, as_of: datetime
) -> DataFrame:
    """Per (group, item): decayed weighted popularity per member (``score``), the item's
    share of its group's decayed weight over every item (``share``: an estimate of the
    chance that a member's next event is about it) and members who touched it.

    ``events``: user_id, item_id, event_type, event_time, value; ``groups``: user_id and
    ``group_col``. Only events with an item id count.
    """
    members = groups.groupBy(group_col).agg(F.count(F.lit(1)).alias("_members"))
    weighted = (
        events.filter(F.col("item_id").isNotNull())
        .join(groups.select("user_id", group_col), "user_id")
        .withColumn("_w", popularity_weight(cfg, as_of))
    )
    per_item = weighted.groupBy(group_col, "item_id").agg(
        F.sum("_w").alias("_weight"), F.countDistinct("user_id").alias("users")
    )
    # A join, not a window: one group (the popularity baseline) would put every item
    # in one partition.
    totals = per_item.groupBy(group_col).agg(F.sum("_weight").alias("_total"))
    return (
        per_item.join(members, group_col)
        .join(totals, group_col)
        .select(
            group_col,
            "item_id",
            (F.col("_weight") / F.col("_members")).alias("score"),
            (F.col("_weight") / F.col("_total")).alias("share"),
            "users",
        )
    )


def top_per_group(scores: DataFrame, group_col: str, n: int) -> DataFrame:
    """The ``n`` best-scored items of every group, ranked from 1 (ties by item id)."""
    order = Window.partitionBy(group_col).orderBy(F.desc("score"), F.asc("item_id"))
    return scores.withColumn("rank", F.row_number().over(order)).filter(F.col("rank") <= n)


def top_overall(scores: DataFrame, group_col: str, n: int) -> DataFrame:
    """``top_per_group`` for ``scores`` of a single group (the popularity baseline: every
    user in one group). Spark's top-n (``orderBy().limit()``) instead of a window over
    one partition holding every item; the ``n`` rows are ranked on the driver."""
    best = scores.orderBy(F.desc("score"), F.asc("item_id")).limit(n).collect()
    ranked = T.StructType([*scores.schema.fields, T.StructField("rank", T.IntegerType())])
    rows = [(*row, rank) for rank, row in enumerate(best, start=1)]
    return scores.sparkSession.createDataFrame(rows, ranked).select(
        group_col, "item_id", "score", "users", "rank"
    )


def without_seen(
    recommendations: DataFrame, user_groups: DataFrame, seen: DataFrame, group_col: str, n: int
) -> DataFrame:
    """Each user's group list minus the items they touched, re-ranked, top ``n``.

    ``recommendations``: group_col, item_id, rank, score; ``user_groups``: user_id,
    group_col; ``seen``: user_id, item_id.
    """
    per_user = user_groups.join(recommendations, group_col).join(
        seen.select("user_id", "item_id").distinct(), ["user_id", "item_id"], "left_anti"
    )
    order = Window.partitionBy("user_id").orderBy(F.asc("rank"), F.asc("item_id"))
    return per_user.withColumn("rank", F.row_number().over(order)).filter(F.col("rank") <= n)


def blended(recommendations: DataFrame, interests: DataFrame, seen: DataFrame, n: int) -> DataFrame:
    """Each user's list blended from their interests' segment lists, top ``n``.

    ``recommendations``: segment_id, item_id, share (``item_scores``); ``interests``:
    user_id, segment_id, weight; ``seen``: user_id, item_id (left out). An item scores
    the sum over the user's interests of ``weight x share``: the chance that the user's
    next event is about it, if each interest behaves like its segment. A secondary
    interest's item so displaces a heavier interest's item only where it is likelier
    to be engaged with: a flat list of a light interest does not crowd out a heavy one.
    Columns user_id, segment_id (the interest the item owes most to), item_id, rank
    (from 1, ties by item id), score (the blended one).
    """
    contributions = (
        interests.select("user_id", "segment_id", "weight")
        .join(recommendations.select("segment_id", "item_id", "share"), "segment_id")
        .join(seen.select("user_id", "item_id").distinct(), ["user_id", "item_id"], "left_anti")
        .withColumn("_part", F.col("weight") * F.col("share"))
    )
    per_item = contributions.groupBy("user_id", "item_id").agg(
        F.sum("_part").alias("score"), F.max_by("segment_id", "_part").alias("segment_id")
    )
    order = Window.partitionBy("user_id").orderBy(F.desc("score"), F.asc("item_id"))
    return per_item.withColumn("rank", F.row_number().over(order)).filter(F.col("rank") <= n)


def user_lists(
    recommendations: DataFrame,
    groups: DataFrame,
    interests: DataFrame | None,
    seen: DataFrame,
    n: int,
) -> DataFrame:
    """Every user's list: ``blended`` from their ``interests`` (user_id, segment_id, weight)
    in the recommended segments, else their segment's (``groups``: user_id, segment_id)
    list without what they saw. Columns user_id, segment_id, item_id, rank, score."""
    columns = ["user_id", "segment_id", "item_id", "rank", "score"]
    if interests is None:
        return without_seen(recommendations, groups, seen, "segment_id", n).select(*columns)
    recommended = recommendations.select("segment_id").distinct()
    usable = interests.join(recommended, "segment_id", "left_semi").join(
        groups.select("user_id"), "user_id", "left_semi"
    )
    rest = groups.join(usable.select("user_id").distinct(), "user_id", "left_anti")
    return (
        blended(recommendations, usable, seen, n)
        .select(*columns)
        .unionByName(without_seen(recommendations, rest, seen, "segment_id", n).select(*columns))
    )


def write_user_lists(
    store: TableStore,
    run: RunLog,
    top: DataFrame,
    groups: DataFrame,
    texts: DataFrame,
    cfg: Config,
) -> int:
    """Write ``user_recommendations`` (each user's list, blended from their interests'
    segments when ``user_interests`` exists, seen items left out); returns its version."""
    events = store.read("events")
    seen = events.filter(F.col("item_id").isNotNull()).select("user_id", "item_id")
    interests = None
    if store.exists("user_interests"):
        interests = store.read("user_interests").select("user_id", "segment_id", "weight")
    per_user = user_lists(top, groups, interests, seen, cfg.recommend.top_n)
    per_user = per_user.join(texts.select("item_id", "text"), "item_id", "left")
    store.write(
        conform(per_user.withColumn("run_id", F.lit(run.run_id)), USER_RECOMMENDATIONS),
        "user_recommendations",
        mode="overwrite",
    )
    return store.version("user_recommendations")


def run_recommend(spark: SparkSession, store: TableStore, cfg: Config, run: RunLog) -> StageResult:
    """Write ``segment_recommendations`` (and ``user_recommendations`` when configured)."""
    store.require(
        "user_segments",
        "segments",
        "events",
        fix="run `usersegments run` (or `usersegments cluster`) first",
    )
    min_size = cfg.privacy.min_segment_size
    described = store.read("segments").filter(F.col("size") >= min_size).select("segment_id")
    groups = store.read("user_segments").select("user_id", "segment_id", "as_of")
    as_of = max_time(groups, "as_of")
    groups = groups.join(described, "segment_id").select("user_id", "segment_id")
    events = store.read("events")
    half_life = recommend_half_life(cfg.recommend, events)
    cfg = with_recommend_half_life(cfg, half_life.days)
    top = top_per_group(
        item_scores(events, groups, "segment_id", cfg, as_of), "segment_id", cfg.recommend.top_n
    ).cache()
    try:
        top_events = events.join(top.select("item_id").distinct(), "item_id")
        texts = item_texts(with_texts(store, top_events))
        recs = top.join(texts.select("item_id", "text"), "item_id", "left").withColumn(
            "run_id", F.lit(run.run_id)
        )
        store.write(
            conform(recs, SEGMENT_RECOMMENDATIONS), "segment_recommendations", mode="overwrite"
        )
        tables = {"segment_recommendations": store.version("segment_recommendations")}
        metrics: dict[str, float] = half_life.metrics()
        if cfg.recommend.per_user:
            tables["user_recommendations"] = write_user_lists(store, run, top, groups, texts, cfg)
            metrics["user_recommendations"] = store.row_count("user_recommendations")
    finally:
        top.unpersist()
    stored = store.read("segment_recommendations")
    figures = stored.agg(
        F.countDistinct("segment_id").alias("segments"),
        F.count(F.lit(1)).alias("rows"),
        F.countDistinct("item_id").alias("items"),
    ).first()
    metrics.update(
        {
            "segments_recommended": int(figures["segments"]),
            "recommendations": int(figures["rows"]),
            "distinct_items_recommended": int(figures["items"]),
        }
    )
    run.record_all("recommend", metrics)
    return StageResult(stage="recommend", tables=tables, metrics=metrics)
