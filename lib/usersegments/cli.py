"""The ``usersegments`` command line (also ``python -m usersegments``).

Every command takes ``--config FILE`` (merged over the defaults of
``conf/default.yaml``), repeated ``--set dotted.key=value`` and ``--output DIR``
(the store root). Exit code 0 on success; otherwise one line on stderr saying
what is wrong and how to fix it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from usersegments.config import Config, config_reference, defaults_yaml, load_config
from usersegments.errors import UserSegmentsError
from usersegments.schema import tables_reference

log = logging.getLogger("usersegments")

STAGE_HELP = {
    "ingest": "raw event files -> events, events_rejected",
    "embed": "distinct texts of events -> text_embeddings (cached by hash)",
    "profile": "events x text_embeddings -> user_profiles",
    "cluster": "user_profiles -> user_segments, segments",
    "label": "segments -> keywords, representative items, labels",
    "recommend": "segments -> segment_recommendations",
    "report": "tables -> <output>/report/index.html",
    "maintain": "every table -> compacted, checkpointed, old files vacuumed",
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command (kept in one place so --help stays true)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE", help="YAML config merged over the defaults")
    common.add_argument(
        "--set",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        dest="overrides",
        help="override one setting, e.g. --set cluster.k=12 (repeatable)",
    )
    common.add_argument("--output", metavar="DIR", help="store root (overrides store.root)")
    common.add_argument("-v", "--verbose", action="store_true", help="debug logging")

    parser = argparse.ArgumentParser(
        prog="usersegments",
        description="Dynamic interest segments from user behaviour logs, as Delta tables.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gen = sub.add_parser("generate", parents=[common], help="write synthetic events with truth")
    gen.add_argument("--users", type=int, default=2000, help="number of users (default 2000)")
    gen.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    gen.add_argument("--days", type=int, default=60, help="days of activity (default 60)")

    ing = sub.add_parser("ingest", parents=[common], help=STAGE_HELP["ingest"])
    _add_input_args(ing)

    for name in ("embed", "profile", "label", "recommend", "report", "maintain"):
        sub.add_parser(name, parents=[common], help=STAGE_HELP[name])
    clu = sub.add_parser("cluster", parents=[common], help=STAGE_HELP["cluster"])
    clu.add_argument("--truth", metavar="PATH", help="planted truth to score ARI/NMI against")

    run = sub.add_parser("run", parents=[common], help="ingest -> embed -> ... -> maintain")
    _add_input_args(run)
    run.add_argument("--truth", metavar="PATH", help="planted truth to score ARI/NMI against")

    upd = sub.add_parser("update", parents=[common], help="fold new events into the segments")
    _add_input_args(upd)
    upd.add_argument("--recluster", action="store_true", help="re-cluster whatever the drift")

    ev = sub.add_parser("evaluate", parents=[common], help="offline quality figures")
    ev.add_argument(
        "--holdout-last",
        type=int,
        default=None,
        metavar="N",
        help="hold out each user's last N events (default: evaluate.holdout_last, 2)",
    )
    ev.add_argument("--truth", metavar="PATH", help="planted truth to score ARI/NMI against")

    demo = sub.add_parser("demo", parents=[common], help="generate + run on a small dataset")
    demo.add_argument("--users", type=int, default=2000, help="number of users (default 2000)")
    demo.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    demo.add_argument("--dynamic", action="store_true", help="also run an update window")

    cfg = sub.add_parser("config", parents=[common], help="print the effective config as YAML")
    cfg.add_argument(
        "--defaults", action="store_true", help="print the defaults (the text of conf/default.yaml)"
    )
    cfg.add_argument(
        "--reference",
        action="store_true",
        help="print every setting with its default and meaning as Markdown (the README's "
        "configuration reference)",
    )

    tab = sub.add_parser("tables", parents=[common], help="list the tables under the store root")
    tab.add_argument(
        "--contracts",
        action="store_true",
        help="print every table's columns and types as Markdown instead (no Spark needed)",
    )
    return parser


def _add_input_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--events",
        nargs="+",
        metavar="PATH",
        default=[],
        help="event files, folders or globs (parquet, csv, jsonl, delta)",
    )
    parser.add_argument("--items", metavar="PATH", help="item catalog (item_id, text, category)")
    parser.add_argument(
        "--format",
        choices=["auto", "parquet", "csv", "jsonl", "delta"],
        help="input format (overrides input.format)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("py4j", "urllib3", "matplotlib", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        if args.command == "config" and args.defaults:
            sys.stdout.write(defaults_yaml())
            return 0
        if args.command == "config" and args.reference:
            sys.stdout.write(config_reference())
            return 0
        if args.command == "tables" and args.contracts:
            sys.stdout.write(tables_reference())
            return 0
        overrides = list(args.overrides)
        if getattr(args, "format", None):
            overrides.append(f"input.format={args.format}")
        cfg = load_config(args.config, overrides, args.output)
        handler = _HANDLERS[args.command]
        return handler(cfg, args)
    except UserSegmentsError as exc:
        print(f"usersegments {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"usersegments {args.command}: interrupted", file=sys.stderr)
        return 130


def job_main(command: str, argv: Sequence[str] | None = None) -> int:
    """Entry of the ``jobs/*.py`` spark-submit scripts: ``usersegments <command>`` with
    the script's arguments (default ``sys.argv[1:]``)."""
    return main([command, *(sys.argv[1:] if argv is None else argv)])


def _cmd_config(cfg: Config, args: argparse.Namespace) -> int:
    sys.stdout.write(cfg.to_yaml())
    return 0


def _cmd_tables(cfg: Config, args: argparse.Namespace) -> int:
    from usersegments.console import print_tables
    from usersegments.pipeline import open_context

    ctx = open_context(cfg, "tables", lock=False)  # reads only
    print_tables(ctx.store)
    ctx.run.finish()
    return 0


def _cmd_stage(cfg: Config, args: argparse.Namespace) -> int:
    from usersegments.pipeline import finishing, open_context, run_stage, stage_function

    stage_function(args.command)  # fail before starting Spark if the stage is absent
    options = {}
    if args.command == "ingest":
        options = {"events": args.events, "items": args.items}
    elif args.command == "cluster" and args.truth:
        options = {"truth": args.truth}
    with finishing(open_context(cfg, args.command)) as ctx:
        result = run_stage(ctx, args.command, **options)
    print(f"{args.command}: done in {result.seconds:.1f}s (run {ctx.run.run_id})")
    for table, version in result.tables.items():
        print(f"  {table}: version {version}")
    return 0


def _cmd_pipeline(cfg: Config, args: argparse.Namespace) -> int:
    from usersegments import pipeline

    runner: Callable[[Config, argparse.Namespace], int] = getattr(pipeline, f"cli_{args.command}")
    return runner(cfg, args)


_HANDLERS: dict[str, Callable[[Config, argparse.Namespace], int]] = {
    "config": _cmd_config,
    "tables": _cmd_tables,
    **{name: _cmd_stage for name in STAGE_HELP},
    **{name: _cmd_pipeline for name in ("generate", "run", "update", "evaluate", "demo")},
}
