"""Continuous updates: ``usersegments stream``, Spark Structured Streaming into the update.

New events are read as a stream, from a landing folder of event files (JSON lines,
CSV or Parquet, with one schema from the config; Auto Loader on Databricks) or from an
existing Delta table of events. Each micro-batch goes through ``foreachBatch`` into the
same stages as ``usersegments update`` (``pipeline.update_all``: ingest with
quarantine, embed only new texts, fold, move users, segment history, drift and
re-cluster, recommendations), as one recorded run; while the store has no segments
yet, a batch runs the full ``run`` instead. There is no second implementation of the
update: the micro-batch is handed to ingest as a frame instead of files.

Exactly once: the query's checkpoint lives under the store root
(``<root>/checkpoints/<query name>``), so a restart goes on from the last committed
batch and runs a batch whose commit is missing again; every table a batch writes is
either merged idempotently by key or, for the append-only ``run_metrics``, appended
with Delta's application transaction (query id, batch id), so a replayed batch
changes nothing twice (see ``batch``). Triggers: ``availableNow`` (the default:
process what has landed, then stop) and ``processingTime`` (keep running); SIGTERM
stops the query once the running batch is done.

Modules:

- ``source``: the streaming frame of new events (files, Auto Loader, Delta) and a
  micro-batch as ingest's raw frame;
- ``batch``: ``MicroBatches`` (the ``foreachBatch`` function), ``BatchRunLog`` (figures
  appended once per batch under its transaction), the stop signal;
- ``query``: ``run_stream`` (checkpoint, trigger, SIGTERM, errors).
"""

from usersegments.stream.batch import BatchDone, BatchRunLog, MicroBatches
from usersegments.stream.query import StreamSummary, checkpoint_location, run_stream

__all__ = [
    "BatchDone",
    "BatchRunLog",
    "MicroBatches",
    "StreamSummary",
    "checkpoint_location",
    "run_stream",
]
