# Databricks notebook source
# MAGIC %md
# MAGIC # 01 · Ingest: clean, typed, deduplicated events; nothing lost
# MAGIC
# MAGIC `ingest` reads raw event files (CSV, JSONL, Parquet or Delta; columns mapped in config),
# MAGIC joins the item catalog for texts, parses times, and writes two tables:
# MAGIC - `events`: the accepted rows, each with a stable `event_id` (re-ingesting the same file
# MAGIC   adds nothing);
# MAGIC - `events_rejected`: every bad row as it came, with its `reject_reason`.
# MAGIC
# MAGIC Rows read always equal accepted + rejected + duplicates. Run `00_quickstart` first.

# COMMAND ----------

from pathlib import Path

from pyspark.sql import functions as F

from usersegments.notebook import start
from usersegments.pipeline import pipeline_run, run_stage
from usersegments.testing.synthetic import output_paths

nb = start(globals())
cfg, show = nb.cfg, nb.show
window1 = output_paths(Path(cfg.store.root) / "input" / "window1")

# COMMAND ----------

# MAGIC %md
# MAGIC ## Ingest the first window again
# MAGIC The quickstart ingested it already, so this run accepts **0 new events**: event ids make
# MAGIC ingest idempotent. The counts of the read are still reported.

# COMMAND ----------

with pipeline_run(cfg, "ingest") as ctx:
    ingest = run_stage(ctx, "ingest", events=[window1["events_csv"]], items=window1["items"])
m = ingest.metrics
print(
    f"rows read {m['rows_read']:.0f} = accepted {m['accepted']:.0f} + rejected "
    f"{m['rejected']:.0f} + duplicates {m['duplicates']:.0f} "
    f"({m['already_present']:.0f} of them already stored)"
)

# COMMAND ----------

# MAGIC %md
# MAGIC ## Where the bad rows went
# MAGIC Each rejected row keeps its raw columns as strings and says why it was refused: fix the
# MAGIC source and re-ingest, nothing else is needed.

# COMMAND ----------

store = ctx.store
rejected = store.read("events_rejected")
rejected_by_reason = rejected.groupBy("reject_reason").count().orderBy(F.desc("count")).toPandas()
show(rejected_by_reason, "rejected rows by reason")
show(rejected.select("reject_reason", "user_id", "event_time", "text").limit(10), "examples")

# COMMAND ----------

events = store.read("events")
show(events.groupBy("event_type").count().orderBy(F.desc("count")), "accepted events by type")
