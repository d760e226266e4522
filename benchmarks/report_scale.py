"""The report stage on the tables of a 1M-event store: its seconds and its folder's size.

    .venv/bin/python benchmarks/report_scale.py [--events 1000000] [--runs 12]
        [--segments N] [--workdir DIR [--build-only]] [--store ROOT] [--repeat N]
        [--write benchmarks/RESULTS.md]

Target (issue 22): the report of a 1M-event run builds in at most 30 s and its folder
holds at most 15 MB.

Building a 1M-event store through the whole pipeline takes about 8 minutes on 2 cores
(``scale.py``), nearly all of it embedding, clustering and labelling, none of which the
report does. So by default this script writes *representative tables* straight into a
fresh store, with the row counts and shapes of such a run and a history of ``--runs``
recorded runs (the first a ``run``, the others updates that each move 5% of the
users), each written inside a real recorded run (``runs``, ``run_metrics`` and the Delta
versions the report's time travel reads):

- ``events``: ``--events`` rows, ~21.3 per user as the generator makes (46,948 users for
  1M, as in ``scale.py``'s 1M row), texts from a 20,000-item catalog, partitioned by month;
  ``events_rejected``: 2% of that, five reasons;
- ``user_profiles``: one 384-d unit vector per user, near its segment's centroid;
- per run: ``user_segments`` (every user), ``segments`` (``--segments``, by default users
  / ``cluster.sub.target_size`` as the clustering makes them: 939 with conf/local.yaml,
  in 16 coarse clusters, each with a label, 8 keywords, 5 top items, a centroid, cohesion
  and reach), ``user_interests`` (1-3 per user), and the run's metrics;
- ``segment_recommendations``: 20 per segment.

The vectors are not a model's and the labels are made up: the report's cost depends on
how many rows, segments, runs and users it reads, samples and draws, which match.
``--store ROOT`` measures the report of an existing store instead (e.g. one that
``usersegments run`` built).

The report is then built the way ``usersegments report`` builds it, in a fresh process,
twice (cold, then warm JVM): the stage's seconds and CPU seconds, the process's wall
time, the folder's size and what the page holds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
EVENTS_PER_USER = 21.3  # the generator's average (scale.py)
DIM = 384  # the default model's vectors
CLUSTERS = 16
CATALOG = 20_000
MOVED_PER_UPDATE = 0.05
KINDS = ("view", "click", "purchase")
REASONS = ("bad_event_time", "empty_text", "invalid_encoding", "malformed_row", "missing_user_id")
WORDS = (
    "trail running gps watch ultramarathon hiking boots baking sourdough bread chess opening "
    "kayak paddle houseplants succulents budgeting emergency fund space opera romance novel "
    "black metal tremolo road racing strategy games city builder espresso grinder jazz vinyl"
).split()
TARGET_SECONDS, TARGET_MB = 30.0, 15.0
CPU_MARK = "report CPU seconds: "
BUILT_NOTE = "built.txt"  # beside a store this script built: how it was built
HEADING = "## Report: build time and folder size at 1M events"


def config(root: Path, overrides: list[str]):
    """conf/local.yaml with the store at ``root`` (local mode on every core, delta-rs)."""
    from usersegments.config import load_config

    return load_config(str(REPO / "conf" / "local.yaml"), ["spark.ui=off", *overrides], str(root))


# ---------------------------------------------------------------------------
# Representative tables


def catalog() -> pd.DataFrame:
    """item_id, text (a title and a description, ~70 characters) of ``CATALOG`` items."""
    rng = np.random.default_rng(1)
    words = rng.choice(WORDS, size=(CATALOG, 8))
    texts = [
        f"{' '.join(w[:4]).title()} {i} | {' '.join(w[4:])} for fans of {w[0]}"
        for i, w in enumerate(words)
    ]
    return pd.DataFrame({"item_id": [f"i{i:05d}" for i in range(CATALOG)], "text": texts})


def write_events(spark, store, events: int, users: int, run_id: str) -> None:
    """``events`` rows over ``users`` users and 120 days, and 2% rejected rows."""
    from pyspark.sql import functions as F

    from usersegments.schema import EVENTS, EVENTS_REJECTED, conform

    items = spark.createDataFrame(catalog()).withColumn("item", F.monotonically_increasing_id())
    end = datetime(2026, 11, 1, tzinfo=timezone.utc)
    start = int((end - timedelta(days=120)).timestamp())
    rows = (
        spark.range(events)
        .withColumn("user_id", F.format_string("u%06d", F.col("id") % users))
        .withColumn("item", (F.col("id") * 7919 + F.col("id") % users) % CATALOG)
        .join(F.broadcast(items), "item")
        .withColumn(
            "event_time", F.timestamp_seconds(F.lit(start) + (F.col("id") * 104729) % (120 * 86400))
        )
        .withColumn("event_date", F.to_date("event_time"))
        .select(
            F.sha2(F.col("id").cast("string"), 256).alias("event_id"),
            "user_id",
            "event_time",
            F.element_at(F.array(*map(F.lit, KINDS)), (F.col("id") % 3 + 1).cast("int")).alias(
                "event_type"
            ),
            "item_id",
            "text",
            F.sha2("text", 256).alias("text_hash"),
            F.lit(1.0).alias("value"),
            F.lit(None).cast("string").alias("category"),
            "event_date",
            F.trunc("event_date", "month").alias("event_month"),
            F.lit(run_id).alias("run_id"),
        )
    )
    store.write(conform(rows, EVENTS), "events", partition_by=["event_month"])
    rejected = spark.range(int(events * 0.02)).select(
        F.sha2(F.concat(F.lit("r"), F.col("id").cast("string")), 256).alias("reject_id"),
        F.format_string("u%06d", F.col("id") % users).alias("user_id"),
        *[F.lit(None).cast("string").alias(c) for c in ("event_time", "event_type", "item_id")],
        *[F.lit(None).cast("string").alias(c) for c in ("text", "value", "raw_record")],
        F.element_at(F.array(*map(F.lit, REASONS)), (F.col("id") % 5 + 1).cast("int")).alias(
            "reject_reason"
        ),
        F.lit("events.parquet").alias("source"),
        F.lit(1).cast("long").alias("occurrences"),
        F.lit(run_id).alias("run_id"),
        F.current_timestamp().alias("rejected_at"),
    )
    store.write(conform(rejected, EVENTS_REJECTED), "events_rejected")


def unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def write_profiles(spark, store, members: np.ndarray, centroids: np.ndarray, run_id: str):
    """One unit vector per user near its segment's centroid."""
    from pyspark.sql import functions as F

    from usersegments.schema import USER_PROFILES, conform

    rng = np.random.default_rng(2)
    vectors = unit(centroids[members] + rng.normal(0, 0.04, (len(members), DIM))).astype("f4")
    frame = pd.DataFrame(
        {
            "user_id": [f"u{u:06d}" for u in range(len(members))],
            "embedding": list(vectors),
            "n_events": np.full(len(members), round(EVENTS_PER_USER)),
        }
    )
    schema = "user_id string, embedding array<float>, n_events long"
    df = spark.createDataFrame(frame, schema).select(
        "user_id",
        "embedding",
        F.col("embedding").alias("weighted_sum"),
        F.lit(1.0).alias("weight_total"),
        "n_events",
        *[F.current_timestamp().alias(c) for c in ("first_event_time", "last_event_time")],
        F.lit("0").alias("events_through"),
        F.current_timestamp().alias("as_of"),
        F.lit(run_id).alias("run_id"),
    )
    store.write(conform(df, USER_PROFILES), "user_profiles", mode="overwrite")


