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
from usersegments.report import display_report, gather, item_title

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
# MAGIC The segment explorer (the same page as `<output>/report/index.html`, inline here, opened on
# MAGIC its map; the other pages are a click away): the map places a
# MAGIC sample of users in 2-D (UMAP when `umap-learn` is installed, else PCA), coloured by coarse
# MAGIC cluster, with each segment's label, size and top items on hover; the hierarchy shows
# MAGIC clusters and their segments by size. Look for segments that overlap (a candidate for a
# MAGIC smaller `cluster.sub.distance_threshold`) and for very large ones (a larger `cluster.k`).

# COMMAND ----------

data = gather(store.spark, store, cfg)
display_report(globals(), store, cfg, page="map", data=data)

# COMMAND ----------

# MAGIC %md
# MAGIC ## Segment cards
# MAGIC Label, keywords, representative items and the top recommendations of every segment.

# COMMAND ----------

segments = data.segments.sort_values("size", ascending=False)
cards = segments.assign(
    items=segments["top_items"].map(
        lambda ids: "; ".join(item_title(data.item_text.get(i, i), 40) for i in list(ids)[:3])
    ),
    recommended=segments["segment_id"].map(
        lambda s: "; ".join(item_title(text, 40) for text, _ in data.recommendations.get(s, [])[:3])
    ),
)[["segment_id", "size", "label", "keywords", "items", "recommended"]]
show(cards, "segment cards")
