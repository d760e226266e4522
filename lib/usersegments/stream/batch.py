"""One micro-batch: a recorded run through the same stages as ``update`` (or as ``run``
while the store has no segments yet), exactly once.

Exactly once, table by table, for a batch replayed after a crash (Spark runs a batch
again when its offsets were logged but its commit was not):

- ``events``: merged on ``event_id`` (a hash of the row) with matched rows left alone,
  so a replayed row is a duplicate, never a second event, and keeps the ``run_id`` of
  the attempt that inserted it;
- ``events_rejected``: merged insert-only on ``reject_id`` (raw values, reason, file);
- ``text_embeddings``: merged on ``text_hash, model_id``, existing rows kept;
- ``user_profiles``: the fold adds only events ingested after the profile's
  ``events_through`` and writes the sums and the marker in one row, so an attempt
  that folded the batch leaves nothing for the replay to fold;
- ``user_segments``, ``segments``, ``segment_history``, ``user_interests``, the
  recommendations: reconciliations of the state above (stale users, open rows,
  overwrites), which a replay recomputes to the same rows;
- ``run_metrics`` (append-only: a replay would count its rows again): the batch's
  figures are held until its stages are done and then appended in one write that
  carries the application transaction (the query id, the batch id), which Delta skips
  when an earlier attempt of the batch committed it (``store.Txn``).

Why not a transaction id on every write: Delta keys it by table, so a batch's second
write to one table (``segments`` is written by the update, then by ``label``) would be
skipped as a replay of its first.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

from pyspark.sql import DataFrame, SparkSession

from usersegments.config import Config
from usersegments.dynamics.stage import REQUIRED_TABLES
from usersegments.frames import rows_to_spark
from usersegments.pipeline import Context, finishing, run_all, update_all
from usersegments.runlog import RunLog, StageResult, new_run_id
from usersegments.schema import RUN_METRICS
from usersegments.stages import RUN, stages_of
from usersegments.store import TableStore, Txn
from usersegments.stream.source import raw_batch

log = logging.getLogger(__name__)

STREAM = "stream"
# The application id of the batches' run_metrics appends: one per streaming query.
APP_ID_PREFIX = "usersegments-stream-"


class BatchRunLog(RunLog):
    """The run of one micro-batch: metrics are held until ``finish``, then appended in
    one idempotent write (``txn``), so a replayed batch never counts its rows twice."""

    def __init__(self, spark: SparkSession, store: TableStore, cfg: Config, run_id: str, txn: Txn):
        super().__init__(spark, store, cfg, STREAM, run_id=run_id)
        self.txn = txn
        self.metrics_committed = False

    def flush(self) -> None:
        """Held: the batch's figures are written once, by ``finish``."""

    def finish(self, status: str = "succeeded") -> None:
        """Append the batch's figures under its transaction (skipped when an earlier
        attempt of the batch committed them), then mark the run. A failed attempt's
        figures are logged, not written: the replay of the batch records them."""
        if status == "succeeded":
            self._append_metrics()
        elif self._pending:
            log.warning(
                "stream batch %d failed: its %d figures are not recorded (its replay records them)",
                self.txn.version,
                len(self._pending),
            )
            self._pending.clear()
        self._write_run_row(status=status, finished_at=datetime.now(timezone.utc))

    def _append_metrics(self) -> None:
        rows = [(self.run_id, s, m, v, t) for s, m, v, t in self._pending]
        self._pending.clear()
        if not rows:
            return
        frame = rows_to_spark(self.spark, rows, RUN_METRICS)
        self.metrics_committed = self.store.write(frame, "run_metrics", txn=self.txn)
        if not self.metrics_committed:
            log.info(
                "stream batch %d: an earlier attempt recorded its figures; not again",
                self.txn.version,
            )


def next_run_id(after: str | None) -> str:
    """A new run id sorting after ``after``: the fold tells new events from folded ones
    by run id order (``run_id > events_through``), and two batches may start within the
    second the id is stamped with."""
    while True:
        run_id = new_run_id()
        if after is None or run_id > after:
            return run_id
        time.sleep(0.05)


def query_id(spark: SparkSession, checkpoint: str) -> str:
    """The streaming query's id, which its checkpoint keeps across restarts (the
    ``metadata`` file, written before the first batch)."""
    text = "\n".join(row[0] for row in spark.read.text(f"{checkpoint}/metadata").collect())
    return str(json.loads(text)["id"])


