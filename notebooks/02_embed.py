# Databricks notebook source
# MAGIC %md
# MAGIC # 02 · Embed: every distinct text once, with a BERT-family transformer
# MAGIC
# MAGIC `embed` takes the distinct texts of `events`, leaves out those already in the
# MAGIC `text_embeddings` cache for this `model_id`, and embeds only the new ones in a Spark
# MAGIC pandas UDF: texts sorted by length, micro-batches, mean pooling, unit vectors. On a GPU
# MAGIC cluster the same UDF runs in fp16 (`embed.device: auto`). The `model_id` names the model
# MAGIC and every setting that changes vectors, so a change never reuses stale ones.

# COMMAND ----------

import numpy as np
from pyspark.sql import functions as F

from usersegments.embed import EmbedderSpec, get_embedder, model_id
from usersegments.notebook import start
from usersegments.pipeline import pipeline_run, run_stage

nb = start(globals())
cfg, show = nb.cfg, nb.show

# COMMAND ----------

# MAGIC %md
# MAGIC ## Run the stage
# MAGIC After the quickstart every text is cached: this run embeds **0 texts** (cost follows unique
# MAGIC texts, never events).

# COMMAND ----------

with pipeline_run(cfg, "embed") as ctx:
    embed = run_stage(ctx, "embed")
e = embed.metrics
print(
    f"distinct texts {e['distinct_texts']:.0f}, cached {e['cached_hits']:.0f}, "
    f"embedded now {e['texts_embedded']:.0f}"
)
cache = ctx.store.read("text_embeddings")
show(cache.groupBy("model_id").count(), "cached vectors per model")

# COMMAND ----------

# MAGIC %md
# MAGIC ## The embedder itself
# MAGIC The same embedder the UDF uses, called directly: related texts are close (cosine near 1),
# MAGIC unrelated ones are not.

# COMMAND ----------

embedder = get_embedder(EmbedderSpec.from_config(cfg.embed))
texts = ["trail running shoes", "lightweight shoes for mountain runs", "sourdough starter recipe"]
vectors = embedder.embed(texts)
print(f"model {model_id(cfg.embed)}: {vectors.shape[1]}-d unit vectors")
similarity = (vectors @ vectors.T).round(3)
show({text: list(map(float, row)) for text, row in zip(texts, similarity, strict=True)}, "cosine")
assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)
show(cache.select("text_hash", F.size("embedding").alias("dims")).limit(5), "a few cached rows")
