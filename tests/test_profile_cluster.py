"""Profiles (exact maths on tiny frames) and two-level clustering (planted truth)."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F

from tests.helpers import metrics_of
from usersegments.cluster import (
    fit_subgroups,
    merge_small,
    merge_undersized,
    nearest_segment_frame,
    subcluster_group,
)
from usersegments.config import load_config
from usersegments.errors import InputError
from usersegments.evaluate import holdout_count
from usersegments.frames import fit_partitions
from usersegments.maintain import remove_legacy_models
from usersegments.profile import (
    dot,
    event_weight,
    profiles_from_sums,
    resolve_as_of,
    usable_vector,
    weighted_sums,
    with_similarity,
)

AS_OF = datetime(2026, 3, 1, tzinfo=timezone.utc)
EVENTS = "user_id string, event_time timestamp, event_type string, value double, text_hash string"


def vectors(spark, rows):
    rows = [(h, [float(x) for x in v]) for h, v in rows]
    return spark.createDataFrame(rows, "text_hash string, embedding array<float>")


def test_only_purchases_of_one_item_give_that_items_vector(spark):
    item = [0.6, 0.8, 0.0]
    events = spark.createDataFrame(
        [("u", AS_OF - timedelta(days=d), "purchase", None, "h1") for d in (0, 3, 40)], EVENTS
    )
    cfg = load_config(overrides=["profile.half_life_days=30"]).profile
    sums = weighted_sums(events, vectors(spark, [("h1", item), ("h2", [1.0, 0, 0])]), cfg, AS_OF)
    row = profiles_from_sums(sums, AS_OF, "r").first()
    assert np.allclose(row["embedding"], item, atol=1e-6)
    assert row["n_events"] == 3
    expected_weight = 3.0 * sum(math.exp(-math.log(2) * d / 30) for d in (0, 3, 40))
    assert row["weight_total"] == pytest.approx(expected_weight, rel=1e-9)
    assert np.allclose(row["weighted_sum"], np.array(item) * expected_weight, rtol=1e-5)


def test_decay_halves_weight_at_half_life(spark):
    cfg = load_config(overrides=["profile.half_life_days=10"]).profile
    events = spark.createDataFrame(
        [
            ("u", AS_OF, "view", None, "h"),
            ("u", AS_OF - timedelta(days=10), "view", None, "h"),
            ("u", AS_OF - timedelta(days=20), "purchase", None, "h"),
        ],
        EVENTS,
    )
    weights = [r["w"] for r in events.select(event_weight(cfg, AS_OF).alias("w")).collect()]
    assert weights == pytest.approx([1.0, 0.5, 0.75])  # purchase weighs 3, two half-lives


def test_weighted_mean_mixes_by_weight(spark):
    cfg = load_config(
        overrides=["profile.value_transform=linear", "profile.half_life_days=30"]
    ).profile
    events = spark.createDataFrame(
        [("u", AS_OF, "rate", 1.0, "a"), ("u", AS_OF, "rate", 3.0, "b")], EVENTS
    )
    sums = weighted_sums(events, vectors(spark, [("a", [1.0, 0.0]), ("b", [0.0, 1.0])]), cfg, AS_OF)
    row = profiles_from_sums(sums, AS_OF, "r").first()
    expected = np.array([2.0, 6.0]) / np.linalg.norm([2.0, 6.0])  # rate weight 2 x value
    assert np.allclose(row["embedding"], expected, atol=1e-6)


def test_vector_helpers_match_numpy_and_refuse_unusable_vectors(spark):
    inf, nan = float("inf"), float("nan")
    rows = [
        ("unit", "a", [0.6, 0.8, 0.0]),
        ("negative", "b", [-1.0, 0.0, 0.0]),
        ("zero", "a", [0.0, 0.0, 0.0]),
        ("nan", "a", [0.1, nan, 0.2]),
        ("inf", "b", [0.1, -inf, 0.2]),
        ("short", "a", [1.0, 0.0]),
        ("empty", "a", []),
        ("null", "a", None),
        ("no target", "z", [0.6, 0.8, 0.0]),
        ("null target", "n", [0.6, 0.8, 0.0]),
    ]
    frame = spark.createDataFrame(rows, "name string, segment string, v array<float>")
    targets = {"a": [1.0, 2.0, 3.0], "b": [0.5, -1.0, 0.0], "n": None}
    pairs = frame.withColumn("t", F.array(*[F.lit(x).cast("float") for x in targets["a"]]))
    got = {
        r["name"]: (r["usable"], r["dot"], r["similarity"])
        for r in with_similarity(pairs, "v", "segment", targets, "similarity")
        .select(
            "name", usable_vector("v").alias("usable"), dot("v", "t").alias("dot"), "similarity"
        )
        .collect()
    }
    usable = {name for name, (ok, _, _) in got.items() if ok}
    assert usable == {"unit", "negative", "short", "no target", "null target"}
    assert got["unit"][1] == pytest.approx(0.6 + 1.6) and got["unit"][2] == pytest.approx(2.2)
    assert got["negative"][1] == pytest.approx(-1.0)
    assert got["negative"][2] == pytest.approx(-0.5)
    # Null where a vector is missing, of another length, or has no target.
    for name in ("short", "empty", "null"):
        assert got[name][1] is None and got[name][2] is None
    for name in ("no target", "null target"):
        assert got[name][2] is None and got[name][1] == pytest.approx(2.2)


def test_as_of_from_setting_or_latest_event_and_empty_events_is_input_error(spark):
    naive = datetime(2026, 2, 1, 12)
    cfg = load_config().profile
    assert resolve_as_of(None, cfg.model_copy(update={"as_of": naive})) == naive.replace(
        tzinfo=timezone.utc
    )
    events = spark.createDataFrame([("u", AS_OF, "view", None, "h")], EVENTS)
    assert resolve_as_of(events, cfg) == AS_OF
    with pytest.raises(InputError, match="events table is empty"):
        resolve_as_of(events.limit(0), cfg)


def test_holdout_below_one_names_the_option():
    cfg = load_config()
    assert holdout_count(None, cfg) == cfg.evaluate.holdout_last
    with pytest.raises(InputError, match=r"--holdout-last \(evaluate.holdout_last\).*got 0"):
        holdout_count(0, cfg)


def test_maintain_deletes_coarse_models_of_earlier_versions(tmp_path):
    models = tmp_path / "models"
    (models / "r1" / "coarse_bisecting_kmeans" / "leaf_to_cluster").mkdir(parents=True)
    (models / "r2" / "coarse_bisecting_kmeans").mkdir(parents=True)
    (models / "r2" / "keep.txt").write_text("not ours")
    assert remove_legacy_models(None, str(tmp_path)) == 2
    assert sorted(p.name for p in models.iterdir()) == ["r2"]
    assert [p.name for p in (models / "r2").iterdir()] == ["keep.txt"]
    assert remove_legacy_models(None, f"file://{tmp_path}") == 0
    assert remove_legacy_models(None, str(tmp_path / "no-store-yet")) == 0


def blobs(n_per, centers, noise, seed=0):
    rng = np.random.default_rng(seed)
    rows, labels = [], []
    for i, c in enumerate(centers):
        pts = c + noise * rng.standard_normal((n_per, len(c)))
        rows.append(pts / np.linalg.norm(pts, axis=1, keepdims=True))
        labels += [i] * n_per
    return np.vstack(rows), np.array(labels)


def test_fit_partitions_one_per_core_unless_a_partition_would_pass_the_bound(spark):
    frame = spark.range(800).repartition(8)
    cores = spark.sparkContext.defaultParallelism
    assert fit_partitions(frame, spark, 800, 1000).rdd.getNumPartitions() == min(8, cores)
    assert fit_partitions(frame, spark, 800, 200).rdd.getNumPartitions() == min(8, max(cores, 4))
    assert fit_partitions(frame, spark, 800, 10).rdd.getNumPartitions() == 8  # never more
    assert fit_partitions(frame, spark, 800, 10).count() == 800


def test_subgroups_recover_planted_groups_and_cap_path():
    from sklearn.metrics import adjusted_rand_score

    centers = np.eye(16)[:4] * 3
    x, truth = blobs(60, centers, 0.3)
    sub = load_config(overrides=["cluster.sub.target_size=60"]).cluster.sub
    assert adjusted_rand_score(truth, fit_subgroups(x, sub, 0)) > 0.95
    capped = sub.model_copy(update={"max_local_points": 40})  # sample 40 of 240, assign all
    labels = fit_subgroups(x, capped, 0)
    assert len(labels) == len(x) and adjusted_rand_score(truth, labels) > 0.9


@pytest.mark.slow  # over ~3 s on 2 cores
def test_a_cluster_too_big_for_one_worker_is_fitted_on_a_sample_in_spark(spark):
    """A coarse cluster above cluster.sub.max_local_points never reaches one worker
    whole: its sub-groups come from a sample and every member is assigned in Spark.
    With a cap above every cluster the same function groups each cluster whole."""
    from sklearn.metrics import adjusted_rand_score

    from usersegments.cluster.local import fine_segments

    x, truth = blobs(60, np.eye(16)[:4] * 3, 0.3)  # 4 planted groups of 60
    cluster = np.where(truth < 2, 1, 2)  # two coarse clusters of 120 users
    ids = [f"u{i:03d}" for i in range(len(x))]
    users = spark.createDataFrame(
        pd.DataFrame({"user_id": ids, "cluster_id": cluster, "features": list(x.astype(float))}),
        "user_id string, cluster_id int, features array<double>",
    )

    def grouped(cap: int) -> pd.DataFrame:
        sub = load_config(
            overrides=["cluster.sub.target_size=60", f"cluster.sub.max_local_points={cap}"]
        ).cluster.sub
        out = fine_segments(users, sub, min_size=20, seed=5).toPandas()
        return out.set_index("user_id").loc[ids]

    sampled, whole = grouped(40), grouped(1000)  # 40 of each 120 / all 120
    for out in (sampled, whole):
        assert len(out) == len(x)
        assert list(out["cluster_id"]) == list(cluster)
        assert adjusted_rand_score(truth, out["segment_id"]) > 0.95
        sizes = out.groupby(["cluster_id", "sub_id"]).size()
        for c in (1, 2):  # s00 is the largest of its cluster
            assert list(sizes.loc[c].sort_index()) == sorted(sizes.loc[c], reverse=True)
        assert out["distance"].between(0, 2).all()
    assert adjusted_rand_score(sampled["segment_id"], whole["segment_id"]) > 0.95


def test_subcluster_group_enforces_min_size_and_numbers_by_size():
    x, _ = blobs(30, np.eye(8)[:3] * 3, 0.2, seed=1)
    x = np.vstack([x, x[:5] + 0.01])  # a tiny fourth blob-ish tail
    pdf = pd.DataFrame(
        {
            "user_id": [f"u{i:03d}" for i in range(len(x))],
            "cluster_id": 7,
            "features": list(x.astype(np.float32)),
        }
    )
    sub = load_config(
        overrides=["cluster.sub.target_size=10", "cluster.sub.max_local_points=20"]
    ).cluster.sub
    out = subcluster_group(pdf, sub, min_size=25, seed=3)
    sizes = out.groupby("sub_id").size()
    assert len(out) == len(pdf) and set(out["user_id"]) == set(pdf["user_id"])
    assert sizes.min() >= 25
    assert list(sizes.sort_index()) == sorted(sizes, reverse=True)  # s00 is the largest
    assert (out["distance"] >= 0).all() and (out["distance"] <= 2).all()


def test_merge_small_and_merge_undersized():
    x, _ = blobs(10, np.eye(4)[:2] * 3, 0.1)
    labels = np.array([0] * 10 + [1] * 7 + [2] * 3)
    merged = merge_small(x, labels, 5)
    assert np.unique(merged, return_counts=True)[1].min() >= 5
    sizes = pd.DataFrame({"segment_id": ["a", "b", "c"], "size": [50, 3, 4]})
    cents = pd.DataFrame({"segment_id": ["a", "b", "c"], "centroid": [[1, 0], [0.9, 0.1], [0, 1]]})
    assert merge_undersized(sizes, cents, 5) == {"b": "a", "c": "a"}


def test_planted_areas_are_recovered(planted):
    store, cfg = planted.store, planted.cfg
    m = metrics_of(store, planted.run_id, "cluster")
    assert m["ari_cluster_vs_area"] >= 0.85, m
    assert m["nmi_segment_vs_substyle"] >= 0.7, m
    assert m["k"] in cfg.cluster.k_candidates
    assert all(f"silhouette_k{k}" in m for k in cfg.cluster.k_candidates)


def test_every_profiled_user_once_and_no_small_segment(planted):
    store, cfg = planted.store, planted.cfg
    profiles = store.read("user_profiles").filter(F.col("n_events") >= cfg.profile.min_events)
    segs = store.read("user_segments")
    assert segs.count() == profiles.count() == segs.select("user_id").distinct().count()
    assert segs.join(profiles, "user_id", "left_anti").count() == 0
    segments = store.read("segments")
    assert segments.agg(F.min("size")).first()[0] >= cfg.privacy.min_segment_size
    assert segments.agg(F.sum("size")).first()[0] == segs.count()
    ids = [r["segment_id"] for r in segments.collect()]
    assert all(len(s) == 7 and s[0] == "c" and s[3:5] == ".s" for s in ids)
    per_segment = segs.groupBy("segment_id").count()
    mismatched = per_segment.join(segments, "segment_id").filter("count != size").count()
    assert mismatched == 0


def test_every_user_sits_at_the_segment_an_update_would_keep(planted):
    store = planted.store
    segments = store.read("segments").toPandas()
    users = (
        store.read("user_profiles")
        .join(store.read("user_segments").select("user_id", "segment_id"), "user_id")
        .toPandas()
    )
    nearest = nearest_segment_frame(users[["user_id", "embedding"]], segments)
    agree = (nearest["segment_id"].to_numpy() == users["segment_id"].to_numpy()).mean()
    # Only the size floor's merges may leave a user off their nearest segment.
    assert agree >= 0.98, agree


def test_profiles_hold_sums_for_updates(planted):
    row = planted.store.read("user_profiles").first()
    vec = np.asarray(row["embedding"])
    assert abs(np.linalg.norm(vec) - 1) < 1e-5
    assert np.allclose(
        np.asarray(row["weighted_sum"]) / np.linalg.norm(row["weighted_sum"]), vec, atol=1e-5
    )
    assert row["weight_total"] > 0 and row["as_of"] is not None


@pytest.mark.slow
def test_refining_moves_users_placed_on_the_wrong_side_to_their_nearest_centroid(spark):
    from pyspark.ml.functions import array_to_vector

    from usersegments.cluster.coarse import CoarseResult, refine

    rng = np.random.default_rng(7)
    directions = np.eye(3, 8)
    truth = np.repeat(np.arange(3), 40)
    points = directions[truth] + rng.normal(scale=0.15, size=(len(truth), 8))
    users = spark.createDataFrame(
        [(f"u{i}", [float(x) for x in p]) for i, p in enumerate(points)],
        "user_id string, embedding array<double>",
    ).select("user_id", array_to_vector("embedding").alias("features"))
    # A start whose first two centres lean towards the next direction: some users
    # begin in the wrong cluster.
    start = directions + 0.95 * np.roll(directions, 1, axis=1)
    start[2] = directions[2]
    start /= np.linalg.norm(start, axis=1, keepdims=True)
    result = CoarseResult(None, np.arange(3), 3, {}, centroids=start)
    before = (
        result.assign(users).toPandas().sort_values("user_id", key=lambda s: s.str[1:].astype(int))
    )
    assert (before["cluster_id"].to_numpy() != truth).sum() > 0
    refine(result, users, iterations=10, tolerance=1e-6)
    after = (
        result.assign(users).toPandas().sort_values("user_id", key=lambda s: s.str[1:].astype(int))
    )
    assert (after["cluster_id"].to_numpy() == truth).all()
    assert 1 <= result.refine_passes <= 10
    assert np.allclose(np.linalg.norm(result.centroids, axis=1), 1.0)


@pytest.mark.slow  # over ~3 s on 2 cores
@pytest.mark.parametrize("refine_iterations", [None, 0], ids=["refined", "no-refining"])
def test_the_coarse_fit_keeps_its_most_cohesive_restart(spark, refine_iterations):
    """Every restart's cohesion is the users' mean cosine similarity to their cluster's
    centroid, the chosen restart is the most cohesive, and refining it on all users does
    not lower its cohesion. Without refining passes the restarts are still measured and
    compared (their cohesion then comes from the bisecting fit's own centres)."""
    from pyspark.ml.functions import array_to_vector

    from usersegments.cluster.coarse import fit_coarse

    rng = np.random.default_rng(11)
    directions = np.eye(5, 8) + 0.5 * rng.normal(size=(5, 8))
    truth = rng.choice(5, size=300, p=[0.4, 0.25, 0.15, 0.1, 0.1])
    points = directions[truth] + rng.normal(scale=0.6, size=(len(truth), 8))
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    population = spark.createDataFrame(
        [(f"u{i}", [float(x) for x in p], True) for i, p in enumerate(points)],
        "user_id string, embedding array<double>, member boolean",
    ).select("user_id", array_to_vector("embedding").alias("features"), "member")
    overrides = ["cluster.k=5", "cluster.restarts=3"]
    if refine_iterations is not None:
        overrides.append(f"cluster.refine_iterations={refine_iterations}")
    result = fit_coarse(population, load_config(overrides=overrides), len(points))
    cohesion = result.restart_cohesion
    assert len(cohesion) == 3 and result.restart_chosen == int(np.argmax(cohesion))
    assert len(set(np.round(cohesion, 9))) > 1  # the seeds did start differently
    if refine_iterations == 0:
        # No passes: users stay in their bisecting leaves' clusters.
        assert result.refine_passes == 0 and result.centroids is None
        assigned = result.assign(population).select("user_id", "cluster_id").toPandas()
        labels = assigned.set_index("user_id").loc[[f"u{i}" for i in range(len(points))]]
        labels = labels["cluster_id"].to_numpy()
    else:
        labels = np.argmax(points @ result.centroids.T, axis=1)
    means = np.vstack([points[labels == c].sum(axis=0) for c in range(5)])
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    final = float(np.mean(np.sum(points * means[labels], axis=1)))
    assert final >= max(cohesion) - 1e-9


@pytest.mark.slow  # over ~3 s on 2 cores
def test_truth_scores_from_spark_contingency_tables_match_scikit_learn(spark, tmp_path):
    """ARI/NMI against a truth file come from (label, cluster) counts aggregated in
    Spark, equal to scikit-learn's on the per-user labels; a drift before as_of scores
    the user on the new area."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    from usersegments.evaluate.truth import (
        adjusted_rand,
        contingency,
        normalized_mutual_info,
        score_against_truth,
    )

    rng = np.random.default_rng(4)
    n = 300
    area = rng.choice(["a", "b", "c"], n)
    cluster = np.where(rng.random(n) < 0.8, pd.Series(area).map({"a": 0, "b": 1, "c": 2}), 3)
    style = rng.choice(["x", "y"], n)
    segment = [f"c{c:02d}.s{int(s == 'x'):02d}" for c, s in zip(cluster, style, strict=True)]
    drifted = np.arange(n) < 30
    truth = pd.DataFrame(
        {
            "user_id": [f"u{i}" for i in range(n)],
            "area": area,
            "sub_style": style,
            "new_area": np.where(drifted, "c", None),
            "new_sub_style": np.where(drifted, "y", None),
            "drift_date": pd.to_datetime(np.where(drifted, "2024-01-05", None), utc=True),
        }
    )
    path = tmp_path / "truth.parquet"
    truth.to_parquet(path)
    segs = spark.createDataFrame(
        pd.DataFrame({"user_id": truth["user_id"], "cluster_id": cluster, "segment_id": segment})
    )
    before, after = (
        score_against_truth(spark, segs, str(path), datetime(2024, 1, d, tzinfo=timezone.utc))
        for d in (1, 9)
    )
    assert before["truth_users"] == after["truth_users"] == n
    assert before["ari_cluster_vs_area"] == pytest.approx(adjusted_rand_score(area, cluster))
    assert before["nmi_cluster_vs_area"] == pytest.approx(
        normalized_mutual_info_score(area, cluster)
    )
    labels = pd.Series(area) + "/" + style
    assert before["nmi_segment_vs_substyle"] == pytest.approx(
        normalized_mutual_info_score(labels, segment)
    )
    assert before["ari_segment_vs_substyle"] == pytest.approx(adjusted_rand_score(labels, segment))
    moved = np.where(drifted, "c", area)
    assert after["ari_cluster_vs_area"] == pytest.approx(adjusted_rand_score(moved, cluster))
    # No user drifted: pandas writes the all-null columns without a text type.
    still = truth.assign(new_area=None, new_sub_style=None, drift_date=pd.NaT)
    still.to_parquet(path)
    unmoved = score_against_truth(spark, segs, str(path), datetime(2024, 1, 9, tzinfo=timezone.utc))
    assert unmoved == pytest.approx(before)
    # Degenerate tables follow scikit-learn too.
    one = np.array([[5.0]])
    assert adjusted_rand(one) == adjusted_rand_score([0] * 5, [0] * 5) == 1.0
    assert normalized_mutual_info(one) == 1.0
    split = np.array([[3.0, 2.0]])
    assert normalized_mutual_info(split) == normalized_mutual_info_score([0] * 5, [0, 0, 0, 1, 1])
    assert contingency(segs, "cluster_id", "segment_id").sum() == n


def two_clusters(cfg, fit_few_event_users: bool):
    """``cfg`` with ``cluster.k`` 2, ``cluster.fit_few_event_users`` as given and a
    segment size floor of 5."""
    cluster = cfg.cluster.model_copy(update={"k": 2, "fit_few_event_users": fit_few_event_users})
    privacy = cfg.privacy.model_copy(update={"min_segment_size": 5})
    return cfg.model_copy(update={"cluster": cluster, "privacy": privacy})


def unit_profiles(spark, users):
    """``user_profiles``-like rows of (user_id, vector, n_events): the vectors made unit,
    one as_of."""
    as_of = datetime(2026, 1, 1, tzinfo=timezone.utc)
    return spark.createDataFrame(
        [(u, [float(x) for x in v / np.linalg.norm(v)], n, as_of) for u, v, n in users],
        "user_id string, embedding array<float>, n_events long, as_of timestamp",
    )


@pytest.mark.slow  # over ~3 s on 2 cores
@pytest.mark.parametrize("few_event_users", [True, False])
def test_users_of_too_few_events_weigh_in_the_coarse_fit_but_get_no_segment(
    spark, cfg, few_event_users
):
    """Two planted groups of members; users of one event sit beside group 0, off its
    axis. With ``cluster.fit_few_event_users`` they join the fit, each as one user like
    a member, and are counted, never placed; the centres end at the members' means
    (passes over the members alone), so they keep no pull of theirs."""
    from usersegments.cluster.stage import cluster_users

    cfg = two_clusters(cfg, few_event_users)
    rng = np.random.default_rng(3)
    axes = np.eye(3, 6)
    members = [
        (f"m{g}_{i}", axes[g] + rng.normal(scale=0.02, size=6), 5)
        for g in (0, 1)
        for i in range(20)
    ]
    beside = axes[0] + 0.6 * axes[2]
    few = [(f"f{i}", beside, 1) for i in range(30)]
    out = cluster_users(spark, unit_profiles(spark, members + few), cfg, "r1")
    try:
        placed = {r["user_id"] for r in out.user_segments.select("user_id").collect()}
        assert placed == {u for u, _, _ in members}
        assert out.total == 40 and out.fit_only == (30 if few_event_users else 0)
        centre = out.coarse.centroids[np.argmax(out.coarse.centroids[:, 0])]
        group0 = np.array([v / np.linalg.norm(v) for u, v, _ in members if u.startswith("m0")])
        expected = group0.sum(axis=0) / np.linalg.norm(group0.sum(axis=0))
        assert centre @ expected == pytest.approx(1.0, abs=1e-5)
        assert abs(centre[2]) < 0.05  # the one-event users' axis
        assert (out.coarse.member_refine_passes >= 1) == few_event_users
    finally:
        out.release()


@pytest.mark.slow  # over ~3 s on 2 cores
def test_a_coarse_cluster_of_few_event_users_only_gets_no_segment_and_places_nobody(spark, cfg):
    """Users of one event outweigh the members on an axis of their own: the coarse fit
    gives them a cluster, which holds no member. It gets no segment; every member is
    placed; a later user near that axis goes to the nearest segment that exists."""
    from usersegments.cluster.stage import cluster_users

    cfg = two_clusters(cfg, fit_few_event_users=True)
    rng = np.random.default_rng(5)
    axes = np.eye(2, 6)
    members = [(f"m{i}", axes[0] + rng.normal(scale=0.05, size=6), 5) for i in range(30)]
    few = [(f"f{i}", axes[1] + rng.normal(scale=0.05, size=6), 1) for i in range(200)]
    out = cluster_users(spark, unit_profiles(spark, members + few), cfg, "r1")
    try:
        # The fit made a cluster of the one-event users (its centre on their axis) ...
        assert out.coarse.k == 2 and out.fit_only == 200
        assert np.max(out.coarse.centroids[:, 1]) > 0.9
        # ... which places nobody and has no segment.
        rows = out.user_segments.select("user_id", "cluster_id", "segment_id").toPandas()
        assert set(rows["user_id"]) == {u for u, _, _ in members}
        segments = out.segments.toPandas()
        assert segments["cluster_id"].nunique() == 1
        assert set(segments["segment_id"]) == set(rows["segment_id"])
        later = pd.DataFrame({"user_id": ["new"], "embedding": [axes[1].astype(np.float32)]})
        placed = nearest_segment_frame(later, segments)
        assert placed["segment_id"].iloc[0] in set(segments["segment_id"])
    finally:
        out.release()
