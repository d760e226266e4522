"""What each command does once its config is loaded: ``handler(cfg, args) -> exit code``.

Stage subcommands run one registry stage; ``run``, ``update`` and ``demo`` run a
stage list through ``usersegments.pipeline``; what they print is formatted by
``usersegments.console``. Imports of Spark-heavy modules stay inside the handlers
so ``--help`` and ``config`` start fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from usersegments.config import Config
from usersegments.runlog import StageResult
from usersegments.stages import DEMO, get_stage, stages_of, subcommand_stages

if TYPE_CHECKING:
    from usersegments.pipeline import Context

Handler = Callable[[Config, argparse.Namespace], int]


def cmd_config(cfg: Config, args: argparse.Namespace) -> int:
    """``usersegments config``: the effective config as YAML."""
    sys.stdout.write(cfg.to_yaml())
    return 0


def cmd_tables(cfg: Config, args: argparse.Namespace) -> int:
    """``usersegments tables``: every table under the store root, read only; with
    ``--table NAME`` that table's first ``--rows`` rows, at ``--as-of-version N`` (a
    Delta version of that table) or the latest."""
    from usersegments.console import print_table_rows, print_tables
    from usersegments.pipeline import finishing, open_context

    check_tables_options(args)
    with finishing(open_context(cfg, "tables", lock=False)) as ctx:
        if args.table:
            print_table_rows(ctx.store, args.table, args.as_of_version, args.rows)
        else:
            print_tables(ctx.store)
    return 0


def check_tables_options(args: argparse.Namespace) -> None:
    """Refuse ``tables`` options that do not go together, naming the fix (before Spark
    starts)."""
    from usersegments.errors import InputError

    if args.as_of_version is not None and not args.table:
        raise InputError(
            f"--as-of-version {args.as_of_version} reads one table (each table has its own "
            "versions): add --table NAME; `usersegments tables` lists every table's latest "
            "version"
        )
    if args.as_of_version is not None and args.as_of_version < 0:
        raise InputError(f"--as-of-version must be 0 or more, not {args.as_of_version}")
    if args.rows < 0:
        raise InputError(f"--rows must be 0 or more, not {args.rows}")


def cmd_generate(cfg: Config, args: argparse.Namespace) -> int:
    """``usersegments generate``: synthetic events, items and truth under the output root."""
    from usersegments.console import say
    from usersegments.errors import InputError
    from usersegments.testing.synthetic import GeneratorSettings, generate, write

    try:
        settings = GeneratorSettings(
            users=args.users,
            seed=args.seed,
            days=args.days,
            item_popularity=args.item_popularity,
            focused_secondary=args.focused_secondary,
        )
    except ValueError as exc:  # the generator's own check names the setting
        raise InputError(f"usersegments generate: {exc} (see --help)") from None
    data = generate(settings)
    paths = write(data, cfg.store.root)
    say(
        f"generated {len(data.events)} events of {settings.users} users over {settings.days} "
        f"days ({len(data.items)} items, {data.manifest['drifted_users']} drifted users)"
    )
    for name, path in paths.items():
        say(f"  {name}: {path}")
    return 0


def cmd_stage(cfg: Config, args: argparse.Namespace) -> int:
    """``usersegments <stage>``: one stage of the registry in a run of its own."""
    from usersegments.pipeline import finishing, open_context, run_all, run_stage

    stage = get_stage(args.command)
    inputs = {name: getattr(args, name) for name in stage.inputs}
    with finishing(open_context(cfg, stage.name)) as ctx:
        if stage.before:
            # Only ingest and embed come before a stage: events and items are theirs.
            run_all(ctx, args.events, args.items, stages=stage.before)
        result = run_stage(ctx, stage.name, **inputs)
        _STAGE_SUMMARIES.get(stage.name, _print_stage_done)(ctx, result)
    return 0


def _print_stage_done(ctx: Context, result: StageResult) -> None:
    from usersegments.console import say

    say(f"{result.stage}: done in {result.seconds:.1f}s (run {ctx.run.run_id})")
    for table, version in result.tables.items():
        say(f"  {table}: version {version}")


def _print_evaluate(ctx: Context, result: StageResult) -> None:
    from usersegments.console import print_evaluation

    print_evaluation(result, ctx.cfg.evaluate.k)


def _print_tune(ctx: Context, result: StageResult) -> None:
    from usersegments.console import print_tuning

    print_tuning(ctx, result)


# Stages whose own command prints more than "done" and the versions written.
def _print_finetune(ctx: Context, result: StageResult) -> None:
    from usersegments.console import print_finetune

    print_finetune(result)


_STAGE_SUMMARIES = {"evaluate": _print_evaluate, "tune": _print_tune, "finetune": _print_finetune}


def cmd_run(cfg: Config, args: argparse.Namespace) -> int:
    """``usersegments run``: every stage of ``run``, ingest to maintain, in one run."""
    from usersegments.console import print_run_summary, say
    from usersegments.pipeline import pipeline_run, resume_stages, run_all

    with pipeline_run(cfg, "run", resume=args.resume) as ctx:
        stages = None
        if args.resume:
            stages = resume_stages(ctx)
            check_resume_inputs(args, stages)
            say(f"resuming run {args.resume} at {stages[0] if stages else 'its end'}")
        results = run_all(ctx, args.events, args.items, args.truth, stages=stages)
        print_run_summary(ctx, results)
        if results.get("report") is not None and results["report"].path:
            say(f"report: {results['report'].path}")
    return 0


def check_resume_inputs(args: argparse.Namespace, stages: tuple[str, ...]) -> None:
    """A run resumed in ingest needs its event files again: refuse it without them."""
    from usersegments.errors import InputError

    if "ingest" in stages and not args.events:
        raise InputError(
            f"run {args.resume} stopped in ingest: pass the same --events (and --items) again "
            "to resume it"
        )


def cmd_update(cfg: Config, args: argparse.Namespace) -> int:
    """``usersegments update``: fold new events into the existing segments."""
    from usersegments.console import print_churn, print_run_summary, say
    from usersegments.pipeline import pipeline_run, update_all

    with pipeline_run(cfg, "update") as ctx:
        results = update_all(ctx, args.events, args.items, args.recluster_now)
        print_run_summary(ctx, results)
        print_churn(results["update"])
        say(f"report: {results['report'].path}")
    return 0


def cmd_stream(cfg: Config, args: argparse.Namespace) -> int:
    """``usersegments stream``: micro-batches of new events from ``--source`` through the
    update's stages until the trigger ends the query or SIGTERM stops it."""
    from usersegments.console import say
    from usersegments.stream import run_stream

    summary = run_stream(cfg, args.source, args.items)
    ended = "stopped by SIGTERM" if summary.stopped_by_signal else "caught up"
    say(
        f"stream {ended}: {len(summary.batches)} batches, {summary.rows} rows "
        f"(checkpoint {summary.checkpoint})"
    )
    return 0


