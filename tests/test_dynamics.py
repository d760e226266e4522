"""Incremental updates on planted drift: folding, reassignment, history, stable ids."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F

from tests.conftest import SMALL, make_config
from tests.helpers import metrics_of, new_run
from usersegments.cluster import nearest_segment_frame, run_cluster
from usersegments.dynamics import match_segments, run_update
from usersegments.dynamics.drift import novelty
from usersegments.embed import model_id, run_embed
from usersegments.evaluate import drift_recovery
from usersegments.ingest import run_ingest
from usersegments.profile import run_profile, weighted_sums
from usersegments.store import TableStore
from usersegments.testing.synthetic import GeneratorSettings, generate, split_at, write

STATE_TABLES = ("user_profiles", "user_segments", "segments", "segment_history")


def snapshot(store: TableStore, name: str) -> pd.DataFrame:
    """A table's content, sorted, without the columns that name the run."""
    pdf = store.read(name).toPandas().drop(columns=["run_id"], errors="ignore")
    for column in pdf.columns:
        if pdf[column].map(lambda v: isinstance(v, list | np.ndarray)).any():
            pdf[column] = pdf[column].map(lambda v: tuple(np.round(np.asarray(v, float), 6)))
    return pdf.sort_values(list(pdf.columns[:2])).reset_index(drop=True)


@pytest.fixture(scope="module")
def dynamic(spark, tmp_path_factory):
    """Window 1 (before the planted drift) clustered; window 2 ingested and embedded by
    a run that then "crashed", and folded in by the update run that followed."""
    root = tmp_path_factory.mktemp("dynamic")
    data = generate(GeneratorSettings(users=400, seed=5, drift_share=0.25))
    cut = datetime.fromisoformat(data.manifest["drift_date"])
    first, second = split_at(data, cut)
    first_paths = write(first, root / "window1")
    second_paths = write(second, root / "window2")
    cfg = make_config(
        root / "store",
        "profile.half_life_days=14",
        "privacy.min_segment_size=10",
        "cluster.sub.target_size=25",
        "cluster.k=14",
        "update.recluster_threshold=1.0",  # incremental only; the last test re-clusters
    )
    store = TableStore.from_config(spark, cfg)
    full = new_run(spark, store, cfg, "run")
    run_ingest(
        spark, store, cfg, full, events=[first_paths["events_parquet"]], items=first_paths["items"]
    )
    run_embed(spark, store, cfg, full)
    run_profile(spark, store, cfg, full)
    run_cluster(spark, store, cfg, full)
    full.flush()
    crashed = new_run(spark, store, cfg, "update")
    run_ingest(
        spark,
        store,
        cfg,
        crashed,
        events=[second_paths["events_parquet"]],
        items=second_paths["items"],
    )
    run_embed(spark, store, cfg, crashed)
    crashed.finish("failed")
    update = new_run(spark, store, cfg, "update")
    result = run_update(spark, store, cfg, update)
    update.flush()
    return {
        "store": store,
        "cfg": cfg,
        "data": data,
        "cut": cut,
        "paths": second_paths,
        "update": update,
        "result": result,
    }


def test_update_folds_events_ingested_by_a_crashed_run(dynamic):
    m = dynamic["result"].metrics
    store = dynamic["store"]
    assert m["events_folded"] > 1000
    assert m["users_reassigned"] > 300
    assert m["reclustered"] == 0
    recorded = metrics_of(store, dynamic["update"], "update")
    assert recorded["events_folded"] == m["events_folded"]
    known_before = m["users_reassigned"] - m["users_new"]
    assert m["moved_share"] == pytest.approx(m["users_moved"] / known_before)


