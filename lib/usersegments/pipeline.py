"""Runs stages in order inside one recorded run.

A run is a ``Context`` (config, session, store, run log, lock). ``run_stage`` runs
one stage of the registry (``usersegments.stages``); ``run_all`` runs a command's
stage list with the run's inputs; ``update_all`` runs the update command, which
adds ``label`` when the update re-clustered; ``resume_stages`` says where a failed run
goes on. The command line, the jobs and the
notebooks all go through here; printing is left to ``usersegments.console``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from py4j.protocol import Py4JError
from pyspark.errors import PySparkException
from pyspark.sql import DataFrame, SparkSession

from usersegments.config import Config
from usersegments.errors import ResourceError
from usersegments.lock import RunLock
from usersegments.runlog import RunLog, StageResult, check_resumable, completed_stages
from usersegments.session import build_session
from usersegments.stages import RUN, UPDATE, get_stage, stage_function, stages_of
from usersegments.store import TableStore

log = logging.getLogger(__name__)


@dataclass
class Context:
    """What every command works with: config, session, store and the run's log."""

    cfg: Config
    spark: SparkSession
    store: TableStore
    run: RunLog
    results: list[StageResult] = field(default_factory=list)
    lock: RunLock | None = None


def open_context(
    cfg: Config, command: str, lock: bool = True, resume: str | None = None
) -> Context:
    """Start (or reuse) the session, open the store, take the root's run lock (unless
    ``lock`` is False: read-only commands) and record a new run (or, with ``resume``,
    mark that earlier run running again: ``resume_stages`` says where it goes on)."""
    spark = build_session(cfg)
    store = TableStore.from_config(spark, cfg)
    run = RunLog(spark, store, cfg, command, run_id=resume)
    held = RunLock(store.root, run.run_id, command, cfg.store).acquire() if lock else None
    try:
        if resume is not None:
            # Under the lock: no other process can be running it any more.
            run.started_at = check_resumable(store, resume, command, cfg)
        run.start(resumed=resume is not None)
    except BaseException:
        if held is not None:
            held.release()
        raise
    log.info("run %s: %s on %s (backend %s)", run.run_id, command, store.root, store.backend)
    return Context(cfg=cfg, spark=spark, store=store, run=run, lock=held)


def run_stage(ctx: Context, name: str, **inputs: Any) -> StageResult:
    """Run one stage inside ``ctx``'s run, timing it and flushing its metrics."""
    fn = stage_function(name)
    with ctx.run.timed(name) as timer:
        try:
            result = fn(ctx.spark, ctx.store, ctx.cfg, ctx.run, **inputs)
        except (PySparkException, Py4JError) as error:
            if OUT_OF_MEMORY in str(error) or spark_stopped(ctx.spark):
                raise out_of_memory(name, ctx.cfg, ctx.run, str(error)) from error
            raise
    result.seconds = timer.seconds
    ctx.results.append(result)
    return result


def run_all(
    ctx: Context,
    events: Sequence[str],
    items: str | None = None,
    truth: str | None = None,
    stages: Sequence[str] | None = None,
    recluster: bool = False,
    holdout_last: int | None = None,
    batch: DataFrame | None = None,
) -> dict[str, StageResult]:
    """Run ``stages`` (default: those of ``run``, ingest to maintain) in order inside
    ``ctx``, one progress line per stage. Each stage gets the inputs it declares in the
    registry. Ingest is skipped when no event paths are given (the run then works on
    the events already stored); ``batch`` (a stream's micro-batch, read already as the
    raw frame of strings) is ingested instead of files."""
    from usersegments.console import say

    given = {
        "events": list(events),
        "items": items,
        "truth": truth,
        "recluster_now": recluster,
        "holdout_last": holdout_last,
    }
    names = tuple(stages) if stages is not None else stages_of(RUN)
    results: dict[str, StageResult] = {}
    for position, name in enumerate(names, start=1):
        step = f"[{position}/{len(names)}] {name}"
        if name == "ingest" and not events and batch is None:
            say(f"{step} skipped: no --events given, using stored events")
            continue
        say(f"{step} ...")
        inputs = {key: given[key] for key in get_stage(name).inputs}
        if name == "ingest" and batch is not None:
            # Not a registry input: no command-line option gives a DataFrame.
            inputs["batch"] = batch
        results[name] = run_stage(ctx, name, **inputs)
        say(f"{step} done in {results[name].seconds:.1f}s")
    return results


