"""The fixed Spark costs of the cluster fit and of per-user interests, before and after.

    .venv/bin/python benchmarks/fit_overheads.py [--users 2000] [--events-per-user 10]
        [--partitions 8]

On the planted tables of ``cluster_scale.py`` (14 areas x 3 sub-styles, each user mostly
in one area), after the real ``profile`` stage, in one session and one run:

- **cluster**: ``cluster_users`` on profiles in ``--partitions`` partitions (as evaluate
  and tune get them, out of a shuffle), baseline = the previous defaults
  (``cluster.max_iter`` 20, the fit reading every partition) against now
  (``cluster.max_iter`` 10, ``frames.fit_partitions``); seconds and ARI against the
  planted areas.
- **interests**: Ward per user over the same weighted events, baseline =
  ``groupBy(user_id).applyInPandas`` (a group per user, as before) against now
  (``interests_of_users``: ``frames.apply_per_key``); seconds and whether both give the
  same interests.

Each side runs twice, the first time discarded (Python workers, JIT, caches warm).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cluster_scale import AREAS, build_tables  # noqa: E402

from usersegments import frames  # noqa: E402
from usersegments.cluster import stage as cluster_stage  # noqa: E402
from usersegments.config import load_config  # noqa: E402
from usersegments.embed import model_id, model_vectors  # noqa: E402
from usersegments.interests.events import recent_weighted_events  # noqa: E402
from usersegments.interests.local import (  # noqa: E402
    INTEREST_SCHEMA,
    interests_of_users,
    user_interests,
)
from usersegments.interests.stage import interest_rule  # noqa: E402
from usersegments.profile import run_profile  # noqa: E402
from usersegments.runlog import RunLog  # noqa: E402
from usersegments.session import build_session  # noqa: E402
from usersegments.store import TableStore  # noqa: E402
from usersegments.times import max_time  # noqa: E402


def timed(function):
    """Seconds of the second of two calls, and its result (the first warms up)."""
    function()
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def cluster_ari(spark, profiles, cfg, whole_frame: bool) -> float:
    """ARI of the coarse clusters against the planted areas (one row per user reaches
    the driver: a benchmark on a few thousand users)."""
    from sklearn.metrics import adjusted_rand_score

    if whole_frame:
        cluster_stage.fit_partitions = lambda frame, *_: frame
    try:
        out = cluster_stage.cluster_users(spark, profiles, cfg, "bench")
    finally:
        cluster_stage.fit_partitions = frames.fit_partitions
    try:
        labels = out.user_segments.select("user_id", "cluster_id").toPandas()
    finally:
        out.release()
    return adjusted_rand_score(labels["user_id"].str[1:].astype(int) % AREAS, labels["cluster_id"])


def interests_per_group(weighted, rule):
    """The previous way: one ``applyInPandas`` group per user."""

    def one_user(pdf: pd.DataFrame) -> pd.DataFrame:
        pdf = pdf.sort_values(["event_time", "text_hash", "weight"], kind="stable")
        found = user_interests(
            np.vstack(pdf["embedding"].to_numpy()),
            pdf["weight"].to_numpy(),
            pdf["event_time"].to_numpy(),
            rule,
        )
        found.insert(0, "user_id", pdf["user_id"].iloc[0])
        return found

    return (
        weighted.select("user_id", "event_time", "text_hash", "weight", "embedding")
        .groupBy("user_id")
        .applyInPandas(one_user, schema=INTEREST_SCHEMA)
    )


def main(argv: list[str] | None = None) -> int:
    """Run both comparisons and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--events-per-user", type=int, default=10)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args(argv)

    root = tempfile.mkdtemp(prefix="fit-overheads-")
    overrides = ["spark.ui=off", "spark.log_level=ERROR", "cluster.sub.target_size=150"]
    cfg = load_config(overrides=overrides, output=root)
    before = load_config(overrides=[*overrides, "cluster.max_iter=20"], output=root)
    spark = build_session(cfg)
    rows = []
    try:
        store = TableStore.from_config(spark, cfg)
        build_tables(spark, store, args.users, args.events_per_user, model_id(cfg.embed), 3)
        run_profile(spark, store, cfg, RunLog(spark, store, cfg, "bench"))
        profiles = store.read("user_profiles").repartition(args.partitions).cache()
        profiles.count()
        base_s, base_ari = timed(lambda: cluster_ari(spark, profiles, before, whole_frame=True))
        now_s, now_ari = timed(lambda: cluster_ari(spark, profiles, cfg, whole_frame=False))
        rows.append(("cluster_users", base_s, now_s, f"ARI {base_ari:.3f} -> {now_ari:.3f}"))

        events = store.read("events")
        profile = cfg.profile.model_copy(update={"half_life_days": 14.0})
        weighted = recent_weighted_events(
            events,
            model_vectors(store, model_id(cfg.embed)),
            profiles.select("user_id"),
            profile,
            max_time(events, "event_time"),
            cfg.interests.max_events_per_user,
        ).cache()
        weighted.count()
        rule = interest_rule(cfg)
        base_s, base = timed(lambda: interests_per_group(weighted, rule).toPandas())
        now_s, now = timed(lambda: interests_of_users(weighted, rule).toPandas())
        key = ["user_id", "interest_rank"]
        base, now = base.sort_values(key).reset_index(drop=True), now.sort_values(key)
        now = now.reset_index(drop=True)
        same = base[key].equals(now[key]) and np.allclose(base["weight"], now["weight"])
        rows.append(("interests (Ward per user)", base_s, now_s, f"same interests: {same}"))
    finally:
        spark.stop()
        shutil.rmtree(root, ignore_errors=True)

    print(
        f"# fit overheads: {args.users} users x {args.events_per_user} events, profiles in "
        f"{args.partitions} partitions; {os.cpu_count()} cores, {platform.machine()}, "
        f"python {sys.version.split()[0]}"
    )
    print(f"# command: {' '.join([os.path.basename(sys.executable), *sys.argv])}")
    print(f"{'step':<26} {'baseline s':>10} {'now s':>8} {'ratio':>6}  quality")
    for step, base_s, now_s, quality in rows:
        print(f"{step:<26} {base_s:10.1f} {now_s:8.1f} {base_s / now_s:6.2f}  {quality}")
    print(
        "# baseline: cluster.max_iter 20 and the fit on every partition; applyInPandas a "
        "group per user"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