def test_incremental_profiles_equal_a_full_recomputation(dynamic):
    store, cfg = dynamic["store"], dynamic["cfg"]
    stored = store.read("user_profiles")
    as_of = stored.agg(F.max("as_of")).first()[0]
    updated = stored.filter(F.col("run_id") == dynamic["update"].run_id).toPandas()
    events = store.read("events").select(
        "user_id", "event_time", "event_type", "value", "text_hash", "run_id"
    )
    vectors = store.read("text_embeddings").filter(F.col("model_id") == model_id(cfg.embed))
    batch = weighted_sums(events, vectors.select("text_hash", "embedding"), cfg.profile, as_of)
    joined = updated.merge(batch.toPandas(), on="user_id", suffixes=("", "_batch"))
    assert len(joined) == len(updated) > 300
    a = np.vstack(joined["weighted_sum"].to_numpy()).astype(float)
    b = np.vstack(joined["weighted_sum_batch"].to_numpy()).astype(float)
    cosine = (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() > 0.999
    assert np.allclose(joined["weight_total"], joined["weight_total_batch"], rtol=1e-4)
    assert (joined["n_events"] == joined["n_events_batch"]).all()
    assert (joined["events_through"] == joined["events_through_batch"]).all()


def test_drifted_users_follow_their_new_interest(dynamic):
    recovery = drift_recovery(dynamic["store"], dynamic["paths"]["truth"], dynamic["cut"])
    assert recovery["drifted_users"] > 50
    assert recovery["drifted_in_new_area_share"] >= 0.8, recovery
    assert recovery["stable_moved_share"] < 0.05, recovery


def test_history_is_a_type_2_dimension_in_step_with_user_segments(dynamic):
    store = dynamic["store"]
    history = store.read("segment_history").toPandas()
    current = store.read("user_segments").select("user_id", "segment_id").toPandas()
    open_rows = history[history["valid_to"].isna()]
    assert open_rows["user_id"].is_unique
    both = current.merge(open_rows, on="user_id", suffixes=("", "_open"))
    assert len(both) == len(current)
    assert (both["segment_id"] == both["segment_id_open"]).all()
    closed = history[history["valid_to"].notna()]
    assert len(closed) > 0 and (closed["valid_to"] > closed["valid_from"]).all()
    moved = dynamic["result"].metrics["users_moved"]
    assert closed["user_id"].nunique() == moved


def test_the_same_update_twice_changes_nothing(spark, dynamic):
    store, cfg = dynamic["store"], dynamic["cfg"]
    before = {name: snapshot(store, name) for name in STATE_TABLES}
    again = new_run(spark, store, cfg, "update")
    run_ingest(
        spark,
        store,
        cfg,
        again,
        events=[dynamic["paths"]["events_parquet"]],
        items=dynamic["paths"]["items"],
    )
    run_embed(spark, store, cfg, again)
    result = run_update(spark, store, cfg, again)
    assert result.metrics["events_folded"] == 0
    assert result.metrics["users_reassigned"] == 0
    for name in STATE_TABLES:
        pd.testing.assert_frame_equal(snapshot(store, name), before[name], check_like=True)


def test_nearest_cluster_then_segment_with_hysteresis():
    segments = pd.DataFrame(
        {
            "segment_id": ["c00.s00", "c00.s01", "c01.s00"],
            "cluster_id": [0, 0, 1],
            "size": [10, 10, 10],
            "centroid": [np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), np.array([0, 0, 1.0])],
        }
    )
    near_boundary = np.array([0.70, 0.72, 0.0]) / np.linalg.norm([0.70, 0.72])
    pdf = pd.DataFrame(
        {
            "user_id": ["u", "v", "w"],
            "embedding": [near_boundary, np.array([0.1, 1.0, 0.0]), np.array([0.1, 0, 1.0])],
            "current_segment": ["c00.s00", "c00.s00", "c00.s00"],
        }
    )
    out = nearest_segment_frame(pdf, segments, move_margin=0.05)
    assert list(out["segment_id"]) == ["c00.s00", "c00.s01", "c01.s00"]  # u stays
    assert list(out["cluster_id"]) == [0, 0, 1]
    out = nearest_segment_frame(pdf, segments, move_margin=0.0)
    assert list(out["segment_id"]) == ["c00.s01", "c00.s01", "c01.s00"]
    # v and w have one event since they entered c00.s00: not enough evidence to move.
    pdf["new_events"] = [5, 1, 1]
    out = nearest_segment_frame(pdf, segments, move_margin=0.0, min_new_events=2)
    assert list(out["segment_id"]) == ["c00.s01", "c00.s00", "c00.s00"]
    fresh = nearest_segment_frame(pdf.drop(columns="current_segment"), segments)
    assert list(fresh["segment_id"])[1:] == ["c00.s01", "c01.s00"]  # nothing to keep


