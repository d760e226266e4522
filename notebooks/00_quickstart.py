# Databricks notebook source
# MAGIC %md
# MAGIC # 00 · Quickstart: from raw behaviour logs to interest segments
# MAGIC
# MAGIC This notebook generates a small, realistic behaviour log (views, searches, purchases,
# MAGIC ratings and reviews with planted interest areas and a planted drift), then runs the whole
# MAGIC pipeline on its first window: **ingest → embed → profile → cluster → label → recommend →
# MAGIC report**. Every result is a Delta table under the store root.
# MAGIC
# MAGIC The log is split at the planted drift date: notebook `04_dynamic_updates` folds the second
# MAGIC window in later. Run the notebooks in order; each is a handful of calls into the
# MAGIC `usersegments` library, which holds all the logic.

# COMMAND ----------

# MAGIC %md
# MAGIC On Databricks, install the library on the cluster first (from the repository folder, or the
# MAGIC wheel that `make dist` builds). Locally, `make demo` has installed it in `.venv`.

# COMMAND ----------

# MAGIC %pip install ..

# COMMAND ----------

from datetime import datetime
from pathlib import Path

from usersegments.console import print_run_summary
from usersegments.notebook import start
from usersegments.pipeline import pipeline_run, run_all
from usersegments.report import display_report
from usersegments.testing.synthetic import GeneratorSettings, generate, split_at, write

nb = start(globals(), users="300", seed="7")
cfg, params, show = nb.cfg, nb.params, nb.show
print(f"store root: {cfg.store.root}")

# COMMAND ----------

# MAGIC %md
# MAGIC ## A sample log with planted truth
# MAGIC `generate` writes events (CSV and Parquet, with a few deliberately bad rows), an item
# MAGIC catalog and the planted truth (each user's interest area, and for drifted users the area
# MAGIC they move to).

# COMMAND ----------

data = generate(GeneratorSettings(users=int(params["users"]), seed=int(params["seed"])))
drift_date = datetime.fromisoformat(str(data.manifest["drift_date"]))
first, second = split_at(data, drift_date)
input_dir = Path(cfg.store.root) / "input"
window1 = write(first, input_dir / "window1")
window2 = write(second, input_dir / "window2")
print(f"{len(first.events)} events before {drift_date:%Y-%m-%d}, {len(second.events)} after")
show(first.events.head(10), "a few raw events")

# COMMAND ----------

# MAGIC %md
# MAGIC ## The full run
# MAGIC One run id covers every stage; each prints a line with its time.

# COMMAND ----------

with pipeline_run(cfg, "notebook") as ctx:
    results = run_all(ctx, [window1["events_csv"]], window1["items"], window1["truth"])
    print_run_summary(ctx, results)
store = ctx.store

# COMMAND ----------

# MAGIC %md
# MAGIC ## What came out
# MAGIC The segments, each with its label, keywords and size; `user_segments` holds one row per
# MAGIC user. The segment explorer is at `<root>/report/index.html`; on Databricks it is shown
# MAGIC here too, inline.

# COMMAND ----------

segments = store.read("segments").select("segment_id", "size", "label", "keywords")
show(segments.orderBy("segment_id"), "segments")
print(f"report: {results['report'].path}")
display_report(globals(), store, cfg)
