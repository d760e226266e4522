# Databricks notebook source
# MAGIC %md
# MAGIC # 04 · Dynamic updates: new events move users, history is kept, drift is measured
# MAGIC
# MAGIC `update` folds new events into the stored profiles without re-reading old events
# MAGIC (`S_new = S_old · 2^(-Δt/half_life) + Σ w·v`), reassigns the affected users to the nearest
# MAGIC segment (a user moves only with enough new evidence and a clear margin), closes and opens
# MAGIC rows of `segment_history` (a type-2 slowly changing dimension), and records drift. When
# MAGIC more than `update.recluster_threshold` of the users move, it re-clusters and matches the
# MAGIC new segments to the old ones so ids stay stable (`segment_lineage`).
# MAGIC
# MAGIC Here the second window of the quickstart's log arrives: it holds the planted drift.

# COMMAND ----------

import json
from datetime import datetime
from pathlib import Path

from pyspark.sql import functions as F

from usersegments.console import print_churn
from usersegments.evaluate import drift_recovery
from usersegments.notebook import start
from usersegments.pipeline import pipeline_run, update_all
from usersegments.report import display_report
from usersegments.testing.synthetic import output_paths

nb = start(globals())
cfg, show = nb.cfg, nb.show
input_dir = Path(cfg.store.root) / "input"
window2 = output_paths(input_dir / "window2")

# COMMAND ----------

with pipeline_run(cfg, "update") as ctx:
    results = update_all(ctx, [window2["events_csv"]], window2["items"], recluster=False)
    print_churn(results["update"])
churn = results["update"].metrics
store = ctx.store

# COMMAND ----------

# MAGIC %md
# MAGIC ## Movement in the segment explorer
# MAGIC The report the update just wrote, inline and opened on its movement page: a Sankey of users
# MAGIC between the segments of any two runs (the last two by default) and segment sizes over runs.

# COMMAND ----------

display_report(globals(), store, cfg, page="movement")

# COMMAND ----------

# MAGIC %md
# MAGIC ## Who moved, and where the planted drift went
# MAGIC Closed history rows are the moves. With the generator's truth we can check that users whose
# MAGIC interest changed now sit in a segment of their new area, and that the others stayed.

# COMMAND ----------

history = store.read("segment_history")
moves = (
    history.filter(F.col("valid_to").isNotNull())
    .select("user_id", F.col("segment_id").alias("from_segment"), "valid_to")
    .join(history.filter(F.col("valid_to").isNull()).select("user_id", "segment_id"), "user_id")
    .groupBy("from_segment", "segment_id")
    .count()
    .orderBy(F.desc("count"))
)
show(moves, "flows between segments")
manifest = json.loads(Path(window2["manifest"]).read_text())
split_at = datetime.fromisoformat(manifest["split_at"])
recovery = drift_recovery(store, window2["truth"], split_at, cfg.privacy)
show(recovery, "planted drift after the update")
