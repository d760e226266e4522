"""Long and old logs with the defaults: decay anchored at each user's latest event (no
zero vectors), no zero vector reaching clustering, every user segmented or counted with
a reason, and ``auto`` half-lives derived from the log and recorded."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F

from tests.conftest import make_config, set_args
from tests.helpers import metrics_of
from usersegments import cli
from usersegments.cluster.features import MEMBER, clustering_population, skipped_users
from usersegments.config import load_config
from usersegments.dynamics.fold import fold_profiles
from usersegments.halflife import derive_profile_half_life, derive_recommend_half_life
from usersegments.profile import profiles_from_sums, usable_vector, weighted_sums
from usersegments.store import TableStore
from usersegments.testing.synthetic import (
    GeneratedData,
    GeneratorSettings,
    generate,
    generated_times,
    split_at,
    write,
)

AS_OF = datetime(2018, 6, 1, tzinfo=timezone.utc)
EVENTS = (
    "user_id string, event_time timestamp, event_type string, value double, "
    "text_hash string, run_id string"
)
YEAR = timedelta(days=365)


def vectors(spark, rows):
    rows = [(h, [float(x) for x in v]) for h, v in rows]
    return spark.createDataFrame(rows, "text_hash string, embedding array<float>")


def unit(rows) -> np.ndarray:
    a = np.vstack([np.asarray(r, dtype=float) for r in rows])
    return a / np.linalg.norm(a, axis=1, keepdims=True)


# ---------------------------------------------------------------------------
# Unit: the anchor, the fold, the guard, the derived half-lives


@pytest.mark.slow  # over ~3 s on 2 cores
def test_a_user_idle_for_20_years_keeps_a_full_strength_vector(spark):
    # 20 years at a 30-day half-life is ~243 half-lives: decayed to the log's end, the
    # float32 sum was all zeros. Decayed from the user's own latest event it is not.
    cfg = load_config(overrides=["profile.half_life_days=30"]).profile
    events = spark.createDataFrame(
        [
            ("idle", AS_OF - 20 * YEAR, "view", None, "a", "r1"),
            ("idle", AS_OF - 20 * YEAR - timedelta(days=30), "purchase", None, "b", "r1"),
            ("active", AS_OF, "view", None, "a", "r1"),
        ],
        EVENTS,
    )
    vecs = vectors(spark, [("a", [1.0, 0.0]), ("b", [0.0, 1.0])])
    rows = {
        r["user_id"]: r
        for r in profiles_from_sums(weighted_sums(events, vecs, cfg, AS_OF), AS_OF, "r").collect()
    }
    idle = rows["idle"]
    # The latest event weighs 1, the purchase 3 at one half-life earlier: 1.5.
    assert idle["weight_total"] == pytest.approx(1.0 + 1.5, rel=1e-9)
    assert np.allclose(idle["embedding"], unit([[1.0, 1.5]])[0], atol=1e-6)
    assert np.linalg.norm(idle["weighted_sum"]) > 1.0


@pytest.mark.slow
def test_fold_with_anchors_equals_a_fresh_profile_including_late_old_events(spark):
    h = 10.0
    cfg = load_config(overrides=[f"profile.half_life_days={h}"]).profile
    t0 = AS_OF - timedelta(days=100)
    first = [
        ("steady", t0 - timedelta(days=40), "view", None, "a", "r1"),
        ("steady", t0 - timedelta(days=5), "purchase", None, "b", "r1"),
        ("steady", t0, "view", None, "c", "r1"),
        ("idle", t0 - 12 * YEAR, "review", 4.0, "a", "r1"),
        ("idle", t0 - 12 * YEAR + timedelta(days=3), "view", None, "c", "r1"),
        ("late", t0 - timedelta(days=2), "view", None, "b", "r1"),
    ]
    second = [
        ("steady", AS_OF, "view", None, "c", "r2"),
        ("steady", t0 - timedelta(days=60), "purchase", None, "a", "r2"),  # late, older
        ("idle", AS_OF - timedelta(days=1), "click", None, "b", "r2"),  # back after 12 years
        ("late", t0 - timedelta(days=30), "purchase", None, "c", "r2"),  # only late events
        ("late", t0 - 3 * YEAR, "view", None, "a", "r2"),
        ("new", AS_OF - timedelta(days=7), "like", None, "a", "r2"),
    ]
    vecs = vectors(spark, [("a", [1.0, 0.0, 0.0]), ("b", [0.0, 1.0, 0.0]), ("c", [0.2, 0.3, 1.0])])
    old = profiles_from_sums(
        weighted_sums(spark.createDataFrame(first, EVENTS), vecs, cfg, t0), t0, "r1"
    )
    pending = spark.createDataFrame(second, EVENTS)
    fresh = weighted_sums(pending, vecs, cfg, AS_OF)
    folded = fold_profiles(old, fresh, h, AS_OF, "r2").toPandas().set_index("user_id")
    everything = spark.createDataFrame(first + second, EVENTS)
    batch = (
        profiles_from_sums(weighted_sums(everything, vecs, cfg, AS_OF), AS_OF, "b")
        .toPandas()
        .set_index("user_id")
        .loc[folded.index]
    )
    assert sorted(folded.index) == ["idle", "late", "new", "steady"]
    assert np.allclose(unit(folded["weighted_sum"]), unit(batch["weighted_sum"]), atol=1e-5)
    assert np.allclose(np.vstack(folded["embedding"]), np.vstack(batch["embedding"]), atol=1e-5)
    assert np.allclose(folded["weight_total"], batch["weight_total"], rtol=1e-6)
    assert (folded["n_events"] == batch["n_events"]).all()
    assert (folded["last_event_time"] == batch["last_event_time"]).all()
    assert (folded["first_event_time"] == batch["first_event_time"]).all()
    # weight_total is the weight at the user's own latest event: at least that event's.
    assert folded.loc["late", "weight_total"] >= 1.0
    type_weight = {"view": 1.0, "purchase": 3.0}
    steady = [(t, e) for u, t, e, *_ in first + second if u == "steady"]
    expected = sum(type_weight[e] * 0.5 ** ((AS_OF - t).days / h) for t, e in steady)
    assert folded.loc["steady", "weight_total"] == pytest.approx(expected, rel=1e-6)


@pytest.mark.slow
def test_a_user_whose_events_all_weigh_zero_is_kept_out_of_clustering(spark):
    cfg = load_config(overrides=["profile.half_life_days=30", "profile.event_weights.view=0"])
    events = spark.createDataFrame(
        [("zero", AS_OF - timedelta(days=d), "view", None, "a", "r1") for d in range(4)]
        + [("ok", AS_OF - timedelta(days=d), "click", None, "a", "r1") for d in range(4)]
        + [("few", AS_OF, "click", None, "a", "r1")],
        EVENTS,
    )
    vecs = vectors(spark, [("a", [1.0, 0.0])])
    profiles = profiles_from_sums(weighted_sums(events, vecs, cfg.profile, AS_OF), AS_OF, "r")
    zero = profiles.filter("user_id = 'zero'").first()
    assert zero["weight_total"] == 0.0 and not np.any(np.asarray(zero["weighted_sum"]))
    flags = {
        r["user_id"]: r["ok"]
        for r in profiles.select("user_id", usable_vector("embedding").alias("ok")).collect()
    }
    assert flags == {"zero": False, "ok": True, "few": True}
    population = clustering_population(profiles, 3, few_event_users=True).collect()
    assert {r["user_id"]: r[MEMBER] for r in population} == {"ok": True, "few": False}
    kept = {r["user_id"] for r in clustering_population(profiles, 3, False).collect()}
    assert kept == {"ok"}
    assert skipped_users(profiles, 3) == {"below_min_events": 1, "zero_vector": 1}


def test_usable_vector_rejects_nan_and_infinity(spark):
    frame = spark.createDataFrame(
        [("nan", [float("nan"), 1.0]), ("inf", [float("inf"), 0.0]), ("ok", [0.6, 0.8])],
        "user_id string, embedding array<float>",
    )
    flags = {
        r["user_id"]: r["ok"]
        for r in frame.select("user_id", usable_vector("embedding").alias("ok")).collect()
    }
    assert flags == {"nan": False, "inf": False, "ok": True}


@pytest.mark.slow
def test_auto_half_lives_follow_the_log(spark):
    day = timedelta(days=1)
    rows = []
    # Active spans of 10, 20 and 30 days; one user's events share one instant (not
    # measured); one user has too few events.
    for user, span in (("a", 10), ("b", 20), ("c", 30)):
        rows += [(user, AS_OF - span * day * k / 2) for k in range(3)]
    rows += [("bulk", AS_OF - 400 * day)] * 3 + [("few", AS_OF - 90 * day)]
    events = spark.createDataFrame(rows, "user_id string, event_time timestamp")
    derived = derive_profile_half_life(events, min_events=3)
    assert derived.auto
    assert derived.days == pytest.approx(20.0)
    assert derived.basis["users_measured"] == 3
    assert derived.basis["users_single_instant"] == 1
    recommend = derive_recommend_half_life(events)
    ages = sorted((AS_OF - t).total_seconds() / 86400 for _, t in rows)
    assert recommend.days == pytest.approx(ages[(len(ages) - 1) // 2])
    # A log at one instant: any half-life gives the same weights; a positive one is kept.
    still = spark.createDataFrame([("a", AS_OF)] * 4, "user_id string, event_time timestamp")
    assert derive_profile_half_life(still, 3).days > 0
    assert derive_recommend_half_life(still).days > 0


# ---------------------------------------------------------------------------
# End to end: `usersegments run` with the defaults on long and old logs


def long_data(settings: GeneratorSettings, idle_share: float = 0.0) -> GeneratedData:
    """Generated events with the times ``settings`` gives, as ISO-8601 UTC; with
    ``idle_share``, that share of users has every event moved 10 years back."""
    data = generate(settings)
    events = data.events
    times = generated_times(events)
    if idle_share:
        users = sorted(events["user_id"].unique())
        idle = set(users[: int(len(users) * idle_share)])
        moved = events["user_id"].isin(idle)
        times = times.where(~moved, times - pd.Timedelta(days=3653))
    data.events = events.assign(event_time=times.dt.strftime("%Y-%m-%dT%H:%M:%SZ"))
    return data


def long_log(tmp_path, name: str, settings: GeneratorSettings) -> dict[str, str]:
    """``long_data`` written under ``tmp_path / name``; the paths."""
    return write(long_data(settings), tmp_path / name)


CLEAN = {"bad_row_share": 0.0, "duplicate_share": 0.0, "malformed_csv_lines": 0}


def run_defaults(spark, tmp_path, paths):
    """``usersegments run`` with the defaults (and the test session's settings): the store
    and the run's id."""
    root = tmp_path / "store"
    code = cli.main(
        [
            "run",
            "--output",
            str(root),
            *set_args(),
            "--events",
            paths["events_parquet"],
            "--items",
            paths["items"],
        ]
    )
    assert code == 0
    store = TableStore.from_config(spark, make_config(root))
    run_id = store.read("runs").filter("command = 'run'").first()["run_id"]
    return store, run_id


def check_everyone_accounted_for(store, run_id):
    """No zero vector in user_profiles; every user with events is in user_segments or
    counted with a reason; the half-lives were derived and recorded. The profile figures."""
    profiles = store.read("user_profiles").select("embedding").toPandas()
    norms = np.linalg.norm(np.vstack(profiles["embedding"]).astype(float), axis=1)
    assert np.allclose(norms, 1.0, atol=1e-4), norms.min()
    profile = metrics_of(store, run_id, "profile")
    cluster = metrics_of(store, run_id, "cluster")
    recommend = metrics_of(store, run_id, "recommend")
    users = store.read("events").select("user_id").distinct().count()
    segmented = store.read("user_segments").count()
    counted = (
        profile["users_unprofiled.no_vector"]
        + cluster["users_skipped.below_min_events"]
        + cluster["users_skipped.zero_vector"]
    )
    assert segmented == cluster["users_clustered"]
    assert segmented + counted == users
    assert profile["users_unprofiled.zero_vector"] == cluster["users_skipped.zero_vector"] == 0
    for stage in (profile, recommend):
        assert stage["half_life_auto"] == 1 and stage["half_life_days"] > 0
    assert profile["half_life_basis.users_measured"] > 0
    assert profile["half_life_days"] == pytest.approx(
        profile["half_life_basis.median_active_span_days"]
    )
    return profile, recommend


@pytest.mark.slow
def test_a_log_from_1995_to_2015_runs_with_the_defaults(spark, tmp_path, capsys):
    # Events before 2000 (no default cut-off refuses them) over 20 years.
    settings = GeneratorSettings(
        users=120,
        seed=4,
        days=20 * 365,
        end=datetime(2015, 6, 30, tzinfo=timezone.utc),
        items_per_style=6,
        drift_share=0.0,
        **CLEAN,
    )
    store, run_id = run_defaults(spark, tmp_path, long_log(tmp_path, "20y", settings))
    profile, recommend = check_everyone_accounted_for(store, run_id)
    assert 5 * 365 < profile["half_life_days"] < 20 * 365  # users span most of 20 years
    assert 5 * 365 < recommend["half_life_days"] < 15 * 365  # events spread evenly
    first = store.read("events").agg(F.min("event_time")).first()[0]
    assert first.year < 2000
    out = capsys.readouterr().out
    assert "profile.half_life_days" in out and "recommend.half_life_days" in out


@pytest.mark.slow
def test_a_log_where_half_the_users_left_10_years_ago_runs_with_the_defaults(spark, tmp_path):
    # 20-day windows: ~18-day spans, so the idle half is ~200 half-lives before the end,
    # where a float32 sum decayed to the log's end is all zeros.
    settings = GeneratorSettings(
        users=120,
        seed=5,
        days=20,
        end=datetime(2024, 3, 1, tzinfo=timezone.utc),
        items_per_style=6,
        drift_share=0.0,
        **CLEAN,
    )
    data = long_data(settings, idle_share=0.5)
    cut = settings.end - timedelta(days=3)
    before, after = split_at(data, cut)
    store, run_id = run_defaults(spark, tmp_path, write(before, tmp_path / "idle"))
    profile, _ = check_everyone_accounted_for(store, run_id)
    assert 10 < profile["half_life_days"] < 20
    assert 10 * 365 / profile["half_life_days"] > 150
    last = store.read("user_profiles").agg(F.min("last_event_time")).first()[0]
    assert last.year <= 2014  # the idle users are profiled (and clustered) too
    assert math.isfinite(metrics_of(store, run_id, "cluster")["silhouette_cosine"])

    # The update folds the last 3 days with the full run's half-life, not one derived
    # from its own 3 days of events.
    later = write(after, tmp_path / "later")
    code = cli.main(
        [
            "update",
            "--output",
            str(tmp_path / "store"),
            *set_args(),
            "--events",
            later["events_parquet"],
            "--items",
            later["items"],
        ]
    )
    assert code == 0
    update_id = store.read("runs").filter("command = 'update'").first()["run_id"]
    update = metrics_of(store, update_id, "update")
    assert update["events_folded"] > 0
    assert update["profile_half_life_days"] == profile["half_life_days"]
    embeddings = store.read("user_profiles").select("embedding").toPandas()["embedding"]
    norms = np.linalg.norm(np.vstack(embeddings).astype(float), axis=1)
    assert np.allclose(norms, 1.0, atol=1e-4)