def segment_ids(segments: int) -> tuple[list[str], np.ndarray]:
    """Segment ids ``cNN.sMM`` spread over the coarse clusters, and each one's cluster."""
    clusters = np.arange(segments) % CLUSTERS
    ids, seen = [], {}
    for c in clusters:
        seen[c] = seen.get(c, -1) + 1
        ids.append(f"c{c:02d}.s{seen[c]:02d}")
    return ids, clusters


def write_run_tables(spark, store, run_id: str, members, centroids, ids, clusters, rng) -> None:
    """One run's user_segments, user_interests and segments (sizes, reach, centroids)."""
    from usersegments.schema import SEGMENTS, USER_INTERESTS, USER_SEGMENTS, conform

    users = len(members)
    now = datetime.now(timezone.utc)
    user_ids = [f"u{u:06d}" for u in range(users)]
    seg = np.array(ids)[members]
    frame = pd.DataFrame(
        {
            "user_id": user_ids,
            "cluster_id": clusters[members].astype("i4"),
            "segment_id": seg,
            "distance": rng.uniform(0.05, 0.4, users),
            "n_events_at_entry": np.full(users, 21),
            "run_id": run_id,
            "as_of": now,
        }
    )
    store.write(conform(spark.createDataFrame(frame), USER_SEGMENTS), "user_segments", "overwrite")
    # 1 to 3 interests per user: its segment, then random others.
    counts = rng.choice([1, 2, 3], size=users, p=[0.5, 0.35, 0.15])
    owner = np.repeat(np.arange(users), counts)
    rank = np.concatenate([np.arange(c) for c in counts]) + 1
    others = rng.integers(0, len(ids), size=len(owner))
    interest = np.where(rank == 1, members[owner], others)
    interests = pd.DataFrame(
        {
            "user_id": np.array(user_ids)[owner],
            "interest_rank": rank.astype("i4"),
            "weight": 1.0 / rank,
            "segment_id": np.array(ids)[interest],
            "cluster_id": clusters[interest].astype("i4"),
            "n_events": np.full(len(owner), 7),
            "last_event_time": now,
            "embedding": [None] * len(owner),
            "run_id": run_id,
            "as_of": now,
        }
    )
    store.write(
        conform(spark.createDataFrame(interests, USER_INTERESTS), USER_INTERESTS),
        "user_interests",
        "overwrite",
    )
    sizes = np.bincount(members, minlength=len(ids))
    # reach: distinct users with the segment among their interests.
    reach = np.bincount(np.unique(owner * len(ids) + interest) % len(ids), minlength=len(ids))
    words = np.array(WORDS)
    segments = pd.DataFrame(
        {
            "segment_id": ids,
            "cluster_id": clusters.astype("i4"),
            "size": sizes,
            "label": [
                f"{words[i % len(words)]} · {words[(i * 7) % len(words)]}" for i in range(len(ids))
            ],
            "keywords": [list(words[(i + np.arange(8) * 3) % len(words)]) for i in range(len(ids))],
            "top_items": [
                [f"i{(i * 5 + j) % CATALOG:05d}" for j in range(5)] for i in range(len(ids))
            ],
            "centroid": list(centroids.astype("f4")),
            "cohesion": rng.uniform(0.5, 0.9, len(ids)),
            "reach": reach,
            "run_id": run_id,
        }
    )
    store.write(
        conform(spark.createDataFrame(segments, SEGMENTS), SEGMENTS), "segments", "overwrite"
    )


