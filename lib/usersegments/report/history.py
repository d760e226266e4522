"""Segments over runs, read back through Delta time travel.

``segments`` and ``user_segments`` are overwritten by every clustering and update; their
earlier versions still hold what each run left. A run's snapshot is the latest version
committed before the run finished (the run in progress, which writes the report, takes
the current version). Only per-run aggregates and per-user *paths* (the segment of a
user in each run, counted per distinct path) reach the driver, so the report stays
small whatever the number of users.
"""

from __future__ import annotations

import logging
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from usersegments.cluster import unit_rows
from usersegments.store import TableStore
from usersegments.times import collected_utc

log = logging.getLogger(__name__)

SNAPSHOT_TABLES = ("segments", "user_segments")
INTERESTS_TABLE = "user_interests"  # per-user multi-interests, when that stage exists
PATH_LIMIT = 20_000  # distinct user paths collected; beyond it only the last two runs
SEGMENT_COLUMNS = ["segment_id", "cluster_id", "size", "label", "keywords", "centroid"]
# What History keeps of each run's segments: the centroid's drift (cosine distance from the
# segment's first run) in place of the centroid.
SNAPSHOT_COLUMNS = ["segment_id", "cluster_id", "size", "label", "keywords", "drift"]
REACH = "reach"  # segments' column of users interested (stores from before it lack it)


@dataclass
class RunPoint:
    """One run on the timeline and the table versions it left."""

    run_id: str
    command: str
    started_at: datetime
    versions: dict[str, int]


@dataclass
class History:
    """What the over-runs views show, oldest run first.

    ``snapshots``: one row per (run index, segment) with size, label, keywords and drift
    (the cosine distance of its centroid from that in the first run it appears in).
    ``paths``: distinct sequences of segment ids (None = not segmented in that run) over
    ``path_runs`` (indices into ``runs``) with the number of users who took each.
    ``reach``: (run index, segment_id) -> users interested, from each run's
    ``segments.reach`` (runs whose segments hold none are left out).
    """

    runs: list[RunPoint] = field(default_factory=list)
    snapshots: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(columns=["run", *SNAPSHOT_COLUMNS])
    )
    paths: list[tuple[tuple[str | None, ...], int]] = field(default_factory=list)
    path_runs: list[int] = field(default_factory=list)
    reach: dict[tuple[int, str], int] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        """What the page calls each run: its number, command and start time (unique, so
        runs started in the same minute stay apart on an axis)."""
        return [
            f"{i}. {r.command} {r.started_at:%Y-%m-%d %H:%M}" for i, r in enumerate(self.runs, 1)
        ]


def gather_history(store: TableStore, limit: int, pool: Executor | None = None) -> History:
    """The last ``limit`` runs that changed the segments, with their snapshots and paths
    (read at the same time when given a ``pool`` of threads).

    Versions removed by VACUUM cannot be read back: the history then starts at the first
    run still readable (logged), and with none readable it holds the current state only.
    """
    runs = run_timeline(store, limit)
    while runs:
        try:
            return _read_history(store, runs, pool)
        except Exception as error:  # noqa: BLE001 - a vacuumed version fails in many ways
            if len(runs) == 1:
                log.warning("report: segment history unreadable (%s)", error)
                return History()
            log.info("report: run %s no longer readable (%s); dropped", runs[0].run_id, error)
            runs = runs[1:]
    return History()


def _read_history(store: TableStore, runs: list[RunPoint], pool: Executor | None) -> History:
    reading = pool.submit(_snapshots, store, runs) if pool is not None else None
    paths, path_runs = _paths(store, runs)
    snapshots = reading.result() if reading is not None else _snapshots(store, runs)
    history = History(runs=runs, snapshots=snapshots.drop(columns=[REACH]))
    history.paths, history.path_runs = paths, path_runs
    # The reach each run left in segments (what the segment list shows), not a count
    # over every version of user_interests: a dozen fewer version reads.
    known = snapshots[snapshots[REACH].notna()]
    history.reach = {
        (int(r), str(s)): int(u)
        for r, s, u in zip(known["run"], known["segment_id"], known[REACH], strict=True)
    }
    return history