def update_all(
    ctx: Context,
    events: Sequence[str],
    items: str | None,
    recluster: bool,
    batch: DataFrame | None = None,
    skip: Sequence[str] = (),
) -> dict[str, StageResult]:
    """One update run: ingest the new events (files, or a stream's micro-batch ``batch``),
    embed new texts, fold and reassign, then refresh labels (only after a re-cluster),
    recommendations and the report, and maintain the tables. ``skip``: stages after
    ``update`` left out (a stream may leave the report to a later batch)."""
    planned = stages_of(UPDATE, reclustered=True)
    through_update = planned[: planned.index("update") + 1]
    results = run_all(ctx, events, items, stages=through_update, recluster=recluster, batch=batch)
    reclustered = bool(results["update"].metrics.get("reclustered"))
    rest = [s for s in stages_of(UPDATE, reclustered) if s not in through_update and s not in skip]
    results.update(run_all(ctx, [], stages=rest))
    return results


OUT_OF_MEMORY = "java.lang.OutOfMemoryError"


def spark_stopped(spark: SparkSession) -> bool:
    """Whether ``spark``'s context has stopped (a task's uncaught ``OutOfMemoryError``
    stops it in local mode; the failing query then only says the context shut down)."""
    try:
        return bool(spark.sparkContext._jsc.sc().isStopped())
    except Exception:  # the JVM itself is gone
        return True


def out_of_memory(stage: str, cfg: Config, run: RunLog, failure: str = "") -> ResourceError:
    """The error for a stage whose Spark tasks ran out of Java heap (``failure`` names
    it) or whose Spark stopped under it: the settings that size the heap and the tasks,
    and how the run goes on (``run --resume`` for a run, the command again otherwise)."""
    if OUT_OF_MEMORY in failure:
        what = f"ran out of Java heap ({OUT_OF_MEMORY})"
    else:
        what = (
            "stopped Spark (an uncaught error in its JVM, most often "
            f"{OUT_OF_MEMORY}: Spark's log above names it)"
        )
    if cfg.spark.mode == "local":
        heap = (
            f"spark.driver_memory={cfg.spark.driver_memory} (local mode: the driver is the "
            f"only executor), e.g. --set spark.driver_memory=8g"
        )
    else:
        heap = "spark.executor.memory (and spark.driver.memory) of the cluster's Spark settings"
    if run.command == RUN:
        then = (
            f"Then go on with `usersegments run --resume {run.run_id}` (the stages that "
            "completed are kept)."
        )
    else:
        then = f"Then run `usersegments {run.command}` again."
    return ResourceError(
        f"stage {stage!r} {what}. Give Spark more memory: "
        f"{heap}; or smaller tasks: a larger spark.shuffle_partitions (now "
        f"{cfg.spark.shuffle_partitions}). {then}"
    )


@contextmanager
def finishing(ctx: Context) -> Iterator[Context]:
    """Mark ctx's run succeeded when the block ends, or failed on any exception, and
    release its lock either way. When the failure took Spark down with it (a JVM out of
    memory stops the context), the run stays ``running`` in ``runs``, which a later run
    reads as killed (``--resume`` goes on from it), and the first error is the one raised.
    """
    try:
        try:
            yield ctx
        except BaseException:
            try:
                ctx.run.finish("failed")
            except Exception as error:  # recording the failure must not hide it
                log.warning(
                    "run %s: could not record it as failed: %s",
                    ctx.run.run_id,
                    str(error).splitlines()[0],
                )
            raise
        ctx.run.finish()
    finally:
        if ctx.lock is not None:
            ctx.lock.release()


@contextmanager
def pipeline_run(cfg: Config, command: str, resume: str | None = None) -> Iterator[Context]:
    """One recorded run for the block (notebooks use this):
    ``with pipeline_run(cfg, "notebook") as ctx: run_all(ctx, ...)``; ``resume``: the id
    of an earlier run to go on with (see ``resume_stages``)."""
    with finishing(open_context(cfg, command, resume=resume)) as ctx:
        yield ctx


def resume_stages(ctx: Context, command: str = RUN) -> tuple[str, ...]:
    """The stages of ``command`` that ``ctx``'s resumed run (opened with ``resume``, which
    checked it may be resumed) has still to run: from its first stage that did not
    complete on (``runlog.completed_stages``), so the tables of the completed ones are
    reused as they are."""
    done = completed_stages(ctx.store, ctx.run.run_id)
    planned = stages_of(command)
    first = next((i for i, name in enumerate(planned) if name not in done), len(planned))
    return planned[first:]
