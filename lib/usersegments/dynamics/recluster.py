"""Re-clustering with stable segment ids and ``segment_lineage``.

Every profile is clustered afresh and the new segments are matched to the old ones
(Hungarian on centroid cosine): a segment that still exists keeps its id, new ones
get fresh ids, and ``segment_lineage`` records what continued, was born, split,
merged or ended.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from usersegments.cluster import (
    ClusterOutput,
    cluster_users,
    segment_id,
    unit_rows,
)
from usersegments.config import Config
from usersegments.frames import literal_map, to_spark
from usersegments.runlog import RunLog
from usersegments.schema import SEGMENT_LINEAGE, SEGMENTS, USER_SEGMENTS, conform
from usersegments.store import TableStore

LINEAGE_COLUMNS = ["old_segment_id", "new_segment_id", "event", "similarity", "users"]
LINEAGE_EVENTS = ("continued", "born", "split", "merged", "ended")

# (old_segment_id, new_segment_id, event, similarity, users)
LineageRow = tuple[str | None, str | None, str, float | None, int]


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
    sims = _unit_centroids(new) @ _unit_centroids(old).T
    flow = {
        (o, n): int(u)
        for o, n, u in flows[["old_segment_id", "new_segment_id", "users"]].itertuples(index=False)
    }
    rename, lineage = _keep_matched_ids(old, new, sims, flow, min_similarity)
    matched_old = set(rename.values())
    next_sub = _next_sub_ids(set(old["segment_id"]) | set(retired or ()))
    lineage += _name_unmatched_new(old, new, sims, flow, rename, matched_old, next_sub)
    lineage += _close_unmatched_old(old, new, sims, flow, rename, matched_old)
    return Matching(rename=rename, lineage=pd.DataFrame(lineage, columns=LINEAGE_COLUMNS))


def _unit_centroids(segments: pd.DataFrame) -> np.ndarray:
    return unit_rows(np.vstack(segments["centroid"].to_numpy()))


def _keep_matched_ids(
    old: pd.DataFrame,
    new: pd.DataFrame,
    sims: np.ndarray,
    flow: dict[tuple[str, str], int],
    min_similarity: float,
) -> tuple[dict[str, str], list[LineageRow]]:
    """Hungarian matching: each new segment matched similarly enough keeps its old id."""
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(-sims)
    rename: dict[str, str] = {}
    lineage: list[LineageRow] = []
    for r, c in zip(rows, cols, strict=True):
        if sims[r, c] >= min_similarity:
            old_id, new_id = old["segment_id"].iloc[c], new["segment_id"].iloc[r]
            rename[new_id] = old_id
            lineage.append(
                (old_id, old_id, "continued", float(sims[r, c]), flow.get((old_id, new_id), 0))
            )
    return rename, lineage


def _next_sub_ids(used: set[str]) -> dict[int, int]:
    """Per coarse cluster, the first sub-number above every id in ``used``."""
    next_sub: dict[int, int] = {}
    for seg in used:
        cluster, sub = _parse_id(seg)
        if cluster is not None:
            next_sub[cluster] = max(next_sub.get(cluster, 0), sub + 1)
    return next_sub


def _parse_id(segment: str) -> tuple[int | None, int]:
    try:
        cluster, sub = segment.split(".")
        return int(cluster[1:]), int(sub[1:])
    except (ValueError, IndexError):
        return None, 0


def _name_unmatched_new(
    old: pd.DataFrame,
    new: pd.DataFrame,
    sims: np.ndarray,
    flow: dict[tuple[str, str], int],
    rename: dict[str, str],
    matched_old: set[str],
    next_sub: dict[int, int],
) -> list[LineageRow]:
    """Give each unmatched new segment a fresh id (added to ``rename``, ``next_sub``
    advanced) and its lineage row: ``split`` off a kept segment that gave it most of its
    members, else ``born``."""
    lineage: list[LineageRow] = []
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
    return lineage


def _close_unmatched_old(
    old: pd.DataFrame,
    new: pd.DataFrame,
    sims: np.ndarray,
    flow: dict[tuple[str, str], int],
    rename: dict[str, str],
    matched_old: set[str],
) -> list[LineageRow]:
    """The lineage row of each unmatched old segment: ``merged`` into a kept segment that
    took most of its members, else ``ended``. ``rename`` covers every new segment."""
    lineage: list[LineageRow] = []
    final_ids = np.array([rename[n] for n in new["segment_id"]])
    for j, old_id in enumerate(old["segment_id"]):
        if old_id in matched_old:
            continue
        targets = {rename[n]: u for (o, n), u in flow.items() if o == old_id}
        main = max(targets, key=targets.get) if targets else None
        if main is not None and main in matched_old and targets[main] * 2 >= sum(targets.values()):
            i = int(np.flatnonzero(final_ids == main)[0])
            lineage.append((old_id, main, "merged", float(sims[i, j]), targets[main]))
        else:
            lineage.append((old_id, None, "ended", None, sum(targets.values())))
    return lineage


def member_flows(old_members: DataFrame, new_members: DataFrame) -> pd.DataFrame:
    """Users per (old_segment_id, new_segment_id) pair, from two user_id, segment_id frames."""
    return (
        old_members.select("user_id", F.col("segment_id").alias("old_segment_id"))
        .join(new_members.select("user_id", F.col("segment_id").alias("new_segment_id")), "user_id")
        .groupBy("old_segment_id", "new_segment_id")
        .agg(F.count(F.lit(1)).alias("users"))
        .toPandas()
    )


def lineage_metrics(lineage: pd.DataFrame, old_segments: int) -> dict[str, float]:
    """Lineage events counted, and the share of old segments whose id was kept."""
    counts = lineage["event"].value_counts()
    metrics: dict[str, float] = {
        f"segments_{event}": int(counts.get(event, 0)) for event in LINEAGE_EVENTS
    }
    metrics["segment_ids_kept_share"] = counts.get("continued", 0) / max(old_segments, 1)
    return metrics


def recluster(spark: SparkSession, store: TableStore, cfg: Config, run: RunLog) -> dict[str, float]:
    """Re-cluster every profile, keep the ids of segments that still exist, record lineage."""
    old_segments = store.read("segments").select("segment_id", "cluster_id", "centroid").toPandas()
    old_members = store.read("user_segments").select("user_id", "segment_id")
    out: ClusterOutput = cluster_users(spark, store.read("user_profiles"), cfg, run.run_id)
    try:
        new_segments = out.segments.select("segment_id", "cluster_id", "centroid").toPandas()
        flows = member_flows(old_members, out.user_segments)
        matching = match_segments(old_segments, new_segments, flows, cfg.update.match_similarity)
        kept_ids = literal_map(matching.rename)
        renamed_users = out.user_segments.withColumn("segment_id", kept_ids[F.col("segment_id")])
        renamed_segments = out.segments.withColumn("segment_id", kept_ids[F.col("segment_id")])
        store.write(conform(renamed_users, USER_SEGMENTS), "user_segments", mode="overwrite")
        store.write(conform(renamed_segments, SEGMENTS), "segments", mode="overwrite")
    finally:
        out.release()
    lineage = matching.lineage.assign(run_id=run.run_id, recorded_at=datetime.now(timezone.utc))
    lineage["users"] = lineage["users"].astype("int64")
    store.write(to_spark(spark, lineage, SEGMENT_LINEAGE), "segment_lineage")
    run.record_all("cluster", {"k": out.coarse.k, "segments": len(new_segments)})
    return lineage_metrics(matching.lineage, len(old_segments))
