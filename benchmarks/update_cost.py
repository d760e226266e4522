"""What an incremental update costs against a full run.

    .venv/bin/python benchmarks/update_cost.py [--users 5000 [47000 ...]] [--share 0.01]
        [--days 7] [--whole-table]

For each size in ``--users``, generates that many users (real texts, real MiniLM
embeddings, local mode, delta-rs). The events of ``--share`` of the users in the last
``--days`` days are held back as the update batch; everything else goes through a full
``usersegments run`` (ingest, embed, profile, cluster, interests, label, recommend:
the registry's stages of ``run``), then the batch through ``usersegments update``
(ingest, embed, update: fold, reassign, history, interests of users with new events;
recommend). The report and maintenance stages are left out of both. Prints seconds per
stage of each, the ratio update / full, and how the update read the events: only
the rows committed since the profiles' events version (the change data feed, the
default) or, with ``--whole-table`` (``update.read_changes=false``), every event.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from datetime import timedelta

import numpy as np
import pandas as pd

from usersegments.config import load_config
from usersegments.pipeline import pipeline_run, run_all
from usersegments.stages import RUN, UPDATE, stages_of
from usersegments.testing.synthetic import (
    GeneratedData,
    GeneratorSettings,
    generate,
    generated_times,
    write,
)

# Both sides leave out the report and the store's maintenance (they are not the work
# an update saves); every other stage comes from the registry, interests included.
NOT_TIMED = ("report", "maintain")
FULL_STAGES = tuple(s for s in stages_of(RUN) if s not in NOT_TIMED)
UPDATE_STAGES = tuple(s for s in stages_of(UPDATE) if s not in NOT_TIMED)


def split_batch(data: GeneratedData, share: float, days: int, seed: int) -> tuple:
    """(history, batch): the batch is ``share`` of users' events of the last ``days`` days."""
    rng = np.random.default_rng(seed)
    users = data.events["user_id"].dropna().unique()
    picked = set(rng.choice(users, size=max(1, int(len(users) * share)), replace=False))
    times = generated_times(data.events)
    recent = (times >= pd.Timestamp(data.settings.end - timedelta(days=days))).fillna(False)
    in_batch = (data.events["user_id"].isin(picked) & recent).to_numpy()
    parts = []
    for mask in (~in_batch, in_batch):
        events = data.events[mask].reset_index(drop=True)
        parts.append(GeneratedData(events, data.items, data.truth, data.settings, data.manifest))
    return parts[0], parts[1], len(picked)


def timed_run(cfg, command: str, paths: dict[str, str], stages: tuple[str, ...]):
    """Run ``stages`` over the files in ``paths`` as one run; (results, seconds)."""
    with pipeline_run(cfg, command) as ctx:  # finishes the run and releases the lock
        t0 = time.perf_counter()
        results = run_all(ctx, [paths["events_parquet"]], paths["items"], stages=stages)
        seconds = time.perf_counter() - t0
    return results, seconds


def measure(users: int, args: argparse.Namespace) -> dict[str, float]:
    """A full run of ``users`` generated users, then the update of ``args.share`` of
    them; prints the per-stage table and returns the summary figures."""
    work = tempfile.mkdtemp(prefix="usersegments-update-cost-")
    try:
        data = generate(GeneratorSettings(users=users, seed=args.seed))
        history, batch, n_users = split_batch(data, args.share, args.days, args.seed)
        history_paths = write(history, f"{work}/history")
        batch_paths = write(batch, f"{work}/batch")
        cfg = load_config(
            "conf/local.yaml",
            [
                "spark.ui=off",
                "spark.log_level=ERROR",
                "update.recluster_threshold=1.0",
                f"update.read_changes={str(not args.whole_table).lower()}",
            ],
            f"{work}/store",
        )
        full, full_seconds = timed_run(cfg, "run", history_paths, FULL_STAGES)
        update, update_seconds = timed_run(cfg, "update", batch_paths, UPDATE_STAGES)
        m = update["update"].metrics
        print()
        print(
            f"full run: {len(history.events)} events of {users} users; update: "
            f"{len(batch.events)} events of {n_users} users ({args.share:.1%}), "
            f"{int(m['users_reassigned'])} reassigned, {int(m['users_moved'])} moved"
        )
        print(f"{'stage':<12}{'full (s)':>10}{'update (s)':>12}")
        shown = [*FULL_STAGES, *(s for s in UPDATE_STAGES if s not in FULL_STAGES)]
        for stage in shown:
            f = full.get(stage)
            u = update.get(stage)
            print(
                f"{stage:<12}{(f'{f.seconds:.1f}' if f else '-'):>10}"
                f"{(f'{u.seconds:.1f}' if u else '-'):>12}"
            )
        print(f"{'total':<12}{full_seconds:>10.1f}{update_seconds:>12.1f}")
        print(f"update / full: {update_seconds / full_seconds:.3f}")
        how = "change data feed" if m["events_read_via_changes"] else "whole table"
        print(
            f"update read {int(m['events_rows_read'])} event rows ({how}), "
            f"folded {int(m['events_folded'])}",
            flush=True,
        )
        return {
            "events": len(history.events),
            "users": users,
            "batch": len(batch.events),
            "full": full_seconds,
            "update": update_seconds,
            "rows_read": m["events_rows_read"],
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    """Time a full run and an update of a small share of users at each size; print
    both and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--users",
        type=int,
        nargs="+",
        default=[5000],
        help="sizes (about 21 events a user: 4,700 / 47,000 / 141,000 users make about "
        "100k / 1M / 3M events)",
    )
    parser.add_argument("--share", type=float, default=0.01)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument(
        "--whole-table",
        action="store_true",
        help="update.read_changes=false: the update reads every event (the old path)",
    )
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}")
    rows = [measure(users, args) for users in args.users]
    print()
    print(
        "| events (full run) | users | update events | full run (s) | update (s) | update / full "
        "| event rows the update read |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['events']:,} | {r['users']:,} | {r['batch']:,} | {r['full']:.1f} "
            f"| {r['update']:.1f} | {r['update'] / r['full']:.3f} | {int(r['rows_read']):,} |"
        )


if __name__ == "__main__":
    main()
