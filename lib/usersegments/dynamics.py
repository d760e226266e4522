"""Dynamics: incremental updates, segment history, drift, re-clustering with stable ids.

``usersegments update --events NEW`` is one run made of idempotent
reconciliations, so a crash anywhere leaves committed tables and a rerun
finishes the work without duplicates:

1. **ingest** the new files (events MERGE on event_id) and **embed** texts not
   in the cache;
2. **fold** into ``user_profiles`` the events each user has that the profile
   does not hold yet (``run_id > events_through``), without re-reading old
   events: ``S_new = S_old * exp(-ln2 * dt / half_life) + sum(w_i v_i)``, the
   same for the total weight; new users get profiles. The fold and the
   ``events_through`` marker are one row, so a profile never folds an event twice;
3. **assign** every user whose profile is newer than their segment row to the
   nearest coarse cluster (cosine to its centroid, the size-weighted mean of its
   segments'), then the nearest segment centroid inside it (the rule of
   ``cluster.nearest_segment_frame``, which a full run settles users by), with
   hysteresis (``update.move_margin``) and an evidence floor (``update.min_new_events``
   events since the user entered their segment), and MERGE ``user_segments``;
4. **history**: ``segment_history`` is a type-2 slowly changing dimension; any
   user whose open row disagrees with ``user_segments`` gets it closed
   (``valid_to``) and a new one opened (seeded from the first full run);
5. **drift** metrics go to ``run_metrics``; when the share of moved users
   exceeds ``update.recluster_threshold`` (or with ``--recluster``) every
   profile is re-clustered and new segments are **matched** to old ones
   (Hungarian on centroid cosine): a segment that still exists keeps its id,
   new ones get fresh ids, and ``segment_lineage`` records what continued,
   was born, split, merged or ended.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from usersegments.cluster import (
    ClusterOutput,
    assign_to_segments,
    cluster_users,
    coarse_model_path,
    segment_id,
    unit_rows,
)
from usersegments.config import Config
from usersegments.embed import model_id, model_vectors
from usersegments.errors import StoreError
from usersegments.profile import LN2, SECONDS_PER_DAY, profiles_from_sums, weighted_sums
from usersegments.runlog import RunLog, StageResult
from usersegments.schema import (
    SEGMENT_HISTORY,
    SEGMENT_LINEAGE,
    SEGMENTS,
    USER_PROFILES,
    USER_SEGMENTS,
    conform,
)
from usersegments.store import TableStore

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------
# 2. Folding new events into stored sums


def pending_events(events: DataFrame, profiles: DataFrame) -> DataFrame:
    """Events a user's profile does not hold yet: ingested by a run after the profile's
    ``events_through`` (every event of a user without a profile)."""
    through = profiles.select("user_id", F.col("events_through").alias("_through"))
    return (
        events.join(through, "user_id", "left")
        .filter(F.col("_through").isNull() | (F.col("run_id") > F.col("_through")))
        .drop("_through")
    )


def fold_profiles(
    old: DataFrame, fresh: DataFrame, half_life_days: float, as_of: datetime, run_id: str
) -> DataFrame:
    """``user_profiles`` rows for the users of ``fresh``: old sums decayed to ``as_of``
    plus the fresh sums.

    ``old``: user_profiles rows; ``fresh``: ``weighted_sums`` of the pending events at
    ``as_of``. Users only in ``fresh`` are new. No old event is read.
    """
    rate = -LN2 / (half_life_days * SECONDS_PER_DAY)
    o = old.select(
        "user_id",
        F.col("weighted_sum").alias("_o_sum"),
        F.col("weight_total").alias("_o_total"),
        F.col("n_events").alias("_o_n"),
        F.col("first_event_time").alias("_o_first"),
        F.col("last_event_time").alias("_o_last"),
        F.col("events_through").alias("_o_through"),
        F.col("as_of").alias("_o_as_of"),
    )
    age = F.greatest(F.lit(0.0), F.lit(as_of).cast("double") - F.col("_o_as_of").cast("double"))
    # The decay is O(1) per element inside the lambda below, so Spark inlining it per
    # element costs little (unlike a norm, which is O(d)).
    joined = fresh.join(o, "user_id", "left").withColumn("_decay", F.exp(age * F.lit(rate)))
    summed = F.when(F.col("_o_sum").isNull(), F.col("weighted_sum")).otherwise(
        F.zip_with("_o_sum", "weighted_sum", lambda a, b: a * F.col("_decay") + b)
    )
    folded = joined.select(
        "user_id",
        summed.alias("weighted_sum"),
        (F.coalesce(F.col("_o_total") * F.col("_decay"), F.lit(0.0)) + F.col("weight_total")).alias(
            "weight_total"
        ),
        (F.coalesce(F.col("_o_n"), F.lit(0)) + F.col("n_events")).alias("n_events"),
        F.least("_o_first", "first_event_time").alias("first_event_time"),
        F.greatest("_o_last", "last_event_time").alias("last_event_time"),
        F.greatest("_o_through", "events_through").alias("events_through"),
    )
    return profiles_from_sums(folded, as_of, run_id)


def fold_pending(
    store: TableStore, cfg: Config, run: RunLog, vectors: DataFrame
) -> tuple[int, int, datetime | None]:
    """Fold every pending event into ``user_profiles``; (events folded, users, as_of)."""
    profiles = store.read("user_profiles")
    columns = ["user_id", "event_time", "event_type", "value", "text_hash", "run_id"]
    pending = pending_events(store.read("events").select(*columns), profiles).cache()
    try:
        n_events = pending.count()
        if n_events == 0:
            return 0, 0, None
        latest = pending.agg(F.max("event_time")).first()[0]
        stored_as_of = profiles.agg(F.max("as_of")).first()[0]
        as_of = max(t for t in (latest, stored_as_of) if t is not None)
        if cfg.profile.as_of is not None:
            as_of = cfg.profile.as_of
        as_of = as_of if as_of.tzinfo else as_of.replace(tzinfo=timezone.utc)
        fresh = weighted_sums(pending, vectors, cfg.profile, as_of)
        folded = fold_profiles(profiles, fresh, cfg.profile.half_life_days, as_of, run.run_id)
        result = store.merge(conform(folded, USER_PROFILES), "user_profiles", on=["user_id"])
    finally:
        pending.unpersist()
    return n_events, result.inserted + result.updated, as_of


# ---------------------------------------------------------------------------
# 3. Nearest-segment assignment


def stale_users(store: TableStore, min_events: int) -> DataFrame:
    """Profiles newer than their user's segment row (or without one), with enough events."""
    segs = store.read("user_segments").select("user_id", F.col("run_id").alias("_seg_run"))
    return (
        store.read("user_profiles")
        .filter(F.col("n_events") >= min_events)
        .join(segs, "user_id", "left")
        .filter(F.col("_seg_run").isNull() | (F.col("run_id") > F.col("_seg_run")))
        .select("user_id", "embedding", "as_of", "n_events")
    )


