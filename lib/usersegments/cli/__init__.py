"""The ``usersegments`` command line (also ``python -m usersegments``).

- ``parser``: the argument parser; stage subcommands and their options come from
  the stage registry (``usersegments.stages``), so ``--help`` lists what exists.
- ``commands``: what each command does (run, update, demo, a single stage, ...).

Every command takes ``--config FILE`` (merged over the defaults of
``conf/default.yaml``), repeated ``--set dotted.key=value`` and ``--output DIR``
(the store root). Exit code 0 on success; otherwise one line on stderr saying
what is wrong and how to fix it (2 for a config or input problem, 1 otherwise).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from usersegments.cli.commands import HANDLERS
from usersegments.cli.parser import build_parser
from usersegments.config import config_reference, defaults_yaml, load_config
from usersegments.errors import UserSegmentsError
from usersegments.schema import tables_reference

__all__ = ["build_parser", "job_main", "main"]

_QUIET_LOGGERS = ("py4j", "urllib3", "filelock")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in _QUIET_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        printed = _print_without_config(args)
        if printed is not None:
            sys.stdout.write(printed)
            return 0
        overrides = list(args.overrides)
        if getattr(args, "format", None):
            overrides.append(f"input.format={args.format}")
        if getattr(args, "trigger", None):
            overrides.append(f"stream.trigger={args.trigger}")
        cfg = load_config(args.config, overrides, args.output)
        return HANDLERS[args.command](cfg, args)
    except UserSegmentsError as exc:
        print(f"usersegments {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"usersegments {args.command}: interrupted", file=sys.stderr)
        return 130


def _print_without_config(args) -> str | None:
    """The text of the commands that need neither a config nor Spark, else None."""
    if args.command == "config" and args.defaults:
        return defaults_yaml()
    if args.command == "config" and args.reference:
        return config_reference()
    if args.command == "tables" and args.contracts:
        return tables_reference()
    return None


def job_main(command: str, argv: Sequence[str] | None = None) -> int:
    """Entry of the ``jobs/*.py`` spark-submit scripts: ``usersegments <command>`` with
    the script's arguments (default ``sys.argv[1:]``)."""
    return main([command, *(sys.argv[1:] if argv is None else argv)])
