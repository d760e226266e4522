"""What ``usersegments tune`` costs against one ``usersegments run``, on the same log.

    .venv/bin/python benchmarks/tune_cost.py [--users 5000] [--set tune.trials=8 ...]

Generates ``--users`` users (about 20 events each: 5,000 users ~ 100k events; real
texts, real MiniLM embeddings, local mode, delta-rs) and, in this one process, on
two fresh store roots:

1. ``tune`` from the raw files: ingest, embed, then the trials of the ``tune.*``
   settings (``--set`` overrides them, e.g. ``--set tune.parallel=1``);
2. one ``run`` from the same raw files: ingest to maintain, report included.

``tune`` goes first, so it pays the session's warm-up (JVM, model load) and the
comparison cannot flatter it. Prints seconds per stage of each, every trial's
seconds and score, and the ratio tune / run (the target is at most 3).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time

from usersegments.config import load_config
from usersegments.pipeline import finishing, open_context, run_all, run_stage
from usersegments.stages import RUN, stages_of
from usersegments.testing.synthetic import GeneratorSettings, generate, write

TARGET_RATIO = 3.0


def timed_tune(cfg, paths: dict[str, str]) -> tuple[dict, float, list]:
    """``usersegments tune --events ... --items ...`` as one run; (results, seconds, trials)."""
    t0 = time.perf_counter()
    with finishing(open_context(cfg, "tune")) as ctx:
        results = run_all(
            ctx, [paths["events_parquet"]], paths["items"], stages=("ingest", "embed")
        )
        results["tune"] = run_stage(ctx, "tune")
        trials = (
            ctx.store.read("tuning_trials")
            .filter(f"run_id = '{ctx.run.run_id}'")
            .orderBy("trial_id")
            .collect()
        )
    return results, time.perf_counter() - t0, trials


def timed_run(cfg, paths: dict[str, str]) -> tuple[dict, float]:
    """``usersegments run --events ... --items ...``; (results, seconds)."""
    t0 = time.perf_counter()
    with finishing(open_context(cfg, "run")) as ctx:
        results = run_all(ctx, [paths["events_parquet"]], paths["items"])
    return results, time.perf_counter() - t0


def main() -> None:
    """Time tune and one run on the same generated log; print both and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--config", default="conf/local.yaml")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = tempfile.mkdtemp(prefix="usersegments-tune-cost-")
    try:
        data = generate(GeneratorSettings(users=args.users, seed=args.seed))
        paths = write(data, f"{work}/input")
        quiet = ["spark.ui=off", "spark.log_level=ERROR", *args.overrides]
        tune_cfg = load_config(args.config, quiet, f"{work}/tune-store")
        run_cfg = load_config(args.config, quiet, f"{work}/run-store")
        tuned, tune_seconds, trials = timed_tune(tune_cfg, paths)
        # Printed at once: a run on a busy machine may be cut short before the comparison.
        print(f"tune: {tune_seconds:.1f} s for {len(trials)} trials", flush=True)
        full, run_seconds = timed_run(run_cfg, paths)
        t = tune_cfg.tune
        print()
        print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}")
        print(
            f"log: {len(data.events)} generated events of {args.users} users; "
            f"tune: {len(trials)} trials ({t.search}, seed {t.seed}), {t.parallel} at a time, "
            f"objective {trials[0]['objective'] if trials else '-'}"
        )
        print(f"{'stage':<12}{'run (s)':>10}{'tune (s)':>10}")
        for stage in (*stages_of(RUN)[:2], "tune", *stages_of(RUN)[2:]):
            r, u = full.get(stage), tuned.get(stage)
            print(
                f"{stage:<12}{(f'{r.seconds:.1f}' if r else '-'):>10}"
                f"{(f'{u.seconds:.1f}' if u else '-'):>10}"
            )
        print(f"{'total':<12}{run_seconds:>10.1f}{tune_seconds:>10.1f}")
        print("trials (seconds each; they overlap when tune.parallel > 1):")
        for row in trials:
            mark = "  <- chosen" if row["chosen"] else ""
            score = "failed" if row["score"] is None else f"{row['score']:+.4f}"
            print(f"  trial {row['trial_id']:>2}: {row['seconds']:6.1f} s  score {score}{mark}")
        ratio = tune_seconds / run_seconds
        verdict = "within" if ratio <= TARGET_RATIO else "over"
        print(f"tune / run: {ratio:.2f} ({verdict} the target of {TARGET_RATIO:g})")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
