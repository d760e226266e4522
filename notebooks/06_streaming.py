# Databricks notebook source
# MAGIC %md
# MAGIC # 06 · Streaming: new events update the segments as they land, exactly once
# MAGIC
# MAGIC `usersegments stream` reads new events with Spark Structured Streaming and sends every
# MAGIC micro-batch through `foreachBatch` into the same stages as `update` (ingest with
# MAGIC quarantine, embed only new texts, fold, move users, segment history, drift,
# MAGIC recommendations). On Databricks the landing folder is read with **Auto Loader**
# MAGIC (`cloudFiles`, `stream.auto_loader`), with the schema from the config, never inferred.
# MAGIC
# MAGIC The checkpoint lives under the store root (`<root>/checkpoints/<query name>`): a restart
# MAGIC goes on from the last committed batch. A replayed batch changes nothing twice: events
# MAGIC are merged on `event_id`, profiles fold only events after their `events_through`, and
# MAGIC `run_metrics` is appended once per batch under Delta's transaction (query id, batch id).
# MAGIC
# MAGIC Here the week after the quickstart's log (the same users, new events) lands as two files;
# MAGIC `availableNow` processes them (one per micro-batch) and stops. Use
# MAGIC `stream.trigger: processingTime` for a job that keeps running (a Databricks job's
# MAGIC "Python script" task on `jobs/stream_segments.py`).

# COMMAND ----------

from datetime import timedelta
from pathlib import Path

import numpy as np
from pyspark.sql import functions as F

from usersegments.config import with_settings
from usersegments.notebook import start
from usersegments.session import build_session
from usersegments.store import TableStore
from usersegments.stream import run_stream
from usersegments.testing.synthetic import (
    DEFAULT_END,
    GeneratorSettings,
    generate,
    generated_times,
    write,
)

nb = start(globals(), users="300", seed="7")  # the quickstart's users
cfg, params, show = nb.cfg, nb.params, nb.show
input_dir = Path(cfg.store.root) / "input"
landing = input_dir / "landing"

# COMMAND ----------

# MAGIC %md
# MAGIC ## Land the files
# MAGIC Two JSON lines files: a week of new events of the quickstart's users, cut in time order.
# MAGIC On Databricks the landing folder is usually a Unity Catalog volume another job writes into.

# COMMAND ----------

week = GeneratorSettings(
    users=int(params["users"]), seed=int(params["seed"]), days=7, end=DEFAULT_END + timedelta(7)
)
later = generate(week)
items = write(later, input_dir / "week3")["items"]
order = generated_times(later.events).sort_values(kind="stable").index  # garbage times last
events = later.events.loc[order].drop(columns=["_bad"])
landing.mkdir(parents=True, exist_ok=True)
for number, rows in enumerate(np.array_split(np.arange(len(events)), 2)):
    path = landing / f"events-{number}.jsonl"
    events.iloc[rows].to_json(path, orient="records", lines=True)
settings = {"stream.max_files_per_trigger": 1, "stream.format": "jsonl"}
streaming = with_settings(cfg, settings, "06_streaming")

# COMMAND ----------

summary = run_stream(streaming, str(landing), items)
print(f"{len(summary.batches)} micro-batches, {summary.rows} rows; checkpoint {summary.checkpoint}")

# COMMAND ----------

# MAGIC %md
# MAGIC ## One run per micro-batch
# MAGIC Each batch is a run of its own in `runs` (command `stream`); its figures are in
# MAGIC `run_metrics`, once, even if the batch ran again after a crash.

# COMMAND ----------

store = TableStore.from_config(build_session(cfg), cfg)
stream_runs = store.read("runs").filter(F.col("command") == "stream").select("run_id", "started_at")
shown = ("rows_read", "accepted", "events_folded", "users_reassigned", "moved_share")
figures = (
    store.read("run_metrics")
    .join(stream_runs, "run_id")
    .filter(F.col("metric").isin(*shown))
    .groupBy("run_id", "started_at")
    .pivot("metric")
    .agg(F.first("value"))
    .orderBy("started_at")
)
show(figures, "micro-batches")
