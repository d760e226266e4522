"""The argument parser of every command, built from the stage registry so that
``--help`` always lists the stages that exist, in pipeline order."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable

from usersegments.stages import RUN, STAGES, UPDATE, subcommand_stages

DEFAULT_USERS = 2000
DEFAULT_SEED = 7
DEFAULT_DAYS = 60
DEFAULT_ROWS_SHOWN = 20
INPUT_FORMATS = ("auto", "parquet", "csv", "jsonl", "delta")
STREAM_TRIGGERS = ("availableNow", "processingTime")


def _add_events(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--events",
        nargs="+",
        metavar="PATH",
        default=[],
        help="event files, folders or globs (parquet, csv, jsonl, delta)",
    )
    parser.add_argument(
        "--format", choices=INPUT_FORMATS, help="input format (overrides input.format)"
    )


def _add_items(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--items", metavar="PATH", help="item catalog (item_id, text, category)")


def _add_truth(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--truth", metavar="PATH", help="planted truth to score ARI/NMI against")


def _add_recluster(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--recluster",
        dest="recluster_now",
        action="store_true",
        help="re-cluster whatever the drift",
    )


def _add_holdout_last(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--holdout-last",
        dest="holdout_last",
        type=int,
        default=None,
        metavar="N",
        help="hold out each user's last N events (default: evaluate.holdout_last; for tune "
        "and finetune, tune.holdout_last and finetune.holdout_last)",
    )


def _add_promote(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--promote",
        action="store_true",
        help="make the tuned encoder finetuned:latest whatever its scores (default: only "
        "with finetune.promote=auto and a better score)",
    )


# One command-line option per stage input (``Stage.inputs``); the option's ``dest``
# is the input's name, so a command passes ``getattr(args, input)`` to the stage.
INPUT_OPTIONS: dict[str, Callable[[argparse.ArgumentParser], None]] = {
    "events": _add_events,
    "items": _add_items,
    "truth": _add_truth,
    "recluster_now": _add_recluster,
    "holdout_last": _add_holdout_last,
    "promote": _add_promote,
}


def inputs_of(command: str) -> tuple[str, ...]:
    """The inputs of every stage ``command`` runs, each once, in pipeline order."""
    seen: dict[str, None] = {}
    for stage in STAGES:
        if command in stage.commands:
            seen.update(dict.fromkeys(stage.inputs))
    return tuple(seen)


def _add_inputs(parser: argparse.ArgumentParser, inputs: Iterable[str]) -> None:
    for name in inputs:
        INPUT_OPTIONS[name](parser)


def _common_options() -> argparse.ArgumentParser:
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
    return common


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command (kept in one place so --help stays true)."""
    common = _common_options()
    parser = argparse.ArgumentParser(
        prog="usersegments",
        description="Dynamic interest segments from user behaviour logs, as Delta tables.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    gen = sub.add_parser("generate", parents=[common], help="write synthetic events with truth")
    _add_generator_options(gen)
    for stage in subcommand_stages():
        _add_inputs(sub.add_parser(stage.name, parents=[common], help=stage.help), stage.options())
    _add_run_and_update(sub, common)
    _add_stream(sub, common)
    demo = sub.add_parser("demo", parents=[common], help="generate + run on a small dataset")
    _add_generator_options(demo, days=False)
    demo.add_argument("--dynamic", action="store_true", help="also run an update window")
    _add_config(sub, common)
    _add_tables(sub, common)
    return parser


def _add_generator_options(parser: argparse.ArgumentParser, days: bool = True) -> None:
    parser.add_argument("--users", type=int, default=DEFAULT_USERS, help="number of users")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed")
    if days:
        parser.add_argument("--days", type=int, default=DEFAULT_DAYS, help="days of activity")
        parser.add_argument(
            "--item-popularity",
            type=float,
            default=0.0,
            metavar="S",
            help="Zipf exponent of item popularity within a sub-style (0: uniform)",
        )
        parser.add_argument(
            "--focused-secondary",
            action="store_true",
            help="a secondary interest is one sub-style of its area, as the primary is",
        )


def _add_run_and_update(sub, common: argparse.ArgumentParser) -> None:
    run = sub.add_parser("run", parents=[common], help=_flow(RUN))
    _add_inputs(run, inputs_of(RUN))
    run.add_argument(
        "--resume",
        metavar="RUN_ID",
        help="go on with a failed (or killed) run from the stage it stopped in, reusing the "
        "tables of the stages it completed (same settings, spark.* aside; --events only if it "
        "stopped in ingest)",
    )
    upd = sub.add_parser(
        "update", parents=[common], help="fold new events into the segments: " + _flow(UPDATE)
    )
    _add_inputs(upd, inputs_of(UPDATE))


def _add_stream(sub, common: argparse.ArgumentParser) -> None:
    stream = sub.add_parser(
        "stream",
        parents=[common],
        help="continuous updates (Spark Structured Streaming): every micro-batch of new "
        "events from --source runs " + _flow(UPDATE) + ", exactly once",
    )
    stream.add_argument(
        "--source",
        required=True,
        metavar="PATH",
        help="landing folder of event files (stream.format), or a Delta table of events "
        "with --set stream.source=delta",
    )
    _add_items(stream)
    stream.add_argument(
        "--trigger",
        choices=STREAM_TRIGGERS,
        help="availableNow: process what has landed, then stop; processingTime: keep running "
        "every stream.interval (overrides stream.trigger)",
    )


def _add_config(sub, common: argparse.ArgumentParser) -> None:
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


def _add_tables(sub, common: argparse.ArgumentParser) -> None:
    tab = sub.add_parser("tables", parents=[common], help="list the tables under the store root")
    tab.add_argument(
        "--contracts",
        action="store_true",
        help="print every table's columns and types as Markdown instead (no Spark needed)",
    )
    tab.add_argument(
        "--table", metavar="NAME", help="print the rows of table NAME instead of the list"
    )
    tab.add_argument(
        "--as-of-version",
        dest="as_of_version",
        type=int,
        metavar="N",
        help="with --table: read the table as it was at its Delta version N (time travel, "
        "as far back as store.vacuum_retention_hours keeps files)",
    )
    tab.add_argument(
        "--rows",
        type=int,
        default=DEFAULT_ROWS_SHOWN,
        metavar="N",
        help=f"with --table: how many rows to print (default {DEFAULT_ROWS_SHOWN})",
    )


def _flow(command: str) -> str:
    names = [
        f"({stage.name} after a re-cluster)"
        if stage.after_recluster and command == UPDATE
        else stage.name
        for stage in STAGES
        if command in stage.commands
    ]
    return " -> ".join(names)