# ---------------------------------------------------------------------------
# 4. Segment history (SCD type 2)


def history_changes(
    current: DataFrame, open_rows: DataFrame, as_of: datetime, run_id: str
) -> DataFrame:
    """Rows to MERGE into segment_history on (user_id, valid_from) so that every user's
    open row names their current segment.

    ``current``: user_id, segment_id; ``open_rows``: the history rows with no valid_to.
    A user whose segment changed gets the open row closed at ``as_of`` and a new one
    opened; a row opened at this very ``as_of`` is rewritten instead.
    """
    o = open_rows.select(
        "user_id", F.col("segment_id").alias("_open_seg"), F.col("valid_from").alias("_open_from")
    )
    changed = current.join(o, "user_id", "left").filter(
        F.col("_open_seg").isNull() | (F.col("_open_seg") != F.col("segment_id"))
    )
    at = F.lit(as_of).cast("timestamp")
    same_time = F.col("_open_from") == at
    closes = changed.filter(F.col("_open_seg").isNotNull() & ~same_time).select(
        "user_id",
        F.col("_open_seg").alias("segment_id"),
        F.col("_open_from").alias("valid_from"),
        at.alias("valid_to"),
        F.lit(run_id).alias("run_id"),
    )
    opens = changed.select(
        "user_id",
        "segment_id",
        at.alias("valid_from"),
        F.lit(None).cast("timestamp").alias("valid_to"),
        F.lit(run_id).alias("run_id"),
    )
    return conform(closes.unionByName(opens), SEGMENT_HISTORY)


