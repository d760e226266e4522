"""``usersegments tune``: the search space, the scores, the trials table and the tuned config."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pyspark.sql import functions as F

from tests.conftest import make_config, set_args
from usersegments import cli
from usersegments.config import Config, load_config, with_settings
from usersegments.errors import ConfigError, InputError
from usersegments.testing.synthetic import GeneratorSettings, generate, write
from usersegments.tune import (
    HIT_RATE_LIFT,
    INTEREST_FIT,
    SEARCHED,
    Trial,
    choose_best,
    choose_objective,
    grid_size,
    interest_fit,
    repeat_share,
    trial_settings,
)
from usersegments.tune.stage import tune_holdout_count

# A small search: 2 x 3 x 3 x 2 x 2 x 2 combinations, 3 of them tried, 2 at a time.
TUNE_OVERRIDES = (
    "privacy.min_segment_size=10",
    "tune.trials=3",
    "tune.parallel=2",
    "tune.k=[4,8]",
    "tune.sub_target_size=[25,40]",
)


# ---------------------------------------------------------------------------
# The search space (no Spark)


def test_random_search_is_deterministic_distinct_and_within_the_candidates():
    cfg = load_config(overrides=["tune.trials=5", "tune.k=[4,8]", "tune.seed=3"])
    first, again = trial_settings(cfg.tune), trial_settings(cfg.tune)
    assert first == again and len(first) == 5
    searched = [json.dumps({k: s[k] for k in SEARCHED.values()}, sort_keys=True) for s in first]
    assert len(set(searched)) == 5
    for settings in first:
        assert settings["cluster.k"] in (4, 8)
        assert settings["profile.half_life_days"] in cfg.tune.profile_half_life_days
        assert settings["profile.event_weights"] in cfg.tune.event_weights
        # target_size and distance_threshold are exclusive: every trial unsets the other.
        assert settings["cluster.sub.distance_threshold"] is None
        with_settings(cfg, settings, "test")  # every trial's config is valid
    other = load_config(overrides=["tune.trials=5", "tune.k=[4,8]", "tune.seed=4"])
    assert trial_settings(other.tune) != first


def test_grid_search_tries_every_combination_once():
    cfg = load_config(
        overrides=[
            "tune.search=grid",
            "tune.k=[4,8]",
            "tune.profile_half_life_days=[7]",
            "tune.recommend_half_life_days=[7,14]",
            "tune.event_weights=[{}]",
            "tune.value_transform=[none]",
            "tune.sub_target_size=[25,40,60]",
        ]
    )
    trials = trial_settings(cfg.tune)
    assert grid_size(cfg.tune) == len(trials) == 12
    keys = {
        (t["cluster.k"], t["recommend.half_life_days"], t["cluster.sub.target_size"])
        for t in trials
    }
    assert len(keys) == 12
    # A random search asking for more trials than there are combinations tries them all.
    many = cfg.model_copy(
        update={"tune": cfg.tune.model_copy(update={"search": "random", "trials": 50})}
    )
    assert len(trial_settings(many.tune)) == 12


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("tune.k=[]", "tune.k"),
        ("tune.profile_half_life_days=[]", "tune.profile_half_life_days"),
        ("tune.recommend_half_life_days=[14,0]", "tune.recommend_half_life_days"),
        ("tune.event_weights=[]", "tune.event_weights"),
        ("tune.event_weights=[{view: -1}]", "tune.event_weights"),
        ("tune.value_transform=[cube]", "tune.value_transform"),
        ("tune.sub_target_size=[1]", "tune.sub_target_size"),
        ("tune.k=[1]", "tune.k"),
        ("tune.trials=0", "tune.trials"),
        ("tune.parallel=0", "tune.parallel"),
        ("tune.objective=best", "tune.objective"),
    ],
)
def test_bad_tune_settings_are_refused_naming_the_setting(override, named):
    with pytest.raises(ConfigError) as error:
        load_config(overrides=[override])
    assert f"'{named}" in str(error.value) and override in str(error.value)


def test_empty_candidate_list_says_so(capsys):
    assert cli.main(["config", "--set", "tune.sub_target_size=[]"]) == 2
    err = capsys.readouterr().err
    assert "tune.sub_target_size must list at least one candidate" in err


def test_holdout_option_below_one_is_refused():
    cfg = Config()
    assert tune_holdout_count(None, cfg) == cfg.tune.holdout_last
    assert tune_holdout_count(3, cfg) == 3
    with pytest.raises(InputError, match=r"tune\.holdout_last"):
        tune_holdout_count(0, cfg)


def test_with_settings_replaces_a_map_whole():
    cfg = with_settings(Config(), {"profile.event_weights": {"view": 2.0}}, "test")
    assert cfg.profile.event_weights == {"view": 2.0}
    with pytest.raises(ConfigError, match=r"cluster\.k.*\[from tune trial 7\]"):
        with_settings(Config(), {"cluster.k": 1}, "tune trial 7")


def test_the_best_trial_is_the_highest_score_first_among_equals():
    trials = [
        Trial(1, {}, status="succeeded", scores={"score": 0.2}),
        Trial(2, {}, status="failed", error="too few users"),
        Trial(3, {}, status="succeeded", scores={"score": 0.4}),
        Trial(4, {}, status="succeeded", scores={"score": 0.4}),
        Trial(5, {}, status="succeeded", scores={"score": None}),
    ]
    assert choose_best(trials).trial_id == 3
    assert [t.trial_id for t in trials if t.chosen] == [3]
    with pytest.raises(InputError, match="trial 2: too few users"):
        choose_best([Trial(1, {}, status="succeeded"), Trial(2, {}, "failed", "too few users")])


# ---------------------------------------------------------------------------
# Scores on small frames


def _vectors_near(directions: np.ndarray, which: list[int], rng, noise: float) -> list[list[float]]:
    raw = directions[which] + noise * rng.standard_normal((len(which), directions.shape[1]))
    return (raw / np.linalg.norm(raw, axis=1, keepdims=True)).astype(float).tolist()


@pytest.mark.slow
def test_interest_fit_is_higher_for_the_planted_grouping_than_a_random_one(spark):
    rng = np.random.default_rng(0)
    dims, per_group, groups = 8, 12, 3
    directions = np.eye(dims)[:groups]
    planted = [g for g in range(groups) for _ in range(per_group)]
    users = [f"u{i:03d}" for i in range(len(planted))]
    profiles = spark.createDataFrame(
        list(zip(users, _vectors_near(directions, planted, rng, 0.3), strict=True)),
        "user_id string, embedding array<float>",
    )
    later_rows = [
        (user, vector)
        for user, group in zip(users, planted, strict=True)
        for vector in _vectors_near(directions, [group, group], rng, 0.3)
    ]
    later = spark.createDataFrame(later_rows, "user_id string, embedding array<float>")
    shuffled = rng.permutation(planted)

    def grouping(labels):
        rows = [(u, f"s{g}") for u, g in zip(users, labels, strict=True)]
        return spark.createDataFrame(rows, "user_id string, segment_id string")

    truth = interest_fit(grouping(planted), profiles, later)
    random = interest_fit(grouping(shuffled.tolist()), profiles, later)
    assert truth["users"] == random["users"] == len(users)
    assert truth["interest_fit"] > 0.3, truth
    assert truth["interest_fit"] > random["interest_fit"] + 0.25, (truth, random)
    # One segment of everyone says nothing more than the global mean.
    everyone = interest_fit(grouping([0] * len(users)), profiles, later)
    assert abs(everyone["interest_fit"]) < 1e-5


@pytest.mark.slow  # over ~3 s on 2 cores
def test_repeat_share_picks_the_objective(spark):
    train = spark.createDataFrame(
        [("a", "i1"), ("b", "i2"), ("c", None)], "user_id string, item_id string"
    )
    repeating = spark.createDataFrame([("a", "i2"), ("b", "i1")], "user_id string, item_id string")
    unique = spark.createDataFrame(
        [("a", "p9"), ("b", None), ("c", "i1")], "user_id string, item_id string"
    )
    assert repeat_share(train, repeating) == 1.0
    assert repeat_share(train, unique) == pytest.approx(1 / 3)
    assert choose_objective("auto", 1.0, 0.5) == HIT_RATE_LIFT
    assert choose_objective("auto", 1 / 3, 0.5) == INTEREST_FIT
    assert choose_objective(INTEREST_FIT, 1.0, 0.5) == INTEREST_FIT


# ---------------------------------------------------------------------------
# End to end: `usersegments tune` on planted data, then `run --config tuned.yaml`


@pytest.fixture(scope="module")
def tuned(spark, tmp_path_factory):
    """400 generated users (no drift) tuned from raw files in one command."""
    root = tmp_path_factory.mktemp("tune")
    data = generate(GeneratorSettings(users=400, seed=8, drift_share=0.0))
    paths = write(data, root / "input")
    store_root = root / "store"
    code = cli.main(
        [
            "tune",
            "--output",
            str(store_root),
            *set_args(*TUNE_OVERRIDES),
            "--events",
            paths["events_parquet"],
            "--items",
            paths["items"],
            "--truth",
            paths["truth"],
        ]
    )
    assert code == 0
    cfg = make_config(store_root, *TUNE_OVERRIDES)
    from usersegments.store import TableStore

    return {"store": TableStore.from_config(spark, cfg), "cfg": cfg, "root": store_root}


@pytest.mark.slow
def test_tune_records_every_trial_and_chooses_the_best(tuned, capsys):
    store = tuned["store"]
    run = store.read("runs").filter("command = 'tune'").first()
    assert run["status"] == "succeeded"
    rows = store.read("tuning_trials").filter(F.col("run_id") == run["run_id"]).collect()
    assert sorted(r["trial_id"] for r in rows) == [1, 2, 3]
    assert all(r["status"] == "succeeded" for r in rows), [r["error"] for r in rows]
    # Shop-like data: held-out events are on items others touched, so hit-rate lift.
    assert {r["objective"] for r in rows} == {HIT_RATE_LIFT}
    chosen = [r for r in rows if r["chosen"]]
    assert len(chosen) == 1 and chosen[0]["score"] == max(r["score"] for r in rows)
    for r in rows:
        assert r["score"] == pytest.approx(r["hit_rate"] - r["hit_rate_popularity"])
        assert set(json.loads(r["settings_json"])) == set(SEARCHED.values())
        assert -1 <= r["silhouette_cosine"] <= 1 and 0 <= r["nmi_segment_vs_substyle"] <= 1
        assert r["users_tested"] > 300 and r["seconds"] > 0
    # The stored pipeline tables were not written by the trials.
    assert not store.exists("user_segments")


@pytest.mark.slow
def test_tuned_config_loads_and_runs(tuned, capsys):
    store, root = tuned["store"], tuned["root"]
    path = root / "tuned.yaml"
    tuned_cfg = load_config(path)
    chosen = store.read("tuning_trials").filter("chosen").first()
    for key, value in json.loads(chosen["settings_json"]).items():
        section, _, name = key.partition(".")
        node = getattr(tuned_cfg, section)
        for part in name.split("."):
            node = getattr(node, part)
        if key == "profile.event_weights":
            # Types the tuned map leaves out weigh default_event_weight, written out.
            default = tuned_cfg.profile.default_event_weight
            assert all(node[t] == value.get(t, default) for t in node) and set(value) <= set(node)
        else:
            assert node == value, key
    assert tuned_cfg.store.root == str(root)
    assert cli.main(["run", "--config", str(path), "--set", "report.enabled=false"]) == 0
    run = store.read("runs").filter("command = 'run'").first()
    assert run["status"] == "succeeded"
    assert json.loads(run["config_json"])["cluster"]["k"] == tuned_cfg.cluster.k
    assert store.read("user_segments").count() > 300


def test_an_empty_event_weight_map_weighs_every_type_alike(spark):
    # tune.event_weights offers {} (every type at profile.default_event_weight).
    from datetime import datetime, timezone

    from usersegments.profile import event_weight

    settings = {"profile.event_weights": {}, "profile.half_life_days": 14.0}
    cfg = with_settings(Config(), settings, "test").profile
    as_of = datetime(2026, 1, 1, tzinfo=timezone.utc)
    events = spark.createDataFrame(
        [("view", as_of, None), ("purchase", as_of, 4.0)],
        "event_type string, event_time timestamp, value double",
    )
    weights = [r["w"] for r in events.select(event_weight(cfg, as_of).alias("w")).collect()]
    assert weights == [cfg.default_event_weight] * 2
