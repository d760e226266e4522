"""Profile + cluster time as the number of users grows (synthetic planted vectors).

    .venv/bin/python benchmarks/cluster_scale.py [--users 10000 50000 200000] [--events-per-user 10]

For each size: a ``text_embeddings`` table of planted vectors (14 areas x 3
sub-styles around random unit centres, 6,000 texts) and an ``events`` table in
which each user mostly touches texts of one area are generated in Spark, then
the real ``profile`` and ``cluster`` stages run on them (local mode, delta-rs).
Prints seconds per stage, the growth ratio (time ratio / users ratio) between
consecutive sizes, and the coarse ARI against the planted areas.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time

import numpy as np

from usersegments.cluster import run_cluster
from usersegments.config import load_config
from usersegments.embed import model_id
from usersegments.profile import run_profile
from usersegments.runlog import RunLog
from usersegments.schema import EVENTS, TEXT_EMBEDDINGS, conform
from usersegments.session import build_session
from usersegments.store import TableStore

AREAS, STYLES, TEXTS_PER_STYLE, DIM = 14, 3, 143, 384


def planted_vectors(seed: int) -> np.ndarray:
    """Unit vectors: area centre + sub-style offset + noise, one row per text."""
    rng = np.random.default_rng(seed)
    areas = rng.standard_normal((AREAS, DIM))
    rows = []
    for a in range(AREAS):
        for _style in range(STYLES):
            style = areas[a] + 0.6 * rng.standard_normal(DIM)
            rows.append(style + 0.9 * rng.standard_normal((TEXTS_PER_STYLE, DIM)))
    x = np.vstack(rows)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def build_tables(spark, store: TableStore, users: int, per_user: int, mid: str, seed: int):
    """Write text_embeddings and events for ``users`` users into ``store``."""
    from pyspark.sql import functions as F

    vectors = planted_vectors(seed)
    per_area = STYLES * TEXTS_PER_STYLE
    texts = spark.createDataFrame(
        [(f"t{i}", mid, v.tolist()) for i, v in enumerate(vectors)],
        "text_hash string, model_id string, embedding array<float>",
    ).withColumn("created_at", F.current_timestamp())
    store.write(conform(texts, TEXT_EMBEDDINGS), "text_embeddings", mode="overwrite")
    n = users * per_user
    user = (F.col("id") % users).cast("long")
    area = user % AREAS
    noise = F.rand(seed) < 0.1
    text_area = F.when(noise, (F.rand(seed + 1) * AREAS).cast("long")).otherwise(area)
    text = text_area * per_area + (F.rand(seed + 2) * per_area).cast("long")
    events = spark.range(n, numPartitions=max(2, n // 500_000)).select(
        F.sha2(F.col("id").cast("string"), 256).alias("event_id"),
        F.format_string("u%07d", user).alias("user_id"),
        (F.lit(1_780_000_000) - (F.rand(seed + 3) * 60 * 86400).cast("long"))
        .cast("timestamp")
        .alias("event_time"),
        F.lit("view").alias("event_type"),
        F.lit(None).cast("string").alias("item_id"),
        F.lit("synthetic").alias("text"),
        F.concat(F.lit("t"), text.cast("string")).alias("text_hash"),
        F.lit(None).cast("double").alias("value"),
        F.lit(None).cast("string").alias("category"),
        F.lit("bench").alias("run_id"),
    )
    # The partition columns ingest derives from the event time.
    events = events.withColumn("event_date", F.to_date("event_time")).withColumn(
        "event_month", F.trunc(F.to_date("event_time"), "month")
    )
    store.write(conform(events, EVENTS), "events", mode="overwrite")


def main(argv: list[str] | None = None) -> int:
    """Time profile + cluster at each size and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, nargs="+", default=[10_000, 50_000, 200_000])
    parser.add_argument("--events-per-user", type=int, default=10)
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args(argv)

    root = tempfile.mkdtemp(prefix="cluster-scale-")
    cfg = load_config(
        overrides=[
            "spark.ui=off",
            "spark.log_level=ERROR",
            "spark.driver_memory=8g",
            "cluster.sub.target_size=150",
        ],
        output=root,
    )
    spark = build_session(cfg)
    mid = model_id(cfg.embed)
    rows = []
    try:
        for users in args.users:
            store = TableStore.from_config(spark, cfg)
            build_tables(spark, store, users, args.events_per_user, mid, args.seed)
            run = RunLog(spark, store, cfg, "bench")
            t0 = time.perf_counter()
            run_profile(spark, store, cfg, run)
            t1 = time.perf_counter()
            result = run_cluster(spark, store, cfg, run)
            t2 = time.perf_counter()
            labels = store.read("user_segments").select("user_id", "cluster_id").toPandas()
            from sklearn.metrics import adjusted_rand_score

            planted = labels["user_id"].str[1:].astype(int) % AREAS
            ari = adjusted_rand_score(planted, labels["cluster_id"])
            rows.append(
                (
                    users,
                    t1 - t0,
                    t2 - t1,
                    int(result.metrics["k"]),
                    int(result.metrics["segments"]),
                    ari,
                )
            )
            print(
                f"# done: {users} users, profile {t1 - t0:.1f}s, cluster {t2 - t1:.1f}s, "
                f"ARI {ari:.3f}",
                file=sys.stderr,
                flush=True,
            )
            for name in store.tables():
                shutil.rmtree(store.path(name), ignore_errors=True)
    finally:
        spark.stop()
        shutil.rmtree(root, ignore_errors=True)

    print(
        f"# profile + cluster scale, {args.events_per_user} events/user, "
        f"{os.cpu_count()} cores, {platform.machine()}, python {sys.version.split()[0]}"
    )
    print(f"# command: {' '.join([os.path.basename(sys.executable), *sys.argv])}")
    print(
        f"{'users':>8} {'profile s':>10} {'cluster s':>10} {'total s':>8} {'k':>4} "
        f"{'segments':>9} {'ARI':>6} {'growth':>8}"
    )
    previous = None
    for users, p, c, k, segments, ari in rows:
        growth = ""
        if previous is not None:
            growth = f"{((p + c) / previous[1]) / (users / previous[0]):.2f}"
        print(
            f"{users:8d} {p:10.1f} {c:10.1f} {p + c:8.1f} {k:4d} {segments:9d} {ari:6.3f} "
            f"{growth:>8}"
        )
        previous = (users, p + c)
    print("# growth = (time ratio) / (users ratio) against the previous size; 1.0 is linear")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