def write_recommendations(spark, store, ids: list[str], run_id: str) -> None:
    from usersegments.schema import SEGMENT_RECOMMENDATIONS, conform

    rows = [
        (s, r, f"i{(i * 31 + r) % CATALOG:05d}", None, 1.0 / r, run_id)
        for i, s in enumerate(ids)
        for r in range(1, 21)
    ]
    columns = ["segment_id", "rank", "item_id", "text", "score", "run_id"]
    df = spark.createDataFrame(pd.DataFrame(rows, columns=columns), SEGMENT_RECOMMENDATIONS)
    store.write(conform(df, SEGMENT_RECOMMENDATIONS), "segment_recommendations", "overwrite")


def build_store(
    root: Path, events: int, runs: int, segments: int | None, overrides: list[str]
) -> tuple[int, int]:
    """Write the representative tables of ``events`` events and ``runs`` runs; returns
    the users and segments written."""
    from usersegments.pipeline import finishing, open_context

    users = max(50, round(events / EVENTS_PER_USER))
    cfg = config(root, overrides)
    # As many segments as the clustering makes: about users / cluster.sub.target_size.
    segments = segments or max(CLUSTERS, round(users / cfg.cluster.sub.target_size))
    rng = np.random.default_rng(3)
    ids, clusters = segment_ids(segments)
    areas = unit(rng.normal(0, 1, (CLUSTERS, DIM)))
    centroids = unit(areas[clusters] + rng.normal(0, 0.35, (segments, DIM)))
    members = rng.integers(0, segments, size=users)
    for number in range(runs):
        t0 = time.perf_counter()
        with finishing(open_context(cfg, "run" if number == 0 else "update")) as ctx:
            spark, store, run_id = ctx.spark, ctx.store, ctx.run.run_id
            if number == 0:
                write_events(spark, store, events, users, run_id)
                write_profiles(spark, store, members, centroids, run_id)
                write_recommendations(spark, store, ids, run_id)
                ctx.run.record_all(
                    "ingest",
                    {
                        "rows_read": int(events * 1.03),
                        "accepted": events,
                        "rejected": int(events * 0.02),
                        "duplicates": int(events * 0.01),
                    },
                )
                ctx.run.record_all("cluster", {"k": CLUSTERS, "silhouette_cosine": 0.31})
            else:
                moved = rng.random(users) < MOVED_PER_UPDATE
                members = np.where(moved, rng.integers(0, segments, size=users), members)
                drift = rng.normal(0, 0.01, centroids.shape)
                centroids = unit(centroids + drift)
            write_run_tables(spark, store, run_id, members, centroids, ids, clusters, rng)
        print(f"run {number + 1}/{runs} written in {time.perf_counter() - t0:.0f} s", flush=True)
    ctx.spark.stop()  # the report is measured in a process of its own
    return users, segments