def run_timeline(store: TableStore, limit: int) -> list[RunPoint]:
    """Succeeded runs (and the run in progress) that left new segment versions, oldest
    first, the last ``limit`` of them."""
    if not all(store.exists(t) for t in (*SNAPSHOT_TABLES, "runs")):
        return []
    commits = {t: _commit_times(store, t) for t in (*SNAPSHOT_TABLES, INTERESTS_TABLE)}
    rows = (
        store.read("runs")
        .select("run_id", "command", "started_at", "finished_at", "status")
        .orderBy("started_at", "run_id")
        .collect()
    )
    now = datetime.now(timezone.utc)
    points: list[RunPoint] = []
    for number, row in enumerate(rows):
        in_progress = row["status"] == "running" and number == len(rows) - 1
        if row["status"] != "succeeded" and not in_progress:
            continue
        end = now if in_progress else collected_utc(row["finished_at"])
        versions = {t: v for t, c in commits.items() if (v := _version_at(c, end)) is not None}
        if not all(t in versions for t in SNAPSHOT_TABLES):
            continue
        if points and points[-1].versions == versions:
            continue  # the run left the segments as they were (a report, an evaluation)
        started = collected_utc(row["started_at"])
        points.append(RunPoint(row["run_id"], row["command"], started, versions))
    return points[-limit:]


def _commit_times(store: TableStore, name: str) -> list[tuple[datetime, int]]:
    """(commit time as aware UTC, version) of every commit of ``name``, oldest first."""
    if not store.exists(name):
        return []
    # TableStore.history gives aware UTC times on both backends.
    return sorted((v.timestamp, v.version) for v in store.history(name))


def _version_at(commits: list[tuple[datetime, int]], end: datetime) -> int | None:
    """The latest version committed at or before ``end`` (None before the first)."""
    done = [version for at, version in commits if at <= end]
    return max(done) if done else None


def _snapshots(store: TableStore, runs: list[RunPoint]) -> pd.DataFrame:
    """Every run's segments with their reach (null where a version has none) and drift,
    one Spark job over the versions, a few rows per run."""
    frames = []
    for i, run in enumerate(runs):
        version = store.read_version("segments", run.versions["segments"])
        reach = F.col(REACH) if REACH in version.columns else F.lit(None)
        frames.append(
            version.select(*SEGMENT_COLUMNS, reach.cast("long").alias(REACH)).withColumn(
                "run", F.lit(i)
            )
        )
    snapshots = _union(frames).toPandas().sort_values(["run", "segment_id"])
    # Drift on the driver: a few thousand centroids are a moment's numpy, while Spark's
    # array functions over them cost seconds of interpreted lambdas.
    snapshots["drift"] = centroid_drift(snapshots)
    return snapshots.drop(columns=["centroid"]).reset_index(drop=True)


def centroid_drift(snapshots: pd.DataFrame) -> pd.Series:
    """Per row of ``snapshots`` (run, segment_id, centroid): the cosine distance of the
    centroid from the segment's centroid in the first run it appears in, to 5 decimals
    (1 when either is a zero vector)."""
    if snapshots.empty:
        return pd.Series([], index=snapshots.index, dtype=float)
    ordered = snapshots.sort_values("run")
    unit = unit_rows(np.vstack(ordered["centroid"].to_numpy()))
    # Each row's segment's first row in run order.
    first = ordered.groupby("segment_id", sort=False).cumcount().eq(0).to_numpy()
    owner = ordered["segment_id"].to_numpy()
    first_of = dict(zip(owner[first], np.flatnonzero(first), strict=True))
    anchor = unit[[first_of[s] for s in owner]]
    distance = np.round(1.0 - np.einsum("ij,ij->i", unit, anchor), 5)
    return pd.Series(distance, index=ordered.index).reindex(snapshots.index)


