# Databricks notebook source
# MAGIC %md
# MAGIC # 05 · Evaluate: are segment recommendations better than popularity?
# MAGIC
# MAGIC `evaluate` holds out each user's last `evaluate.holdout_last` events, rebuilds profiles
# MAGIC and the two-level clustering from the rest **in memory** (the stored tables are not
# MAGIC touched), and asks: did the user's segment's top-K list contain the items they went on to
# MAGIC touch? It compares three recommenders: the user's segment, their coarse cluster, and
# MAGIC global popularity (hit rate@K and recall@K, seen items excluded). With the generator's
# MAGIC truth it also scores the training clustering against the planted areas (ARI, NMI).

# COMMAND ----------

from pathlib import Path

from pyspark.sql import functions as F

from usersegments.console import print_evaluation
from usersegments.notebook import start
from usersegments.pipeline import pipeline_run, run_stage
from usersegments.testing.synthetic import output_paths

nb = start(globals(), holdout_last="2")
cfg, params, show = nb.cfg, nb.params, nb.show
truth = output_paths(Path(cfg.store.root) / "input" / "window2")["truth"]

# COMMAND ----------

with pipeline_run(cfg, "evaluate") as ctx:
    result = run_stage(ctx, "evaluate", holdout_last=int(params["holdout_last"]), truth=truth)
print_evaluation(result, cfg.evaluate.k)
evaluation = result.metrics

# COMMAND ----------

# MAGIC %md
# MAGIC ## The figures are kept
# MAGIC Every run's metrics go to `run_metrics` (stage `evaluate`), so quality can be tracked from
# MAGIC run to run.

# COMMAND ----------

recorded = (
    ctx.store.read("run_metrics")
    .filter((F.col("stage") == "evaluate") & (F.col("run_id") == ctx.run.run_id))
    .select("metric", "value")
    .orderBy("metric")
)
show(recorded, "this run's evaluation in run_metrics")
