"""Several interests per user: Ward on one user's event vectors (hand-made vectors), the
Spark path on tiny frames, and the planted run (generated users with a secondary area)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F
from pyspark.sql import types as T

from tests.helpers import metrics_of
from usersegments.frames import apply_per_key
from usersegments.interests import InterestRule, interests_of_users, user_interests

RULE = InterestRule(distance_threshold=0.9, max_per_user=3, min_weight=0.1)
T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)


def around(direction: np.ndarray, n: int, rng: np.random.Generator, spread: float = 0.15):
    """``n`` unit vectors scattered around the unit ``direction``."""
    x = direction[None, :] + spread * rng.normal(size=(n, len(direction))) / np.sqrt(len(direction))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def directions(dims: int = 16) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.zeros(dims), np.zeros(dims)
    a[0], b[1] = 1.0, 1.0
    return a, b


def times(n: int) -> np.ndarray:
    return np.array(
        [np.datetime64(T0.replace(tzinfo=None)) - np.timedelta64(i, "h") for i in range(n)]
    )


def test_two_directions_weighted_70_30_give_two_interests():
    rng = np.random.default_rng(0)
    a, b = directions()
    x = np.vstack([around(a, 14, rng), around(b, 6, rng)])
    w = np.ones(len(x))
    found = user_interests(x, w, times(len(x)), RULE)
    assert list(found["interest_rank"]) == [1, 2]
    assert found["weight"].to_list() == pytest.approx([0.7, 0.3])
    assert list(found["n_events"]) == [14, 6]
    assert np.vstack(found["embedding"]) @ a == pytest.approx([1.0, 0.0], abs=0.05)
    assert found["last_event_time"].iloc[0] == times(20)[0]
    assert found["last_event_time"].iloc[1] == times(20)[14]


def test_weights_not_counts_make_the_shares():
    rng = np.random.default_rng(1)
    a, b = directions()
    x = np.vstack([around(a, 10, rng), around(b, 10, rng)])
    w = np.r_[np.full(10, 3.5), np.full(10, 1.5)]  # e.g. purchases versus decayed views
    found = user_interests(x, w, times(len(x)), RULE)
    assert found["weight"].to_list() == pytest.approx([0.7, 0.3])


def test_one_direction_gives_one_interest():
    rng = np.random.default_rng(2)
    a, _ = directions()
    x = around(a, 30, rng)
    found = user_interests(x, np.ones(30), times(30), RULE)
    assert len(found) == 1
    assert found["weight"].iloc[0] == pytest.approx(1.0)
    assert found["n_events"].iloc[0] == 30


def test_a_stray_event_is_dropped_and_the_rest_renormalised():
    rng = np.random.default_rng(3)
    a, b = directions()
    x = np.vstack([around(a, 19, rng), around(b, 1, rng)])
    found = user_interests(x, np.ones(20), times(20), RULE)
    assert len(found) == 1 and found["weight"].iloc[0] == pytest.approx(1.0)
    assert found["n_events"].iloc[0] == 19


def test_at_most_max_per_user_interests_and_zero_weights_take_no_part():
    rng = np.random.default_rng(4)
    dims = 16
    axes = np.eye(dims)[:5]
    x = np.vstack([around(d, 8, rng) for d in axes])
    found = user_interests(x, np.ones(len(x)), times(len(x)), RULE)
    assert len(found) == 3
    assert found["weight"].sum() == pytest.approx(1.0)
    nothing = user_interests(x, np.zeros(len(x)), times(len(x)), RULE)
    assert nothing.empty


@pytest.mark.slow  # over ~3 s on 2 cores
def test_interests_of_users_in_spark(spark):
    rng = np.random.default_rng(5)
    a, b = directions()
    rows = []
    for user, parts in (("two", [(a, 14), (b, 6)]), ("one", [(a, 10)])):
        x = np.vstack([around(d, n, rng) for d, n in parts])
        for i, v in enumerate(x):
            rows.append((user, T0 - timedelta(hours=i), f"h{i}", 1.0, [float(f) for f in v]))
    frame = spark.createDataFrame(
        rows,
        "user_id string, event_time timestamp, text_hash string, weight double, "
        "embedding array<float>",
    )
    found = interests_of_users(frame, RULE).toPandas().sort_values(["user_id", "interest_rank"])
    assert found.groupby("user_id").size().to_dict() == {"one": 1, "two": 2}
    assert found.loc[found["user_id"] == "two", "weight"].to_list() == pytest.approx([0.7, 0.3])
    # Spark's own latest event time of the user, converted to pandas the same way.
    latest = frame.filter("user_id = 'one'").agg({"event_time": "max"}).toPandas().iloc[0, 0]
    assert found.loc[found["user_id"] == "one", "last_event_time"].iloc[0] == latest


def test_apply_per_key_gives_each_key_all_its_rows_in_order_across_arrow_batches(spark):
    """Groups of 1 to 7 rows and one of null keys, shuffled, Arrow batches of 3 rows:
    most groups are cut by a batch boundary, and each must still reach the function
    once, whole and sorted."""
    rng = np.random.default_rng(11)
    rows = [(f"k{k:02d}", int(t)) for k in range(40) for t in rng.permutation(k % 7 + 1)]
    rows += [(None, 2), (None, 0), (None, 1)]  # a null key is a key too, as in groupBy
    rng.shuffle(rows)
    frame = spark.createDataFrame(rows, "key string, t long")

    def summary(group: dict[str, np.ndarray]) -> list[tuple]:
        times = group["t"].tolist()
        return [(group["key"][0], len(times), times == sorted(times))]

    schema = T.StructType(
        [
            T.StructField("key", T.StringType()),
            T.StructField("n", T.LongType()),
            T.StructField("ordered", T.BooleanType()),
        ]
    )
    previous = spark.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch")
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "3")
    try:
        found = apply_per_key(frame, "key", ["t"], summary, schema).toPandas()
    finally:
        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", previous)
    sizes = dict(zip(found["key"], found["n"], strict=True))
    assert len(found) == len(sizes) == 41  # each key once
    assert sizes == {None: 3, **{f"k{k:02d}": k % 7 + 1 for k in range(40)}}
    assert found["ordered"].all()


def segment_areas(planted) -> pd.DataFrame:
    """segment_id -> the planted primary area most of its members have."""
    return areas_of_segments(planted.store, planted.data.truth)


def areas_of_segments(store, truth: pd.DataFrame) -> pd.DataFrame:
    """segment_id, segment_area: the planted primary area most of its members have."""
    truth = truth[["user_id", "area"]]
    members = store.read("user_segments").select("user_id", "segment_id").toPandas()
    joined = members.merge(truth, on="user_id")
    return (
        joined.groupby("segment_id")["area"]
        .agg(lambda a: a.value_counts().index[0])
        .rename("segment_area")
        .reset_index()
    )


@pytest.mark.slow
def test_planted_secondary_areas_become_interests(planted):
    interests = planted.store.read("user_interests").toPandas()
    truth = planted.data.truth
    placed = interests.merge(segment_areas(planted), on="segment_id").merge(truth, on="user_id")
    assert (interests["run_id"] == planted.run_id).all()
    assert interests.groupby("user_id")["weight"].sum().to_numpy() == pytest.approx(1.0)
    assert interests["interest_rank"].max() <= planted.cfg.interests.max_per_user

    with_secondary = truth[truth["secondary_share"] >= 0.15]["user_id"]
    found = placed[
        (placed["weight"] >= 0.1) & (placed["segment_area"] == placed["secondary_area"])
    ]["user_id"]
    tested = set(with_secondary) & set(interests["user_id"])
    recall = len(tested & set(found)) / len(tested)

    single = set(truth[truth["secondary_area"].isna()]["user_id"]) & set(interests["user_id"])
    stray = placed[
        (placed["weight"] >= 0.2)
        & (placed["segment_area"] != placed["area"])
        & placed["user_id"].isin(single)
    ]["user_id"]
    false_rate = stray.nunique() / len(single)

    metrics = metrics_of(planted.store, planted.run_id, "interests")
    print(
        f"\nsecondary area (>= 15% of events) found as an interest of weight >= 0.1 in a "
        f"segment of that area: {len(tested & set(found))}/{len(tested)} = {recall:.3f}"
        f"\nsingle-interest users with an interest of weight >= 0.2 in another area: "
        f"{stray.nunique()}/{len(single)} = {false_rate:.3f}"
        f"\nusers with 1/2/3 interests: {metrics['users_with_1_interests']:.0f}/"
        f"{metrics['users_with_2_interests']:.0f}/{metrics['users_with_3_interests']:.0f}, "
        f"mean {metrics['interests_per_user_mean']:.2f}"
    )
    assert metrics["users_with_interests"] == interests["user_id"].nunique()
    segments = planted.store.read("segments").toPandas().set_index("segment_id")
    reach = interests[interests["weight"] >= 0.1].groupby("segment_id")["user_id"].nunique()
    assert segments["reach"].to_dict() == reach.reindex(segments.index, fill_value=0).to_dict()
    assert (segments["reach"] >= 0).all() and segments["label"].notna().all()
    assert recall >= 0.8
    assert false_rate <= 0.1


@pytest.mark.slow  # over ~3 s on 2 cores
def test_an_update_rewrites_segments_of_a_store_from_before_reach(spark, rs_store):
    """``segments`` written before it had ``reach``: an update's size refresh writes it
    back with the column, null (not known until the next interests stage)."""
    from pyspark.sql import types as T

    from usersegments.dynamics.drift import refresh_sizes
    from usersegments.schema import SEGMENTS, USER_SEGMENTS, conform

    legacy = T.StructType([f for f in SEGMENTS.fields if f.name != "reach"])
    rows = [(s, 0, 2, s, [], [], [1.0, 0.0], 0.9, "r0") for s in ("c00.s00", "c00.s01")]
    rs_store.write(spark.createDataFrame(rows, legacy), "segments", mode="overwrite")
    members = spark.createDataFrame(
        [
            (u, 0, s)
            for u, s in (("a", "c00.s00"), ("b", "c00.s00"), ("c", "c00.s00"), ("d", "c00.s01"))
        ],
        "user_id string, cluster_id int, segment_id string",
    )
    for column in ("distance", "n_events_at_entry", "run_id", "as_of"):
        members = members.withColumn(column, F.lit(None))
    rs_store.write(conform(members, USER_SEGMENTS), "user_segments", mode="overwrite")
    refresh_sizes(spark, rs_store, rs_store.read("segments").toPandas())
    after = rs_store.read("segments").toPandas().set_index("segment_id")
    assert after["size"].to_dict() == {"c00.s00": 3, "c00.s01": 1}
    assert after["reach"].isna().all()


# ---------------------------------------------------------------------------
# The update recomputes the interests of the users with new events, and only theirs.

INTEREST_COLUMNS = ["user_id", "interest_rank", "weight", "segment_id", "run_id"]


def interest_table(store) -> pd.DataFrame:
    return (
        store.read("user_interests")
        .select(*INTEREST_COLUMNS)
        .toPandas()
        .sort_values(["user_id", "interest_rank"])
        .reset_index(drop=True)
    )


def copied_events(source: pd.DataFrame, user: str, start: datetime, step: timedelta):
    """``source``'s event rows as ``user``'s, one every ``step`` from ``start``."""
    rows = source[["event_type", "item_id", "text", "value"]].copy()
    rows.insert(0, "user_id", user)
    rows.insert(1, "event_time", [(start + i * step).isoformat() for i in range(len(rows))])
    rows["_bad"] = ""
    return rows


@pytest.fixture(scope="module")
def interests_update(spark, tmp_path_factory, planted):
    """A copy of the planted store (700 users through the full run, interests included);
    then an update whose new events belong to 3 users (under 1%): two single-area users
    engage with a new area (12 events copied from another area's users), one user with a
    secondary area keeps to their primary area for 40 more days (48 events of
    single-area users of it)."""
    import shutil

    from tests.conftest import PLANTED_OVERRIDES, make_config
    from tests.helpers import new_run
    from usersegments.dynamics import run_update
    from usersegments.embed import run_embed
    from usersegments.ingest import run_ingest
    from usersegments.store import TableStore
    from usersegments.testing.synthetic import GeneratedData, generated_times, write

    root = tmp_path_factory.mktemp("interests-update")
    shutil.copytree(planted.store.root, root / "store")
    data, paths = planted.data, planted.paths
    cfg = make_config(root / "store", *PLANTED_OVERRIDES, "update.recluster_threshold=1.0")
    store = TableStore.from_config(spark, cfg)
    before = interest_table(store)

    truth = data.truth.set_index("user_id")
    clean = data.events[data.events["_bad"] == ""]  # no planted bad row is copied
    events = clean.assign(_time=generated_times(clean)).dropna(subset=["_time"])
    end = events["_time"].max().to_pydatetime()
    hour = timedelta(hours=1)
    counts = before.groupby("user_id").size()
    single = [u for u in counts[counts == 1].index if pd.isna(truth.loc[u, "secondary_area"])]
    new_area = {}
    new_rows = []
    for user in single[:2]:
        other = next(a for a in truth["area"].unique() if a != truth.loc[user, "area"])
        donors = truth.index[(truth["area"] == other) & truth["secondary_area"].isna()]
        source = events[events["user_id"].isin(donors)].head(12)
        new_rows.append(copied_events(source, user, end + hour, hour))
        new_area[user] = other
    two = counts[counts == 2].index
    fading = next(u for u in two if pd.notna(truth.loc[u, "secondary_area"]))
    # Their primary area's events only: item events of that area's catalog, copied from
    # users with that area alone (whose logs also hold the generator's off-area noise).
    primary = truth.loc[fading, "area"]
    donors = truth.index[(truth["area"] == primary) & truth["secondary_area"].isna()]
    on_area = events["item_id"].map(data.items.set_index("item_id")["category"]) == primary
    # More new events than a typical user has in all: the old ones' share (the secondary
    # interest's included) must at least halve.
    source = events[events["user_id"].isin(donors) & on_area].head(48)
    new_rows.append(copied_events(source, fading, end + hour, timedelta(days=40) / 48))
    new = pd.concat(new_rows, ignore_index=True)
    new_paths = write(GeneratedData(new, data.items, data.truth, data.settings), root / "new")

    update = new_run(spark, store, cfg, "update")
    run_ingest(
        spark, store, cfg, update, events=[new_paths["events_parquet"]], items=paths["items"]
    )
    run_embed(spark, store, cfg, update)
    result = run_update(spark, store, cfg, update)
    update.flush()
    return {
        "store": store,
        "cfg": cfg,
        "truth": data.truth,
        "full_run_id": planted.run_id,
        "update": update,
        "result": result,
        "before": before,
        "after": interest_table(store),
        "new_area": new_area,
        "fading": fading,
    }


def test_an_update_recomputes_the_interests_of_users_with_new_events_only(interests_update):
    u = interests_update
    m = u["result"].metrics
    changed = {*u["new_area"], u["fading"]}
    before, after = u["before"], u["after"]
    print(
        f"\nupdate with new events for {len(changed)} of {before['user_id'].nunique()} users: "
        f"{m['interests_users_recomputed']} recomputed, rows inserted/updated/deleted "
        f"{m['interests_rows_inserted']}/{m['interests_rows_updated']}/"
        f"{m['interests_rows_deleted']}, gaining {m['interests_users_gaining']}, "
        f"losing {m['interests_users_losing']}"
    )
    assert m["users_folded"] == len(changed)
    assert m["interests_users_recomputed"] == len(changed)
    recorded = metrics_of(u["store"], u["update"], "update")
    assert recorded["interests_users_recomputed"] == len(changed)
    touched = m["interests_rows_inserted"] + m["interests_rows_updated"]
    touched += m["interests_rows_deleted"]
    assert touched == len(before[before["user_id"].isin(changed)]) + m["interests_rows_inserted"]
    # Every other user's rows are as the full run wrote them, run_id included.
    others_before = before[~before["user_id"].isin(changed)].reset_index(drop=True)
    others_after = after[~after["user_id"].isin(changed)].reset_index(drop=True)
    pd.testing.assert_frame_equal(others_after, others_before)
    assert (others_after["run_id"] == u["full_run_id"]).all()
    mine = after[after["user_id"].isin(changed)]
    assert set(mine["user_id"]) == changed and (mine["run_id"] == u["update"].run_id).all()
    # No stale row: each recomputed user's ranks run 1..n and their weights sum to 1.
    for _, rows in mine.groupby("user_id"):
        assert list(rows["interest_rank"]) == list(range(1, len(rows) + 1))
        assert rows["weight"].sum() == pytest.approx(1.0)


def test_a_user_engaging_with_a_new_area_gains_that_interest(interests_update):
    u = interests_update
    areas = areas_of_segments(u["store"], u["truth"])
    after = u["after"].merge(areas, on="segment_id")
    for user, area in u["new_area"].items():
        theirs = after[(after["user_id"] == user) & (after["weight"] >= 0.1)]
        assert area in set(theirs["segment_area"]), theirs
    assert u["result"].metrics["interests_users_gaining"] >= len(u["new_area"])


def test_an_interest_without_new_events_fades(interests_update):
    u = interests_update
    secondary = u["truth"].set_index("user_id").loc[u["fading"], "secondary_area"]
    areas = areas_of_segments(u["store"], u["truth"])

    def secondary_weight(table: pd.DataFrame) -> float:
        rows = table[table["user_id"] == u["fading"]].merge(areas, on="segment_id")
        return float(rows.loc[rows["segment_area"] == secondary, "weight"].sum())

    before, after = secondary_weight(u["before"]), secondary_weight(u["after"])
    print(f"\nsecondary interest of {u['fading']}: weight {before:.3f} -> {after:.3f}")
    assert before >= 0.1
    assert after < before / 2


def test_reach_follows_the_update(interests_update):
    store = interests_update["store"]
    interests = store.read("user_interests").toPandas()
    reach = interests[interests["weight"] >= 0.1].groupby("segment_id")["user_id"].nunique()
    segments = store.read("segments").toPandas().set_index("segment_id")
    assert segments["reach"].to_dict() == reach.reindex(segments.index, fill_value=0).to_dict()


def test_co_interest_counts_users_sharing_two_segments(spark):
    from usersegments.interests.reach import co_interest

    rows = [
        ("u", 1, 0.6, "a"),
        ("u", 2, 0.4, "b"),
        ("v", 1, 0.5, "a"),
        ("v", 2, 0.3, "b"),
        ("v", 3, 0.2, "c"),
        ("w", 1, 0.95, "c"),
        ("w", 2, 0.05, "a"),  # below min_weight: not an interest that counts
        ("x", 1, 0.5, "b"),
        ("x", 2, 0.5, "b"),  # two interests in one segment: one user, no pair
    ]
    interests = spark.createDataFrame(
        rows, "user_id string, interest_rank int, weight double, segment_id string"
    )
    pairs = co_interest(interests, 0.1)
    got = {
        (a, b): n for a, b, n in pairs[["segment_a", "segment_b", "users"]].itertuples(index=False)
    }
    assert got == {("a", "b"): 2, ("a", "c"): 1, ("b", "c"): 1}