def reconcile_history(store: TableStore, as_of: datetime, run_id: str) -> int:
    """Make ``segment_history`` agree with ``user_segments``; returns rows merged.

    The first call seeds it: one open row per user from the clustering's as_of.
    """
    current = store.read("user_segments").select("user_id", "segment_id", "as_of")
    if not store.exists("segment_history"):
        seed = current.select(
            "user_id",
            "segment_id",
            F.col("as_of").alias("valid_from"),
            F.lit(None).cast("timestamp").alias("valid_to"),
            F.lit(run_id).alias("run_id"),
        )
        store.write(conform(seed, SEGMENT_HISTORY), "segment_history", mode="overwrite")
        return store.read("segment_history").count()
    open_rows = store.read("segment_history").filter(F.col("valid_to").isNull())
    changes = history_changes(current.drop("as_of"), open_rows, as_of, run_id).cache()
    try:
        n = changes.count()
        if n:
            store.merge(changes, "segment_history", on=["user_id", "valid_from"])
    finally:
        changes.unpersist()
    return n


# ---------------------------------------------------------------------------
# 5. Re-clustering with stable ids


@dataclass
class Matching:
    """New segment id -> kept (old) or fresh id, and the lineage rows of the change."""

    rename: dict[str, str]
    lineage: pd.DataFrame


def match_segments(
    old: pd.DataFrame,
    new: pd.DataFrame,
    flows: pd.DataFrame,
    min_similarity: float,
    retired: set[str] | None = None,
) -> Matching:
    """Match new segments to old ones so that a segment that still exists keeps its id.

    ``old``/``new``: segment_id, cluster_id, centroid; ``flows``: old_segment_id,
    new_segment_id, users (members moving from one to the other). Hungarian
    matching (scipy ``linear_sum_assignment``) on centroid cosine over all pairs,
    within and across coarse clusters; a pair below ``min_similarity`` is no match.
    Unmatched new segments get fresh ids ``c{cluster}.s{n}`` never used before (not
    an old id, nor one in ``retired``: ids of segments that ended earlier), and
    are ``split`` (most members from one kept segment) or ``born``; unmatched old
    segments ``merged`` (most members into one kept segment) or ``ended``.
    """
    from scipy.optimize import linear_sum_assignment

    def unit(frame: pd.DataFrame) -> np.ndarray:
        return unit_rows(np.vstack(frame["centroid"].to_numpy()))

    sims = unit(new) @ unit(old).T
    rows, cols = linear_sum_assignment(-sims)
    rename: dict[str, str] = {}
    lineage: list[tuple[str | None, str | None, str, float | None, int]] = []
    flow = {
        (o, n): int(u)
        for o, n, u in flows[["old_segment_id", "new_segment_id", "users"]].itertuples(index=False)
    }
    matched_old: set[str] = set()
    for r, c in zip(rows, cols, strict=True):
        if sims[r, c] >= min_similarity:
            old_id, new_id = old["segment_id"].iloc[c], new["segment_id"].iloc[r]
            rename[new_id] = old_id
            matched_old.add(old_id)
            lineage.append(
                (old_id, old_id, "continued", float(sims[r, c]), flow.get((old_id, new_id), 0))
            )
    used = set(old["segment_id"]) | set(rename.values()) | set(retired or ())
    next_sub: dict[int, int] = {}
    for seg in used:
        cluster, sub = _parse_id(seg)
        if cluster is not None:
            next_sub[cluster] = max(next_sub.get(cluster, 0), sub + 1)
    for i, new_id in enumerate(new["segment_id"]):
        if new_id in rename:
            continue
        cluster = int(new["cluster_id"].iloc[i])
        fresh = segment_id(cluster, next_sub.get(cluster, 0))
        next_sub[cluster] = next_sub.get(cluster, 0) + 1
        rename[new_id] = fresh
        sources = {o: u for (o, n), u in flow.items() if n == new_id}
        main = max(sources, key=sources.get) if sources else None
        total = sum(sources.values())
        if main in matched_old and sources[main] * 2 >= total:
            j = int(np.flatnonzero(old["segment_id"].to_numpy() == main)[0])
            lineage.append((main, fresh, "split", float(sims[i, j]), sources[main]))
        else:
            lineage.append((None, fresh, "born", None, total))
    for j, old_id in enumerate(old["segment_id"]):
        if old_id in matched_old:
            continue
        targets = {rename[n]: u for (o, n), u in flow.items() if o == old_id}
        main = max(targets, key=targets.get) if targets else None
        if main is not None and main in matched_old and targets[main] * 2 >= sum(targets.values()):
            i = int(np.flatnonzero(np.array([rename[n] for n in new["segment_id"]]) == main)[0])
            lineage.append((old_id, main, "merged", float(sims[i, j]), targets[main]))
        else:
            lineage.append((old_id, None, "ended", None, sum(targets.values())))
    frame = pd.DataFrame(
        lineage, columns=["old_segment_id", "new_segment_id", "event", "similarity", "users"]
    )
    return Matching(rename=rename, lineage=frame)