# ---------------------------------------------------------------------------
# Measuring the report


def report_child(root: Path, overrides: list[str]) -> None:
    """What ``usersegments report`` does (a recorded run of the report stage), in this
    fresh process, twice: first from a cold JVM (the command alone), then warm (as the
    last stage of ``run`` or ``update``). Prints each one's seconds and the CPU seconds
    it took (Spark's JVM and this Python process): shared cores slow the wall time, the
    CPU seconds far less."""
    from usersegments.pipeline import finishing, open_context, run_stage

    figures = {}
    with finishing(open_context(config(root, overrides), "report")) as ctx:
        jvm = int(ctx.spark.sparkContext._jvm.ProcessHandle.current().pid())
        for name in ("cold", "warm"):
            before = _jvm_cpu(jvm) + time.process_time()
            result = run_stage(ctx, "report")
            cpu = _jvm_cpu(jvm) + time.process_time() - before
            figures[name] = {"seconds": result.seconds, "cpu": cpu}
    print(CPU_MARK + json.dumps(figures))


def _jvm_cpu(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (/proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure_report(root: Path, overrides: list[str]) -> dict:
    """The report stage in a fresh process (``report_child``): stage seconds, CPU
    seconds, the process's wall time, the folder."""
    command = [sys.executable, __file__, "--report-child", str(root)]
    command += [arg for o in overrides for arg in ("--set", o)]
    load = os.getloadavg()
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"the report exited {done.returncode}:\n{done.stderr[-3000:]}")
    cpu = json.loads(done.stdout.split(CPU_MARK, 1)[1].splitlines()[0])
    from deltalake import DeltaTable

    metrics = DeltaTable(str(root / "run_metrics")).to_pandas()
    report = metrics[metrics["stage"] == "report"].sort_values("recorded_at")
    latest = report[report["run_id"] == report["run_id"].iloc[-1]]
    values = dict(zip(latest["metric"], latest["value"], strict=True))
    folder = root / "report"
    files = {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*") if p.is_file()}
    events = DeltaTable(str(root / "events")).to_pyarrow_dataset().count_rows()
    users = DeltaTable(str(root / "user_segments")).to_pyarrow_dataset().count_rows()
    segments = DeltaTable(str(root / "segments")).to_pyarrow_dataset().count_rows()
    return {
        "events": events,
        "users": users,
        "segments": segments,
        "report_seconds": cpu["cold"]["seconds"],
        "cpu_s": cpu["cold"]["cpu"],
        "warm_seconds": cpu["warm"]["seconds"],
        "warm_cpu_s": cpu["warm"]["cpu"],
        "wall_s": wall,
        "folder_bytes": sum(files.values()),
        "page_bytes": files.get("index.html", 0),
        "script_bytes": sum(v for k, v in files.items() if k.startswith("assets/")),
        "map_users": int(values.get("map_users", 0)),
        "runs_shown": int(values.get("runs_shown", 0)),
        "segments_shown": int(values.get("segments_shown", 0)),
        "load": load[:2],
    }


def _within(result: dict) -> bool:
    return (
        result["report_seconds"] <= TARGET_SECONDS and result["folder_bytes"] <= TARGET_MB * 2**20
    )  # judged on the cold stage, the slower


def render(results: list[dict], command: str, built: str) -> str:
    """The Markdown section for RESULTS.md: one row per report built."""
    lines = [
        HEADING,
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {platform.machine()}, {_cores()} cores, Python {platform.python_version()}",
        "",
        f"Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        "",
        f"Tables: {built}",
        "",
        "| events | users | segments | runs shown | map points | report stage, cold "
        "(CPU) | warm (CPU) | wall (process) | folder | of which page | of which plotly.js "
        "| load (1 / 5 min) | within 30 s / 15 MB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['events']:,} | {r['users']:,} | {r['segments']:,} | {r['runs_shown']} "
            f"| {r['map_users']:,} | {r['report_seconds']:.1f} s ({r['cpu_s']:.0f} s) "
            f"| {r['warm_seconds']:.1f} s ({r['warm_cpu_s']:.0f} s) | {r['wall_s']:.1f} s "
            f"| {r['folder_bytes'] / 2**20:.1f} MB | {r['page_bytes'] / 2**20:.1f} MB "
            f"| {r['script_bytes'] / 2**20:.1f} MB | {r['load'][0]:.1f} / {r['load'][1]:.1f} "
            f"| {'yes' if _within(r) else 'NO'} |"
        )
    lines += [
        "",
        "Each row is a fresh process (`--repeat` rows) that runs the report stage in a "
        "recorded run, as `usersegments report` does, twice: *cold* is the first, in a JVM "
        "that has run nothing yet (the command alone), *warm* the second (the report as the "
        "last stage of `run` or `update`). In brackets, the CPU seconds Spark's JVM and the "
        "Python driver spent meanwhile (JIT compilation included). The wall time is the "
        "whole process: Spark's start, both stages, the run's bookkeeping. The load is the "
        "machine's load average when the process started: other processes shared the 2 "
        "cores, and a higher load means a slower stage.",
        "",
    ]
    return "\n".join(lines)


def _cores() -> int:
    return len(os.sched_getaffinity(0))


def write_section(path: Path, section: str) -> None:
    """Replace (or append) the report section of ``path``."""
    heading = section.splitlines()[0]
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    if heading in text:
        before, rest = text.split(heading, 1)
        after = rest.split("\n## ", 1)
        text = before + section + ("\n## " + after[1] if len(after) > 1 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=12, help="recorded runs (report.history_runs)")
    parser.add_argument(
        "--segments", type=int, help="default: users / cluster.sub.target_size of the config"
    )
    parser.add_argument("--store", metavar="ROOT", help="measure this existing store instead")
    parser.add_argument("--workdir", metavar="DIR", help="build the store here (kept)")
    parser.add_argument("--build-only", action="store_true", help="build, do not measure")
    parser.add_argument("--repeat", type=int, default=1, help="reports built, one row each")
    parser.add_argument("--report-child", metavar="ROOT", help=argparse.SUPPRESS)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V")
    parser.add_argument("--write", metavar="PATH", help="write the section into this Markdown")
    args = parser.parse_args(argv)
    if args.report_child:
        report_child(Path(args.report_child), args.overrides)
        return 0
    command = "python benchmarks/report_scale.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    if args.store:
        root = Path(args.store).resolve()
        # A store this script built says how (written beside it).
        note = root.parent / BUILT_NOTE
        built = note.read_text() if note.exists() else f"the existing store {args.store}"
    else:
        workdir = Path(args.workdir or tempfile.mkdtemp(prefix="usersegments-report-"))
        root = workdir / "store"
        shutil.rmtree(root, ignore_errors=True)
        t0 = time.perf_counter()
        users, segments = build_store(root, args.events, args.runs, args.segments, args.overrides)
        built = (
            f"representative tables written by this script ({args.events:,} events, "
            f"{users:,} users, {segments} segments in {CLUSTERS} clusters, {args.runs} "
            f"recorded runs, {MOVED_PER_UPDATE:.0%} of users moved per update; "
            f"{time.perf_counter() - t0:.0f} s), not by the pipeline"
        )
        (root.parent / BUILT_NOTE).write_text(built, encoding="utf-8")
        print(f"store written under {root}", flush=True)
        if args.build_only:
            return 0
    results = []
    for attempt in range(1, args.repeat + 1):
        results.append(measure_report(root, args.overrides))
        print(f"attempt {attempt}: {json.dumps(results[-1])}", flush=True)
    section = render(results, command, built)
    print(section)
    if args.write:
        write_section(Path(args.write), section)
        print(f"written to {args.write}")
    return 0 if all(_within(r) for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