@pytest.mark.slow
def test_novelty_is_the_share_of_the_run_s_new_texts_far_from_every_centroid(spark):
    segments = pd.DataFrame(
        {"segment_id": ["a", "b"], "centroid": [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]}
    )
    events = spark.createDataFrame(
        [("r2", "near"), ("r2", "far"), ("r2", "far"), ("r1", "old")],
        "run_id string, text_hash string",
    )
    vectors = spark.createDataFrame(
        [("near", [0.9, 0.1, 0.0]), ("far", [0.0, 0.0, 1.0]), ("old", [0.0, 0.0, 1.0])],
        "text_hash string, embedding array<float>",
    )
    # Each distinct text counts once; texts of earlier runs are not this run's.
    assert novelty(events, vectors, segments, "r2", 0.5) == {
        "new_texts": 2,
        "novel_text_share": 0.5,
    }
    assert novelty(events, vectors, segments, "r3", 0.5) == {
        "new_texts": 0,
        "novel_text_share": 0.0,
    }


def test_matching_keeps_ids_and_names_births_splits_and_ends():
    e = np.eye(4)
    old = pd.DataFrame(
        {
            "segment_id": ["c00.s00", "c00.s01", "c01.s00"],
            "cluster_id": [0, 0, 1],
            "centroid": [e[0], e[1], e[2]],
        }
    )
    new = pd.DataFrame(
        {
            "segment_id": ["c05.s00", "c05.s01", "c06.s00", "c07.s00"],
            "cluster_id": [5, 5, 6, 7],
            "centroid": [e[1] + 0.05 * e[3], e[0], 0.6 * e[0] + 0.8 * e[3], e[3]],
        }
    )
    flows = pd.DataFrame(
        [
            ("c00.s01", "c05.s00", 30),
            ("c00.s00", "c05.s01", 20),
            ("c00.s00", "c06.s00", 15),
            ("c01.s00", "c07.s00", 2),
        ],
        columns=["old_segment_id", "new_segment_id", "users"],
    )
    matching = match_segments(old, new, flows, min_similarity=0.9)
    assert matching.rename["c05.s00"] == "c00.s01" and matching.rename["c05.s01"] == "c00.s00"
    fresh = {matching.rename["c06.s00"], matching.rename["c07.s00"]}
    assert fresh == {"c06.s00", "c07.s00"}  # new ids, never an old one
    events = {(r.old_segment_id, r.new_segment_id): r.event for r in matching.lineage.itertuples()}
    assert events[("c00.s00", "c00.s00")] == "continued"
    assert events[("c00.s00", "c06.s00")] == "split"
    assert events[(None, "c07.s00")] == "born"
    assert events[("c01.s00", None)] == "ended"


def test_reclustering_unchanged_data_keeps_segment_ids(spark, dynamic):
    store, cfg = dynamic["store"], dynamic["cfg"]
    old_ids = {r["segment_id"] for r in store.read("segments").collect()}
    run = new_run(spark, store, cfg, "update")
    result = run_update(spark, store, cfg, run, recluster_now=True)
    m = result.metrics
    assert m["reclustered"] == 1
    assert m["segment_ids_kept_share"] >= 0.9, m
    new_ids = {r["segment_id"] for r in store.read("segments").collect()}
    assert len(new_ids & old_ids) >= 0.9 * len(old_ids)
    lineage = store.read("segment_lineage").filter(F.col("run_id") == run.run_id).toPandas()
    assert (lineage["event"] == "continued").sum() == m["segments_continued"]
    segs = store.read("user_segments")
    assert segs.select("segment_id").distinct().count() == len(new_ids)
    open_rows = store.read("segment_history").filter(F.col("valid_to").isNull())
    assert open_rows.join(segs, ["user_id", "segment_id"], "left_anti").count() == 0