def _memberships(store: TableStore, runs: list[RunPoint], which: list[int]) -> DataFrame:
    """user_id, run, segment_id of the runs ``which``, from user_segments' versions."""
    return _union(
        [
            store.read_version("user_segments", runs[i].versions["user_segments"])
            .select("user_id", "segment_id")
            .withColumn("run", F.lit(i))
            for i in which
        ]
    )


def _paths(
    store: TableStore, runs: list[RunPoint]
) -> tuple[list[tuple[tuple[str | None, ...], int]], list[int]]:
    """Distinct per-user segment sequences over the runs with their user counts.

    When more than ``PATH_LIMIT`` distinct sequences exist (much churn over many runs)
    the sequences cover the last two runs only (read again: two versions), whose count
    is bounded by segments². Nothing is cached: keeping every user's row in memory cost
    more than reading two versions again.
    """
    which = list(range(len(runs)))
    for attempt in (which, which[-2:]):
        by_user = _segment_per_run(_memberships(store, runs, attempt), attempt)
        paths = _collect_paths(_path_counts(by_user, attempt), attempt, PATH_LIMIT + 1)
        if len(paths) <= PATH_LIMIT or len(attempt) <= 2:
            return paths[:PATH_LIMIT], attempt
    return [], []


def _segment_per_run(memberships: DataFrame, which: list[int]) -> DataFrame:
    """One row per user: column ``r<i>`` = the user's segment in run ``i`` (null when
    absent), by conditional aggregation (cheaper than collecting a map per user)."""
    run, segment = F.col("run"), F.col("segment_id")
    return memberships.groupBy("user_id").agg(
        *[F.max(F.when(run == i, segment)).alias(f"r{i}") for i in which]
    )


def _path_counts(by_user: DataFrame, which: list[int]) -> DataFrame:
    """Users per distinct path over the runs ``which`` (columns ``r<i>``, ``count``)."""
    columns = [f"r{i}" for i in which]
    return (
        by_user.filter(F.coalesce(*columns).isNotNull())  # users in none of these runs
        .groupBy(*columns)
        .count()
    )


def _collect_paths(
    counted: DataFrame, which: list[int], limit: int
) -> list[tuple[tuple[str | None, ...], int]]:
    """(segment per run of ``which``, users) for the ``limit`` paths of most users
    (through Arrow: tens of thousands of rows convert far faster than as Row objects)."""
    frame = counted.orderBy(F.desc("count")).limit(limit).toPandas()
    frame = frame.astype(object).where(frame.notna(), None)  # NaN for an absent run -> None
    steps = [f"r{i}" for i in which]
    return [
        (tuple(row[:-1]), int(row[-1]))
        for row in frame[[*steps, "count"]].itertuples(index=False, name=None)
    ]


def _union(frames: list[DataFrame]) -> DataFrame:
    out = frames[0]
    for frame in frames[1:]:
        out = out.unionByName(frame)
    return out


def flows(history: History, a: int, b: int) -> pd.DataFrame:
    """Users from each segment of run ``a`` to each segment of run ``b`` (None = absent):
    columns source, target, users; only runs the paths cover."""
    pa, pb = history.path_runs.index(a), history.path_runs.index(b)
    rows = [(path[pa], path[pb], users) for path, users in history.paths]
    frame = pd.DataFrame(rows, columns=["source", "target", "users"])
    return frame.groupby(["source", "target"], dropna=False, as_index=False)["users"].sum()


def drift_series(snapshots: pd.DataFrame) -> dict[str, list[float | None]]:
    """segment_id -> its centroid drift in each run (``centroid_drift``; None in runs
    without the segment)."""
    runs = int(snapshots["run"].max()) + 1 if len(snapshots) else 0
    drift: dict[str, list[float | None]] = {}
    for seg, rows in snapshots.groupby("segment_id"):
        series: list[float | None] = [None] * runs
        for run, distance in zip(rows["run"], rows["drift"], strict=True):
            series[int(run)] = None if pd.isna(distance) else float(distance)
        drift[str(seg)] = series
    return drift