def _parse_id(segment: str) -> tuple[int | None, int]:
    try:
        cluster, sub = segment.split(".")
        return int(cluster[1:]), int(sub[1:])
    except (ValueError, IndexError):
        return None, 0


def recluster(spark: SparkSession, store: TableStore, cfg: Config, run: RunLog) -> dict[str, float]:
    """Re-cluster every profile, keep the ids of segments that still exist, record lineage."""
    old_segments = store.read("segments").select("segment_id", "cluster_id", "centroid").toPandas()
    old_members = store.read("user_segments").select(
        "user_id", F.col("segment_id").alias("old_segment_id")
    )
    path = coarse_model_path(store, run.run_id)
    out: ClusterOutput = cluster_users(spark, store.read("user_profiles"), cfg, run.run_id, path)
    try:
        new_segments = out.segments.select("segment_id", "cluster_id", "centroid").toPandas()
        flows = (
            old_members.join(
                out.user_segments.select("user_id", F.col("segment_id").alias("new_segment_id")),
                "user_id",
            )
            .groupBy("old_segment_id", "new_segment_id")
            .agg(F.count(F.lit(1)).alias("users"))
            .toPandas()
        )
        matching = match_segments(old_segments, new_segments, flows, cfg.update.match_similarity)
        pairs = F.create_map(*[F.lit(x) for kv in matching.rename.items() for x in kv])
        renamed_users = out.user_segments.withColumn("segment_id", pairs[F.col("segment_id")])
        renamed_segments = out.segments.withColumn("segment_id", pairs[F.col("segment_id")])
        store.write(conform(renamed_users, USER_SEGMENTS), "user_segments", mode="overwrite")
        store.write(conform(renamed_segments, SEGMENTS), "segments", mode="overwrite")
    finally:
        out.release()
    lineage = matching.lineage.assign(run_id=run.run_id, recorded_at=datetime.now(timezone.utc))
    lineage["users"] = lineage["users"].astype("int64")
    store.write(
        spark.createDataFrame(lineage[[f.name for f in SEGMENT_LINEAGE.fields]], SEGMENT_LINEAGE),
        "segment_lineage",
    )
    run.record_all("cluster", {"model_saved": 1, "k": out.coarse.k, "segments": len(new_segments)})
    counts = matching.lineage["event"].value_counts()
    return {
        "segments_continued": int(counts.get("continued", 0)),
        "segments_born": int(counts.get("born", 0)),
        "segments_split": int(counts.get("split", 0)),
        "segments_merged": int(counts.get("merged", 0)),
        "segments_ended": int(counts.get("ended", 0)),
        "segment_ids_kept_share": counts.get("continued", 0) / max(len(old_segments), 1),
    }


