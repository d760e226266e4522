"""One user's interests from their event vectors: Ward clustering on one user's rows
(``interest_tuples`` is numpy/scipy only, testable without Spark; ``interests_of_users``
runs it on each user's events through ``frames.apply_per_key``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import types as T
from scipy.cluster.hierarchy import linkage

from usersegments.cluster.assign import unit_rows
from usersegments.frames import apply_per_key

INTEREST_COLUMNS = ["interest_rank", "weight", "n_events", "last_event_time", "embedding"]


@dataclass(frozen=True)
class InterestRule:
    """The settings of ``user_interests`` (from ``interests.*``), small and picklable."""

    distance_threshold: float
    max_per_user: int
    min_weight: float


def event_groups(x: np.ndarray, rule: InterestRule) -> np.ndarray:
    """Group labels (0..k-1) of the unit rows ``x``: Ward's dendrogram, split from the top
    while the two sides of a merge have unit centroids further apart (Euclidean) than
    ``rule.distance_threshold``, into at most ``rule.max_per_user`` groups.

    Why the centroid distance and not Ward's merge height: the height is
    ``sqrt(2 n1 n2 / (n1 + n2))`` x the centroid distance, so it grows with the user's
    event count even within one area (on generated data the top merge of one area's
    events has a median height of 1.33 for users with up to 8 events and 2.17 for
    30-60 events), and no fixed height tells one taste from two for every user. The
    distance of the two sides' centroids does not grow with their sizes. Merges are
    visited in Ward's order (the highest first), so with the cap the ``max_per_user``
    groups are the ones Ward keeps apart longest.
    """
    n = len(x)
    if n < 2:
        return np.zeros(n, dtype=np.int64)
    tree = linkage(x, method="ward")
    children = tree[:, :2].astype(np.int64)
    sums = np.vstack([x, np.zeros((n - 1, x.shape[1]))])
    for k, (left, right) in enumerate(children):
        sums[n + k] = sums[left] + sums[right]
    unit = unit_rows(sums)
    groups = {2 * n - 2}
    for k in range(n - 2, -1, -1):
        if len(groups) >= rule.max_per_user:
            break
        left, right = children[k]
        node = n + k
        if node in groups and np.linalg.norm(unit[left] - unit[right]) > rule.distance_threshold:
            groups.remove(node)
            groups.update((int(left), int(right)))
    labels = np.empty(n, dtype=np.int64)
    for label, root in enumerate(sorted(groups)):
        stack = [root]
        while stack:
            node = stack.pop()
            if node < n:
                labels[node] = label
            else:
                stack.extend(children[node - n])
    return labels


def interest_tuples(
    vectors: np.ndarray, weights: np.ndarray, times: np.ndarray, rule: InterestRule
) -> list[tuple]:
    """One user's interests from their events' vectors, decayed weights and times, as
    rows of ``INTEREST_COLUMNS``.

    Each interest: ``weight`` = its share of the user's weighted engagement (interests
    below ``rule.min_weight`` dropped, the rest renormalised; the heaviest is always
    kept), ``embedding`` = the weighted mean of its unit event vectors, scaled to unit
    length, ``n_events``, ``last_event_time``; ``interest_rank`` 1 = the heaviest.
    Events weighing nothing (or not finite) take no part.
    """
    x = unit_rows(vectors)
    w = np.asarray(weights, dtype=np.float64)
    keep = np.isfinite(w) & (w > 0) & np.isfinite(x).all(axis=1) & (np.abs(x).sum(axis=1) > 0)
    x, w, times = x[keep], w[keep], np.asarray(times)[keep]
    if not len(x):
        return []
    labels = event_groups(x, rule)
    k = int(labels.max()) + 1
    mass = np.bincount(labels, weights=w, minlength=k)
    share = mass / mass.sum()
    kept = share >= rule.min_weight
    kept[int(np.argmax(share))] = True
    order = [int(g) for g in np.argsort(-share, kind="stable") if kept[g]]
    total = share[order].sum()
    rows = []
    for rank, g in enumerate(order, start=1):
        members = labels == g
        centroid = unit_rows((w[members, None] * x[members]).sum(axis=0, keepdims=True))[0]
        rows.append(
            (
                rank,
                float(share[g] / total),
                int(members.sum()),
                times[members].max(),
                centroid.astype(np.float32),
            )
        )
    return rows


def user_interests(
    vectors: np.ndarray, weights: np.ndarray, times: np.ndarray, rule: InterestRule
) -> pd.DataFrame:
    """``interest_tuples`` as a frame of ``INTEREST_COLUMNS`` (one user, for a look at
    the results; ``interests_of_users`` keeps the tuples)."""
    return pd.DataFrame(interest_tuples(vectors, weights, times, rule), columns=INTEREST_COLUMNS)


INTEREST_SCHEMA = T.StructType(
    [
        T.StructField("user_id", T.StringType()),
        T.StructField("interest_rank", T.IntegerType()),
        T.StructField("weight", T.DoubleType()),
        T.StructField("n_events", T.LongType()),
        T.StructField("last_event_time", T.TimestampType()),
        T.StructField("embedding", T.ArrayType(T.FloatType())),
    ]
)


def interests_of_users(
    weighted: DataFrame, rule: InterestRule, partitioned: bool = False
) -> DataFrame:
    """``weighted`` (user_id, event_time, text_hash, weight, embedding; one row per event,
    already capped per user) -> one row per interest (``INTEREST_SCHEMA``), by
    ``interest_tuples`` on each user's events (``apply_per_key``: one user's events as
    arrays, oldest first). ``partitioned``: ``weighted`` is hash-partitioned by
    user_id already (``recent_weighted_events`` with ``broadcast``)."""

    def one_user(events: dict[str, np.ndarray]) -> list[tuple]:
        # Rows arrive sorted by (event_time, text_hash, weight): Ward's ties break the
        # same way on every run (a rerun after a crash writes the same interests).
        found = interest_tuples(
            np.vstack(events["embedding"]), events["weight"], events["event_time"], rule
        )
        user = events["user_id"][0]
        return [(user, *row) for row in found]

    return apply_per_key(
        weighted.select("user_id", "event_time", "text_hash", "weight", "embedding"),
        "user_id",
        ("event_time", "text_hash", "weight"),
        one_user,
        INTEREST_SCHEMA,
        partitioned=partitioned,
    )