class GracefulStop(RuntimeError):
    """Raised by a batch that begins after a stop was asked for: it does nothing, and is
    run again by the next start (its offsets are logged, its commit is not)."""


@dataclass
class StopSignal:
    """A stop asked for (SIGTERM) and whether a batch is running: the stream stops only
    between batches, so the current one finishes."""

    requested: threading.Event = field(default_factory=threading.Event)
    idle: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.idle.set()

    def enter_batch(self) -> None:
        """Mark a batch running, or raise ``GracefulStop`` when a stop is asked for.
        Busy first, then the check: a stop asked for in between sees the batch running."""
        self.idle.clear()
        if self.requested.is_set():
            self.idle.set()
            raise GracefulStop("stop requested: this batch runs at the next start")

    def leave_batch(self) -> None:
        """Mark the batch done."""
        self.idle.set()


@dataclass(frozen=True)
class BatchDone:
    """What one micro-batch did (printed per batch, summed at the end)."""

    batch_id: int
    run_id: str
    command: str  # "run" for the batch that built the first segments, else "update"
    rows: int
    seconds: float
    reclustered: bool
    metrics_committed: bool


class MicroBatches:
    """The ``foreachBatch`` function: each non-empty micro-batch is one recorded run of
    the update's stages (the full run's while the store has no segments yet)."""

    def __init__(
        self,
        spark: SparkSession,
        store: TableStore,
        cfg: Config,
        source: str,
        items: str | None,
        checkpoint: str,
        stop: StopSignal,
    ) -> None:
        self.spark = spark
        self.store = store
        self.cfg = cfg
        self.source = source
        self.items = items
        self.checkpoint = checkpoint
        self.stop = stop
        self.done: list[BatchDone] = []
        self.error: BaseException | None = None
        self._app_id: str | None = None
        self._last_run_id: str | None = None

    def __call__(self, frame: DataFrame, batch_id: int) -> None:
        try:
            self.stop.enter_batch()
            self.process(frame, batch_id)
        except BaseException as error:
            self.error = error  # the query fails with it; the command re-raises it
            raise
        finally:
            self.stop.leave_batch()

    def app_id(self) -> str:
        """The application id of this query's transactions (read once per process)."""
        if self._app_id is None:
            self._app_id = APP_ID_PREFIX + query_id(self.spark, self.checkpoint)
        return self._app_id

    def process(self, frame: DataFrame, batch_id: int) -> BatchDone | None:
        """Run the batch's stages in a run of its own; None for an empty batch."""
        from usersegments.console import say

        if frame.isEmpty():
            return None
        started = time.perf_counter()
        raw = raw_batch(frame, self.cfg, self.source, self.items is not None)
        self._last_run_id = next_run_id(self._last_run_id)
        run = BatchRunLog(
            self.spark, self.store, self.cfg, self._last_run_id, Txn(self.app_id(), batch_id)
        )
        run.start()
        command = "update" if all(self.store.exists(t) for t in REQUIRED_TABLES) else RUN
        say(f"stream batch {batch_id}: run {run.run_id} ({command} stages)")
        with finishing(Context(self.cfg, self.spark, self.store, run)) as ctx:
            results = self._stages(ctx, raw, command, batch_id)
        done = BatchDone(
            batch_id=batch_id,
            run_id=run.run_id,
            command=command,
            rows=int(results["ingest"].metrics.get("rows_read", 0)),
            seconds=time.perf_counter() - started,
            reclustered=bool(
                results.get("update", StageResult("update")).metrics.get("reclustered")
            ),
            metrics_committed=run.metrics_committed,
        )
        self.done.append(done)
        say(f"stream batch {batch_id}: {done.rows} rows in {done.seconds:.1f}s")
        return done

    def _stages(
        self, ctx: Context, raw: DataFrame, command: str, batch_id: int
    ) -> dict[str, StageResult]:
        """The update command's stages over the batch (``pipeline.update_all``), or the full
        run's (``pipeline.run_all``) for a store without segments; the report only with
        ``stream.run_report``, maintain in every ``stream.maintain_every``-th batch."""
        skip = [] if self.cfg.stream.run_report else ["report"]
        if (batch_id + 1) % self.cfg.stream.maintain_every:
            skip.append("maintain")
        if command == RUN:
            stages = [s for s in stages_of(RUN) if s not in skip]
            return run_all(ctx, [], self.items, stages=stages, batch=raw)
        return update_all(ctx, [], self.items, recluster=False, batch=raw, skip=skip)