# ---------------------------------------------------------------------------
# The update stage


def run_update(
    spark: SparkSession,
    store: TableStore,
    cfg: Config,
    run: RunLog,
    recluster_now: bool = False,
) -> StageResult:
    """Fold pending events into profiles, reassign changed users, keep history, measure
    drift, and re-cluster with stable ids when drift is high (or when asked)."""
    for table in ("user_profiles", "user_segments", "segments", "events", "text_embeddings"):
        if not store.exists(table):
            raise StoreError(f"{table} does not exist: run `usersegments run` before `update`")
    mid = model_id(cfg.embed)
    run.model_id = run.model_id or mid
    vectors = model_vectors(store, mid)
    segments_before = store.read("segments").toPandas()
    previous = (
        store.read("user_segments")
        .select(
            "user_id",
            F.col("segment_id").alias("prev_segment"),
            F.col("distance").alias("prev_distance"),
            F.col("as_of").alias("prev_as_of"),
            F.col("n_events_at_entry").alias("prev_entry"),
        )
        .cache()
    )
    previous.count()
    baseline_as_of = previous.agg(F.max("prev_as_of")).first()[0]
    reconcile_history(store, baseline_as_of, run.run_id)  # seeds it on the first update

    events_folded, users_folded, as_of = fold_pending(store, cfg, run, vectors)
    metrics: dict[str, float] = {"events_folded": events_folded, "users_folded": users_folded}

    stale = stale_users(store, cfg.profile.min_events).cache()
    reassigned = stale.count()
    if as_of is None:
        as_of = stale.agg(F.max("as_of")).first()[0] or baseline_as_of
    metrics["users_reassigned"] = reassigned
    moved_share = 0.0
    if reassigned:
        users = stale.join(previous, "user_id", "left").select(
            "user_id",
            "embedding",
            F.col("prev_segment").alias("current_segment"),
            (F.col("n_events") - F.col("prev_entry")).alias("new_events"),
        )
        assigned = assign_to_segments(
            users, segments_before, cfg.update.move_margin, cfg.update.min_new_events
        )
        # A user who entered a segment now counts their evidence from here on.
        entered = F.col("prev_segment").isNull() | (F.col("prev_segment") != F.col("segment_id"))
        rows = (
            assigned.join(stale.select("user_id", "as_of", "n_events"), "user_id")
            .join(previous.select("user_id", "prev_segment", "prev_entry"), "user_id", "left")
            .withColumn(
                "n_events_at_entry",
                F.when(entered, F.col("n_events")).otherwise(F.col("prev_entry")),
            )
            .drop("prev_segment", "prev_entry")
            .withColumn("run_id", F.lit(run.run_id))
            .cache()
        )
        store.merge(conform(rows, USER_SEGMENTS), "user_segments", on=["user_id"])
        figures = (
            rows.join(previous, "user_id", "left")
            .agg(
                F.sum(F.col("prev_segment").isNotNull().cast("long")).alias("known"),
                F.sum(
                    (
                        F.col("prev_segment").isNotNull()
                        & (F.col("prev_segment") != F.col("segment_id"))
                    ).cast("long")
                ).alias("moved"),
                F.sum(F.col("prev_segment").isNull().cast("long")).alias("new_users"),
                F.avg("distance").alias("mean_distance"),
                F.avg("prev_distance").alias("mean_prev_distance"),
            )
            .first()
        )
        rows.unpersist()
        known = int(figures["known"] or 0)
        moved_share = (figures["moved"] or 0) / known if known else 0.0
        metrics.update(
            {
                "users_moved": int(figures["moved"] or 0),
                "users_new": int(figures["new_users"] or 0),
                "moved_share": moved_share,
                "mean_distance_reassigned": float(figures["mean_distance"] or 0.0),
                "mean_distance_reassigned_before": float(figures["mean_prev_distance"] or 0.0),
            }
        )
    stale.unpersist()
    metrics["mean_distance_full_run"] = float(
        previous.agg(F.avg("prev_distance")).first()[0] or 0.0
    )
    previous.unpersist()
    metrics.update(
        novelty(store, vectors, segments_before, run.run_id, cfg.update.novelty_distance)
    )

    reclustered = recluster_now or moved_share > cfg.update.recluster_threshold
    if reclustered:
        log.info(
            "update: re-clustering (%s)",
            "--recluster" if recluster_now else f"moved share {moved_share:.3f} > threshold",
        )
        metrics.update(recluster(spark, store, cfg, run))
    else:
        refresh_sizes(spark, store, segments_before)
    metrics["reclustered"] = int(reclustered)
    metrics.update(size_change(segments_before, store))
    metrics["history_rows_merged"] = reconcile_history(store, as_of, run.run_id)
    run.record_all("update", metrics)
    tables = ("user_profiles", "user_segments", "segments", "segment_history")
    return StageResult(
        stage="update", tables={t: store.version(t) for t in tables}, metrics=metrics
    )