# ---------------------------------------------------------------------------
# An update reads only the events committed since the profiles' events version


PROFILE_FIGURES = ("weighted_sum", "weight_total", "embedding", "n_events")


def few_users_later(data, users: int, days: int):
    """(history, batch): the batch is the last ``days`` days of ``users`` users' events."""
    from dataclasses import replace
    from datetime import timedelta

    from usersegments.testing.synthetic import generated_times

    picked = sorted(data.events["user_id"].dropna().unique())[:users]
    recent = generated_times(data.events) >= pd.Timestamp(data.settings.end - timedelta(days))
    in_batch = (data.events["user_id"].isin(picked) & recent.fillna(False)).to_numpy()
    parts = [data.events[mask].reset_index(drop=True) for mask in (~in_batch, in_batch)]
    return replace(data, events=parts[0]), replace(data, events=parts[1])


def profile_rows(store: TableStore) -> pd.DataFrame:
    pdf = store.read("user_profiles").toPandas().set_index("user_id").sort_index()
    return pdf[[*PROFILE_FIGURES, "events_through", "last_event_time"]]


def assert_same_profiles(a: pd.DataFrame, b: pd.DataFrame) -> None:
    assert list(a.index) == list(b.index)
    for column in ("weighted_sum", "embedding"):
        x, y = (np.vstack(f[column].to_numpy()).astype(float) for f in (a, b))
        assert np.abs(x - y).max() <= 1e-6, column
    assert np.allclose(a["weight_total"], b["weight_total"], rtol=0, atol=1e-6)
    for column in ("n_events", "events_through", "last_event_time"):
        assert (a[column] == b[column]).all(), column


def disable_change_data_feed(store: TableStore) -> None:
    """Turn the events table's feed off, as a table created before the property is."""
    from deltalake import DeltaTable

    table = DeltaTable(store.path("events"))
    table.alter.set_table_properties({"delta.enableChangeDataFeed": "false"})


FEW_NEW_SETTINGS = ("profile.half_life_days=14", *SMALL)


@pytest.fixture(scope="module")
def few_new_history(spark, tmp_path_factory):
    """A full run over most of an 80-user log on delta-rs, and the log's rest: the last 10
    days of 4 users' events (the update of ``few_new`` on either backend starts from a
    copy of this store; tests/test_delta_spark.py proves a full run on delta-spark)."""
    root = tmp_path_factory.mktemp("few-new-history")
    data = generate(GeneratorSettings(users=80, seed=9, drift_share=0.0))
    history, batch = few_users_later(data, users=4, days=10)
    paths = {name: write(part, root / name) for name, part in (("h", history), ("b", batch))}
    cfg = make_config(root / "store", "store.backend=delta-rs", *FEW_NEW_SETTINGS)
    store = TableStore.from_config(spark, cfg)
    full = new_run(spark, store, cfg, "run")
    h = paths["h"]
    run_ingest(spark, store, cfg, full, events=[h["events_parquet"]], items=h["items"])
    run_embed(spark, store, cfg, full)
    run_profile(spark, store, cfg, full)
    run_cluster(spark, store, cfg, full)
    full.finish()
    return root / "store", paths["b"]


