"""The streaming query: source -> ``foreachBatch`` (``batch.MicroBatches``), its checkpoint
under the store root, its trigger, and a stop on SIGTERM that lets the running batch
finish."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from pyspark.errors import StreamingQueryException
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQuery

from usersegments.config import Config
from usersegments.lock import RunLock
from usersegments.runlog import new_run_id
from usersegments.session import build_session
from usersegments.store import TableStore
from usersegments.stream.batch import STREAM, BatchDone, GracefulStop, MicroBatches, StopSignal
from usersegments.stream.source import read_events

log = logging.getLogger(__name__)

# How often the driver looks at the query and at a stop request, in seconds.
POLL_SECONDS = 1.0


@dataclass(frozen=True)
class StreamSummary:
    """What one ``usersegments stream`` did: its batches and why it ended."""

    checkpoint: str
    batches: list[BatchDone]
    stopped_by_signal: bool

    @property
    def rows(self) -> int:
        """Input rows read over every batch of this start."""
        return sum(b.rows for b in self.batches)


def checkpoint_location(cfg: Config, store: TableStore) -> str:
    """``stream.checkpoint``, else ``<store root>/checkpoints/<query name>``: beside the
    tables it vouches for, so a store copied or restored keeps its stream's position."""
    if cfg.stream.checkpoint:
        return cfg.stream.checkpoint
    return f"{store.root.rstrip('/')}/checkpoints/{cfg.stream.query_name}"


def run_stream(cfg: Config, source: str, items: str | None = None) -> StreamSummary:
    """Run the streaming query over ``source`` until its trigger ends it (availableNow:
    once what has landed is processed) or SIGTERM stops it between batches; a batch's
    error is raised as itself."""
    spark = build_session(cfg)
    store = TableStore.from_config(spark, cfg)
    checkpoint = checkpoint_location(cfg, store)
    stop = StopSignal()
    handler = MicroBatches(spark, store, cfg, source, items, checkpoint, stop)
    lock = RunLock(store.root, f"{STREAM}-{new_run_id()}", STREAM, cfg.store).acquire()
    try:
        close_abandoned_runs(store)
        frame = read_events(spark, cfg, source, on_databricks=cfg.spark.mode == "databricks")
        query = start_query(frame, cfg, checkpoint, handler)
        log.info("stream %s (id %s) started; checkpoint %s", query.name, query.id, checkpoint)
        with stop_on_sigterm(stop):
            await_query(query, stop, handler)
    finally:
        lock.release()
    return StreamSummary(checkpoint, handler.done, stop.requested.is_set())


def close_abandoned_runs(store: TableStore) -> int:
    """Mark ``failed`` the stream runs still ``running``: batches of a stream process that
    was killed (their replay is a run of its own). Called under the root's lock, when no
    batch of another process can be running; returns how many were marked."""
    if not store.exists("runs"):
        return 0
    status = F.col("status")
    abandoned = store.read("runs").filter((F.col("command") == STREAM) & (status == "running"))
    count = abandoned.count()
    if count:
        log.warning("stream: %d batch runs of a stopped stream process marked failed", count)
        store.merge(abandoned.withColumn("status", F.lit("failed")), "runs", on=["run_id"])
    return count


def start_query(
    frame: DataFrame, cfg: Config, checkpoint: str, handler: MicroBatches
) -> StreamingQuery:
    """Start ``frame`` into ``handler`` with the configured trigger and checkpoint."""
    writer = (
        frame.writeStream.queryName(cfg.stream.query_name)
        .option("checkpointLocation", checkpoint)
        .foreachBatch(handler)
    )
    if cfg.stream.trigger == "processingTime":
        writer = writer.trigger(processingTime=cfg.stream.interval)
    else:
        writer = writer.trigger(availableNow=True)
    return writer.start()


def await_query(query: StreamingQuery, stop: StopSignal, handler: MicroBatches) -> None:
    """Wait for the query to end; on a stop request, stop it once no batch runs. A failed
    batch's own error is raised (its message names the fix); a batch refused because a
    stop was asked for is no failure."""
    try:
        while query.isActive:
            # The batch function has returned (idle) before Spark writes the batch's commit;
            # the trigger stays active until it has, so a stop waits for both.
            if stop.requested.is_set() and stop.idle.is_set() and not _trigger_active(query):
                log.info("stream: stop requested; stopping between batches")
                query.stop()
                break
            query.awaitTermination(POLL_SECONDS)
    except StreamingQueryException:
        if isinstance(handler.error, GracefulStop):
            return
        if handler.error is not None:
            raise handler.error from None
        raise
    if handler.error is not None and not isinstance(handler.error, GracefulStop):
        raise handler.error


def _trigger_active(query: StreamingQuery) -> bool:
    """Whether the query is inside a trigger (a batch running or being committed)."""
    try:
        return bool(query.status["isTriggerActive"])
    except Exception:  # the query ended while asked: no trigger runs
        return False


@contextmanager
def stop_on_sigterm(stop: StopSignal) -> Iterator[None]:
    """While the block runs, SIGTERM asks for a stop instead of killing the process (only
    in the main thread, where Python handles signals; elsewhere, e.g. a notebook's
    thread, the block runs as is)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def asked(signum: int, _frame: object) -> None:
        log.info("stream: signal %d received; the running batch finishes first", signum)
        stop.requested.set()

    previous = signal.signal(signal.SIGTERM, asked)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