def cmd_demo(cfg: Config, args: argparse.Namespace) -> int:
    """``usersegments demo``: generate a small dataset, run every stage, evaluate, report."""
    from usersegments.console import print_evaluation, print_run_summary, print_tables, say
    from usersegments.pipeline import pipeline_run, run_all
    from usersegments.testing.synthetic import GeneratorSettings, generate, write

    data = generate(GeneratorSettings(users=args.users, seed=args.seed))
    input_dir = Path(cfg.store.root) / "input"
    paths = write(data, input_dir)
    say(f"generated {len(data.events)} events of {args.users} users into {input_dir}")
    if args.dynamic:
        return _demo_dynamic(cfg, data, input_dir, paths["truth"])
    with pipeline_run(cfg, "demo") as ctx:
        results = run_all(
            ctx, [paths["events_csv"]], paths["items"], paths["truth"], stages=stages_of(DEMO)
        )
        print_run_summary(ctx, results)
        print_evaluation(results["evaluate"], cfg.evaluate.k)
        print_tables(ctx.store)
        say(f"demo run {ctx.run.run_id}: tables under {ctx.store.root} ({ctx.store.backend})")
        say(f"report: {results['report'].path}")
    return 0


def _demo_dynamic(cfg: Config, data, input_dir: Path, truth: str) -> int:
    """Two windows split at the planted drift date: a full run on the first, an update
    with the second; prints where the drifted users went."""
    from usersegments.console import print_churn, print_drift_recovery, print_run_summary, say
    from usersegments.evaluate import drift_recovery
    from usersegments.pipeline import pipeline_run, run_all, update_all
    from usersegments.testing.synthetic import split_at, write

    cut = datetime.fromisoformat(str(data.manifest["drift_date"]))
    first, second = split_at(data, cut)
    first_paths = write(first, input_dir / "window1")
    second_paths = write(second, input_dir / "window2")
    say(f"window 1: {len(first.events)} events before {cut:%Y-%m-%d}")
    say(f"window 2: {len(second.events)} events from then on")
    with pipeline_run(cfg, "demo") as ctx:
        results = run_all(ctx, [first_paths["events_csv"]], first_paths["items"], truth)
        print_run_summary(ctx, results)
    say("window 2: update ...")
    with pipeline_run(cfg, "update") as ctx:
        events = [second_paths["events_csv"]]
        results = update_all(ctx, events, second_paths["items"], recluster=False)
        print_churn(results["update"])
        recovery = drift_recovery(ctx.store, truth, cut, cfg.privacy)
        print_drift_recovery(recovery)
        ctx.run.record_all("demo", recovery)
        say(f"report: {results['report'].path}")
    return 0


HANDLERS: dict[str, Handler] = {
    "config": cmd_config,
    "tables": cmd_tables,
    "generate": cmd_generate,
    **{stage.name: cmd_stage for stage in subcommand_stages()},
    "run": cmd_run,
    "update": cmd_update,
    "stream": cmd_stream,
    "demo": cmd_demo,
}
