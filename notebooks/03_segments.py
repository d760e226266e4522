# Databricks notebook source
# MAGIC %md
# MAGIC # 03 · Segments: two-level clustering, labels, and a look at them
# MAGIC
# MAGIC Each user is one vector: the time-decayed, event-weighted mean of the embeddings of what
# MAGIC they did (`user_profiles`). Clustering has two levels:
# MAGIC 1. **coarse clusters**: Spark MLlib bisecting k-means on cosine distance, k chosen by
# MAGIC    silhouette among `cluster.k_candidates` (or fixed with `cluster.k`);
# MAGIC 2. **fine segments**: agglomerative clustering inside each coarse cluster, run per cluster
# MAGIC    in `applyInPandas`; segments below `privacy.min_segment_size` are merged.
# MAGIC
# MAGIC `label` then names each segment from its members' texts (class-based TF-IDF keywords,
# MAGIC representative items near the centroid) and `recommend` ranks items per segment.

# COMMAND ----------

from usersegments.console import print_run_summary
from usersegments.notebook import start
from usersegments.pipeline import pipeline_run, run_all
from usersegments.report import gather, plot_map, plot_sizes

nb = start(globals())
cfg, show = nb.cfg, nb.show

# COMMAND ----------

# MAGIC %md
# MAGIC ## Cluster, label, recommend
# MAGIC Re-running these stages on the stored profiles replaces `user_segments`, `segments` and
# MAGIC `segment_recommendations` (a new run id; the Delta history keeps the old versions).

# COMMAND ----------

with pipeline_run(cfg, "notebook") as ctx:
    results = run_all(ctx, [], stages=("cluster", "label", "recommend"))
    print_run_summary(ctx, results)
store = ctx.store

# COMMAND ----------

# MAGIC %md
# MAGIC ## Explore
# MAGIC The 2-D map places users on the first two principal components of their profiles,
# MAGIC coloured by coarse cluster, with each segment's label at its centre. Look for segments
# MAGIC that overlap (a candidate for a smaller `cluster.sub.distance_threshold`) and for very
# MAGIC large ones (a larger `cluster.k`).

# COMMAND ----------

data = gather(store.spark, store, cfg)
show(plot_map(data.map_points, data.segments), "map of users")
show(plot_sizes(data.segments), "users per segment")

# COMMAND ----------

# MAGIC %md
# MAGIC ## Segment cards
# MAGIC Label, keywords, representative items and the top recommendations of every segment.

# COMMAND ----------

segments = data.segments.sort_values("size", ascending=False)
cards = segments.assign(
    items=segments["top_items"].map(
        lambda ids: "; ".join(data.item_text.get(i, i)[:40] for i in list(ids)[:3])
    ),
    recommended=segments["segment_id"].map(
        lambda s: "; ".join(
            data.item_text.get(i, i)[:40] for i, _ in data.recommendations.get(s, [])[:3]
        )
    ),
)[["segment_id", "size", "label", "keywords", "items", "recommended"]]
show(cards, "segment cards")
