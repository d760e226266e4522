"""The ``features`` vector column every clustering step reads, and how users get it."""

from __future__ import annotations

from pyspark.ml.feature import PCA
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from usersegments.profile import with_unit_vector

FEATURES = "features"


def clusterable_users(profiles: DataFrame, min_events: int) -> DataFrame:
    """Profiles with at least ``min_events`` events, as (user_id, features vector)."""
    return profiles.filter(F.col("n_events") >= min_events).select(
        "user_id", array_to_vector(F.col("embedding")).alias(FEATURES)
    )


def reduce_dimensions(
    users: DataFrame, dims: int, sample_size: int, seed: int, total: int
) -> DataFrame:
    """MLlib PCA fit on a sample, applied to everyone, re-normalised."""
    fraction = min(1.0, sample_size / max(total, 1))
    pca = PCA(k=dims, inputCol=FEATURES, outputCol="_pca").fit(
        users.sample(fraction=fraction, seed=seed)
    )
    reduced = pca.transform(users).select(
        "user_id", vector_to_array(F.col("_pca"), dtype="float32").alias("_reduced")
    )
    return with_unit_vector(reduced, "_reduced", "_unit").select(
        "user_id", array_to_vector(F.col("_unit")).alias(FEATURES)
    )