@pytest.fixture(
    scope="module",
    params=["delta-rs", pytest.param("delta-spark", marks=pytest.mark.delta_spark)],
)
def few_new(request, spark, tmp_path_factory, few_new_history):
    """On a copy of ``few_new_history``'s store, new events of 4 users ingested and
    embedded by an update run on the backend under test, and that run's update in three
    copies of the store: reading the change data feed, reading the whole table
    (update.read_changes=false), and reading a table whose feed is off."""
    import shutil

    from tests.conftest import require_delta_spark
    from usersegments.runlog import RunLog

    if request.param == "delta-spark":
        require_delta_spark(spark)
    history_root, b = few_new_history
    root = tmp_path_factory.mktemp(f"few-new-{request.param}")
    shutil.copytree(history_root, root / "changes")
    settings = (f"store.backend={request.param}", *FEW_NEW_SETTINGS)
    cfg = make_config(root / "changes", *settings)
    store = TableStore.from_config(spark, cfg)
    update = new_run(spark, store, cfg, "update")
    ingested = run_ingest(spark, store, cfg, update, events=[b["events_parquet"]], items=b["items"])
    run_embed(spark, store, cfg, update)
    update.flush()
    runs = {}
    for name, extra in (("whole", "update.read_changes=false"), ("no_feed", None)):
        shutil.copytree(root / "changes", root / name)
        other_cfg = make_config(root / name, *settings, *([extra] if extra else []))
        other = TableStore.from_config(spark, other_cfg)
        if name == "no_feed":
            disable_change_data_feed(other)
        runs[name] = (other, other_cfg, RunLog(spark, other, other_cfg, "update", update.run_id))
    runs["changes"] = (store, cfg, update)
    out = {"new_events": ingested.metrics["accepted"]}
    for name, (s, c, r) in runs.items():
        result = run_update(spark, s, c, r)
        r.flush()
        out[name] = {"store": s, "metrics": result.metrics, "profiles": profile_rows(s)}
    return out


def test_an_update_reads_only_the_new_events_and_folds_what_a_full_scan_folds(few_new):
    changes, whole = few_new["changes"], few_new["whole"]
    m, w = changes["metrics"], whole["metrics"]
    assert m["events_read_via_changes"] == 1
    assert 0 < m["events_rows_read"] == few_new["new_events"]
    assert m["events_folded"] == w["events_folded"] == few_new["new_events"]
    assert w["events_read_via_changes"] == 0 and w["events_full_scan.disabled"] == 1
    assert w["events_rows_read"] == whole["store"].read("events").count()
    assert 0 < m["users_folded"] == w["users_folded"] <= 4
    assert_same_profiles(changes["profiles"], whole["profiles"])
    # The recorded figures and the events version the profiles now hold.
    store = changes["store"]
    latest = store.read("runs").orderBy(F.desc("started_at")).first()["run_id"]
    update = metrics_of(store, latest, "update")
    assert update["events_rows_read"] == m["events_rows_read"]
    assert update["events_version"] == store.version("events")
    assert update["events_read_after_version"] == store.version("events") - 1


def test_an_update_of_a_table_without_change_data_feed_reads_it_whole(few_new):
    m = few_new["no_feed"]["metrics"]
    assert m["events_read_via_changes"] == 0
    assert m["events_full_scan.no_change_data_feed"] == 1
    assert m["events_folded"] == few_new["new_events"]
    assert_same_profiles(few_new["no_feed"]["profiles"], few_new["changes"]["profiles"])


def test_the_events_version_is_the_latest_recorded_and_none_when_it_cannot_vouch(spark, rs_store):
    from usersegments.dynamics.changes import recorded_events_version
    from usersegments.schema import RUN_METRICS

    assert recorded_events_version(rs_store) is None
    t = datetime(2024, 1, 1)
    rows = [
        ("r1", "profile", "events_version", 3.0, t),
        ("r2", "update", "events_version", 7.0, t.replace(hour=1)),
        ("r2", "update", "events_rows_read", 9.0, t.replace(hour=2)),
    ]
    rs_store.write(spark.createDataFrame(rows, RUN_METRICS), "run_metrics")
    assert recorded_events_version(rs_store) == 7
    later = [("r3", "profile", "events_version", -1.0, t.replace(hour=3))]
    rs_store.write(spark.createDataFrame(later, RUN_METRICS), "run_metrics")
    assert recorded_events_version(rs_store) is None