def novelty(
    store: TableStore, vectors: DataFrame, segments: pd.DataFrame, run_id: str, distance: float
) -> dict[str, float]:
    """Share of the texts embedded by this run farther than ``distance`` from every centroid."""
    # Texts first seen by this run's embed stage are those its events brought in.
    fresh = (
        store.read("events")
        .filter(F.col("run_id") == run_id)
        .select("text_hash")
        .distinct()
        .join(vectors, "text_hash")
        .select("embedding")
        .toPandas()
    )
    if fresh.empty:
        return {"new_texts": 0, "novel_text_share": 0.0}
    centroids = unit_rows(np.vstack(segments["centroid"].to_numpy()))
    x = unit_rows(np.vstack(fresh["embedding"].to_numpy()))
    nearest = 1.0 - (x @ centroids.T).max(axis=1)
    return {"new_texts": len(x), "novel_text_share": float((nearest > distance).mean())}


def refresh_sizes(spark: SparkSession, store: TableStore, segments: pd.DataFrame) -> None:
    """Rewrite ``segments.size`` from ``user_segments`` (centroids stay until a re-cluster)."""
    sizes = store.read("user_segments").groupBy("segment_id").count().toPandas()
    counted = dict(zip(sizes["segment_id"], sizes["count"], strict=True))
    updated = segments.copy()
    updated["size"] = [int(counted.get(s, 0)) for s in updated["segment_id"]]
    if (updated["size"] == segments["size"]).all():
        return
    frame = spark.createDataFrame(updated[[f.name for f in SEGMENTS.fields]], SEGMENTS)
    store.write(frame, "segments", mode="overwrite")


def size_change(before: pd.DataFrame, store: TableStore) -> dict[str, float]:
    """How much segment sizes changed: share of users in changed sizes, largest change."""
    after = store.read("segments").select("segment_id", "size").toPandas()
    old = dict(zip(before["segment_id"], before["size"], strict=True))
    new = dict(zip(after["segment_id"], after["size"], strict=True))
    deltas = [abs(new.get(s, 0) - old.get(s, 0)) for s in set(old) | set(new)]
    total = max(sum(new.values()), 1)
    return {
        "segment_size_change_share": sum(deltas) / (2 * total),
        "segment_size_change_max": max(deltas) if deltas else 0,
    }
