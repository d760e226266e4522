"""Runs stages in order: one stage, the full ``run``, ``update`` and ``demo``.

The pipeline knows stage names and their order; each stage module owns its
logic (``run_<stage>(spark, store, cfg, run, **options) -> StageResult``).
A stage this version does not provide raises ``StageNotAvailable``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pyspark.sql import SparkSession

from usersegments.config import Config
from usersegments.errors import StageNotAvailable
from usersegments.runlog import RunLog, StageResult
from usersegments.session import build_session
from usersegments.store import TableStore

log = logging.getLogger(__name__)

StageFn = Callable[..., StageResult]

# The full run, in order (ARCHITECTURE.md, data flow).
RUN_ORDER = ("ingest", "embed", "profile", "cluster", "label", "recommend", "report")


def stage_function(name: str) -> StageFn:
    """The ``run_<name>`` function of a stage, imported on first use."""
    registry: dict[str, tuple[str, str]] = {
        # name: (module, function); filled in as stages land.
    }
    if name not in registry:
        raise StageNotAvailable(
            f"the '{name}' stage is not available in this version of usersegments; "
            f"available: {', '.join(sorted(registry)) or 'none yet'}"
        )
    module_name, fn_name = registry[name]
    module = __import__(f"usersegments.{module_name}", fromlist=[fn_name])
    return getattr(module, fn_name)


@dataclass
class Context:
    """What every command works with: config, session, store and the run's log."""

    cfg: Config
    spark: SparkSession
    store: TableStore
    run: RunLog
    results: list[StageResult] = field(default_factory=list)


def open_context(cfg: Config, command: str) -> Context:
    """Start (or reuse) the session, open the store and record a new run."""
    spark = build_session(cfg)
    store = TableStore.from_config(spark, cfg)
    run = RunLog(spark, store, cfg, command)
    run.start()
    log.info("run %s: %s on %s (backend %s)", run.run_id, command, store.root, store.backend)
    return Context(cfg=cfg, spark=spark, store=store, run=run)


def run_stage(ctx: Context, name: str, **options: Any) -> StageResult:
    """Run one stage inside ``ctx``'s run, timing it and flushing its metrics."""
    fn = stage_function(name)
    with ctx.run.timed(name) as timer:
        result = fn(ctx.spark, ctx.store, ctx.cfg, ctx.run, **options)
    result.seconds = timer.seconds
    ctx.results.append(result)
    return result


def run_stages(ctx: Context, names: tuple[str, ...], options: dict[str, dict[str, Any]]) -> None:
    """Run ``names`` in order, passing each its own options."""
    for name in names:
        run_stage(ctx, name, **options.get(name, {}))


def store_check(ctx: Context) -> StageResult:
    """Prove the store round-trips: read back the run's own record and its Delta log."""
    runs = ctx.store.read("runs")
    mine = runs.filter(runs.run_id == ctx.run.run_id).count()
    if mine != 1:
        raise RuntimeError(f"runs table holds {mine} rows for run {ctx.run.run_id}, expected 1")
    return StageResult(
        stage="store_check",
        tables={"runs": ctx.store.version("runs")},
        metrics={"runs_rows": float(runs.count())},
    )


def cli_generate(cfg: Config, args: Any) -> int:
    """``usersegments generate``."""
    raise StageNotAvailable("'generate' is not available in this version of usersegments")


def cli_run(cfg: Config, args: Any) -> int:
    """``usersegments run``: the stages of RUN_ORDER in one run."""
    for name in RUN_ORDER:
        stage_function(name)
    raise AssertionError("unreachable until every stage is available")


def cli_update(cfg: Config, args: Any) -> int:
    """``usersegments update``."""
    raise StageNotAvailable("'update' is not available in this version of usersegments")


def cli_evaluate(cfg: Config, args: Any) -> int:
    """``usersegments evaluate``."""
    raise StageNotAvailable("'evaluate' is not available in this version of usersegments")


def cli_demo(cfg: Config, args: Any) -> int:
    """``usersegments demo``: whatever stages exist, on a small generated dataset."""
    from usersegments.console import print_tables, say

    ctx = open_context(cfg, "demo")
    try:
        result = store_check(ctx)
        ctx.run.record_all("store_check", result.metrics)
    except BaseException:
        ctx.run.finish("failed")
        raise
    ctx.run.finish()
    say(f"demo run {ctx.run.run_id}: Spark {ctx.spark.version}, store backend {ctx.store.backend}")
    print_tables(ctx.store)
    say(f"tables written under {ctx.store.root}")
    return 0
