"""TableStore on real Delta tables: round trips, merge, time travel, schema checks."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest
from deltalake import DeltaTable
from pyspark.sql import Row
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from usersegments.errors import InputError, SchemaMismatchError, StoreError
from usersegments.frames import driver_held, rows_to_spark
from usersegments.store import TableStore, TableVersion, resolve_backend
from usersegments.store.retention import vacuum_due

SCHEMA = "id string, ts timestamp, day date, score double, vec array<float>, n int"


def rows(spark, data):
    return spark.createDataFrame(data, SCHEMA)


SAMPLE = [
    ("a", datetime(2024, 1, 1, 10, 0), date(2024, 1, 1), 1.5, [0.1, 0.2], 1),
    ("b", datetime(2024, 1, 2, 11, 30), date(2024, 1, 2), None, [0.3, 0.4], 2),
    ("c", datetime(2024, 1, 2, 12, 0), date(2024, 1, 2), 3.0, [], None),
]


def sample(spark):
    return rows(spark, SAMPLE)


def test_write_read_round_trip_exact(spark, store):
    df = sample(spark)
    store.write(df, "t", partition_by=["day"])
    back = store.read("t")
    assert back.columns == df.columns  # partition columns keep their place
    assertDataFrameEqual(back, df)
    assert store.version("t") == 0


def test_append_then_overwrite(spark, store):
    df = sample(spark)
    store.write(df, "t")
    store.write(df.filter("id = 'a'"), "t", mode="append")
    assert store.read("t").count() == 4
    store.write(df.filter("id = 'b'"), "t", mode="overwrite")
    assertDataFrameEqual(store.read("t"), df.filter("id = 'b'"))
    assert store.version("t") == 2


def test_overwrite_may_change_the_schema(spark, store):
    store.write(sample(spark), "t")
    other = spark.createDataFrame([("x", 1)], "id string, other int")
    store.write(other, "t", mode="overwrite")
    assertDataFrameEqual(store.read("t"), other)


@pytest.mark.slow  # over ~3 s on 2 cores
def test_merge_upserts_exact_rows(spark, store):
    store.write(sample(spark), "t")
    change = rows(
        spark,
        [
            ("b", datetime(2024, 1, 2, 11, 30), date(2024, 1, 2), 9.0, [0.3, 0.4], 2),
            ("d", datetime(2024, 1, 3, 9, 0), date(2024, 1, 3), 4.0, [1.0], 4),
        ],
    )
    result = store.merge(change, "t", on=["id"])
    assert (result.inserted, result.updated) == (1, 1)
    expected = sample(spark).filter("id != 'b'").unionByName(change)
    assertDataFrameEqual(store.read("t"), expected)


@pytest.mark.slow  # over ~3 s on 2 cores
def test_a_merge_within_partitions_matches_only_the_rows_there(spark, store):
    """``within`` limits the merge's target to the partitions named (what lets an ingest
    of recent events skip the older months' files): rows there are matched and updated,
    new keys inserted, other partitions left alone; a key that exists only in another
    partition is out of reach (callers pass ``within`` only where keys imply partitions)."""
    store.write(sample(spark), "t", partition_by=["day"])
    change = rows(
        spark,
        [
            ("b", datetime(2024, 1, 2, 11, 30), date(2024, 1, 2), 9.0, [0.3, 0.4], 2),
            ("d", datetime(2024, 1, 2, 9, 0), date(2024, 1, 2), 4.0, [1.0], 4),
        ],
    )
    result = store.merge(change, "t", on=["id"], within={"day": ["2024-01-02"]})
    assert (result.inserted, result.updated) == (1, 1)
    assertDataFrameEqual(store.read("t"), sample(spark).filter("id != 'b'").unionByName(change))
    # "a" lives in 2024-01-01 only: limited to 2024-01-02, the merge cannot see it.
    stray = rows(spark, [("a", datetime(2024, 1, 2), date(2024, 1, 2), 7.0, [0.5], 1)])
    unseen = store.merge(stray, "t", on=["id"], within={"day": ["2024-01-02"]})
    assert (unseen.inserted, unseen.updated) == (1, 0)
    assert store.read("t").filter("id = 'a'").count() == 2
    # An empty batch (every row of an ingest rejected) names no partition at all.
    before = store.read("t").count()
    empty = store.merge(rows(spark, []), "t", on=["id"], within={"day": []})
    assert (empty.inserted, empty.updated) == (0, 0)
    assert store.read("t").count() == before


@pytest.mark.slow
def test_merge_is_idempotent(spark, store):
    store.write(sample(spark), "t")
    change = rows(spark, [("z", datetime(2024, 2, 1), date(2024, 2, 1), 1.0, [0.5], 7)])
    store.merge(change, "t", on=["id"])
    once = store.read("t").collect()
    second = store.merge(change, "t", on=["id"], when_matched="ignore")
    assert second.inserted == 0
    assertDataFrameEqual(store.read("t"), spark.createDataFrame(once, SCHEMA))
    store.merge(change, "t", on=["id"])  # update-all with the same values changes nothing
    assertDataFrameEqual(store.read("t"), spark.createDataFrame(once, SCHEMA))


def test_row_count_follows_appends_merges_and_overwrites_without_a_scan(spark, store):
    """``row_count`` reads the log's statistics; it agrees with a scan after every kind
    of commit, on either backend."""
    store.write(sample(spark), "t")
    assert store.row_count("t") == 3
    store.write(sample(spark).filter("id = 'a'"), "t")
    assert store.row_count("t") == 4
    change = rows(spark, [("z", datetime(2024, 2, 1), date(2024, 2, 1), 1.0, [0.5], 7)])
    store.merge(change, "t", on=["id"])
    store.merge(change, "t", on=["id"])  # an update: the count does not move
    assert store.row_count("t") == 5 == store.read("t").count()
    store.write(change, "t", mode="overwrite")
    assert store.row_count("t") == 1


def test_merge_creates_missing_table(spark, store):
    result = store.merge(sample(spark), "new_table", on=["id"], partition_by=["day"])
    assert result.inserted == 3
    assertDataFrameEqual(store.read("new_table"), sample(spark))


def test_merge_rejects_duplicate_and_null_keys(spark, store):
    store.write(sample(spark), "t")
    dup = sample(spark).unionByName(sample(spark).filter("id = 'a'"))
    with pytest.raises(ValueError, match=r"unique keys \['id'\]; \{'id': 'a'\} appears 2 times"):
        store.merge(dup, "t", on=["id"])
    null_key = rows(spark, [(None, None, None, None, None, None)])
    with pytest.raises(ValueError, match="must not be null"):
        store.merge(null_key, "t", on=["id"])


def test_a_merge_computes_its_source_once(spark, store):
    """The key check and the commit read one computed source (a merge's source is often a
    join over all events), on either backend."""
    store.write(sample(spark), "t")
    calls = spark.sparkContext.accumulator(0)

    @F.udf("string")
    def counted(key):
        calls.add(1)
        return key

    store.merge(sample(spark).withColumn("id", counted("id")), "t", on=["id"])
    assert calls.value == len(SAMPLE)
    assertDataFrameEqual(store.read("t"), sample(spark))


def test_rows_the_driver_holds_commit_and_are_checked_as_computed_rows_are(spark, store):
    """Run records and figures are committed without a Spark job on delta-rs (the rows are
    on the driver already); what lands, and the merge's key checks, are the same."""
    schema = rows(spark, []).schema
    held = rows_to_spark(spark, SAMPLE, schema)
    assert driver_held(held) and not driver_held(sample(spark).filter("n > 0"))
    store.write(held, "t")
    assertDataFrameEqual(store.read("t"), sample(spark))
    dup = rows_to_spark(spark, [*SAMPLE, SAMPLE[0]], schema)
    with pytest.raises(ValueError, match=r"unique keys \['id'\]; \{'id': 'a'\} appears 2 times"):
        store.merge(dup, "t", on=["id"])
    with pytest.raises(ValueError, match="must not be null"):
        store.merge(rows_to_spark(spark, [(None,) * 6], schema), "t", on=["id"])
    assert store.merge(held, "t", on=["id"]).updated == 3


@pytest.mark.slow
def test_replace_groups_leaves_no_stale_row_and_other_groups_alone(spark, store):
    schema = "user_id string, rank int, weight double"
    stored = [("u", 1, 0.5), ("u", 2, 0.3), ("u", 3, 0.2), ("v", 1, 0.6), ("v", 2, 0.4)]
    store.write(spark.createDataFrame(stored, schema), "t")
    # u now has two interests (rank 3 must go), w is new; v is not in the source.
    change = spark.createDataFrame([("u", 1, 0.7), ("u", 2, 0.3), ("w", 1, 1.0)], schema)
    result = store.replace_groups(change, "t", on=["user_id", "rank"], group=["user_id"])
    assert (result.inserted, result.updated, result.deleted) == (1, 2, 1)
    expected = [("u", 1, 0.7), ("u", 2, 0.3), ("v", 1, 0.6), ("v", 2, 0.4), ("w", 1, 1.0)]
    assertDataFrameEqual(store.read("t"), spark.createDataFrame(expected, schema))
    again = store.replace_groups(change, "t", on=["user_id", "rank"], group=["user_id"])
    assert again.deleted == 0 and again.inserted == 0
    assertDataFrameEqual(store.read("t"), spark.createDataFrame(expected, schema))


@pytest.mark.slow  # over ~3 s on 2 cores
def test_time_travel(spark, store):
    df = sample(spark)
    store.write(df.filter("id = 'a'"), "t")
    store.write(df.filter("id = 'b'"), "t")
    store.merge(df.filter("id = 'c'"), "t", on=["id"])
    assert store.version("t") == 2
    assertDataFrameEqual(store.read_version("t", 0), df.filter("id = 'a'"))
    assertDataFrameEqual(store.read_version("t", 1), df.filter("id in ('a', 'b')"))
    assertDataFrameEqual(store.read_version("t", 2), df)
    history = store.history("t")
    assert [h.version for h in history] == [2, 1, 0]
    assert "MERGE" in history[0].operation.upper()
    with pytest.raises(StoreError, match="versions 0..2; version 5 does not exist"):
        store.read_version("t", 5)


def test_append_with_other_schema_is_refused(spark, store):
    store.write(sample(spark), "t")
    wrong = spark.createDataFrame([("x", "not-a-number")], "id string, score string")
    with pytest.raises(SchemaMismatchError) as err:
        store.write(wrong, "t")
    msg = str(err.value)
    assert "table 't'" in msg
    assert "missing columns ['ts', 'day', 'vec', 'n']" in msg
    assert "score: table has double, rows have string" in msg
    assert store.version("t") == 0  # nothing was written


@pytest.mark.slow
def test_maintain_compacts_small_files_and_vacuums_old_ones(spark, store):
    batches = [sample(spark).withColumn("n", F.lit(i)) for i in range(5)]
    for batch in batches:
        store.write(batch, "t", partition_by=["day"])
    before = store.file_count("t")
    assert before >= 5
    untouched = store.maintain("t", compact_min_files=before + 1, retention_hours=168)
    assert not untouched.compacted and untouched.files_after == before
    # Every commit is younger than the retention: no file can be deletable yet.
    assert not untouched.vacuumed
    assert not any(v.operation.upper().startswith("VACUUM") for v in store.history("t"))

    done = store.maintain("t", compact_min_files=3, retention_hours=0)
    assert done.compacted and done.files_after < before and done.vacuumed
    assertDataFrameEqual(
        store.read("t"),
        batches[0]
        .unionByName(batches[1])
        .unionByName(batches[2])
        .unionByName(batches[3])
        .unionByName(batches[4]),
    )
    operations = [v.operation.upper() for v in store.history("t")]
    assert "OPTIMIZE" in operations[:3]  # delta-rs records VACUUM START/END after it
    if store.backend == "delta-rs":
        on_disk = [
            p for p in Path(store.path("t")).rglob("*.parquet") if "_delta_log" not in p.parts
        ]
        assert len(on_disk) == done.files_after  # nothing but the current files is left
        assert done.files_vacuumed == before


def test_missing_table_is_a_clear_error(store):
    assert not store.exists("nothing")
    with pytest.raises(StoreError, match="table 'nothing' does not exist"):
        store.read("nothing")


def test_empty_frames_round_trip(spark, store):
    empty = sample(spark).limit(0)
    store.write(empty, "t")
    assert store.exists("t")
    back = store.read("t")
    assert back.count() == 0
    assert back.columns == empty.columns


def test_tables_are_real_delta_tables(spark, rs_store):
    rs_store.write(sample(spark), "t", partition_by=["day"])
    rs_store.merge(sample(spark), "t", on=["id"])
    path = rs_store.path("t")
    table = DeltaTable(path)
    assert table.version() == 1
    assert sorted(table.to_pandas()["id"]) == ["a", "b", "c"]
    commits = sorted(p.name for p in (Path(path) / "_delta_log").glob("*.json"))
    assert commits == ["00000000000000000000.json", "00000000000000000001.json"]


def test_auto_backend_is_delta_rs_in_local_mode_without_jars(spark, cfg):
    from usersegments.session import delta_spark_ready

    if delta_spark_ready(spark):
        pytest.skip("Delta jars are on the classpath: auto picks delta-spark")
    assert resolve_backend(spark, cfg) == "delta-rs"
    assert TableStore.from_config(spark, cfg).backend == "delta-rs"


def test_explicit_delta_spark_without_jars_names_the_fix(spark, cfg):
    from usersegments.config import load_config
    from usersegments.session import delta_spark_ready

    if delta_spark_ready(spark):
        pytest.skip("Delta jars are on the classpath")
    wanted = load_config(overrides=["store.backend=delta-spark"], output=cfg.store.root)
    with pytest.raises(StoreError, match="Delta jars are not on the classpath: run `make install`"):
        resolve_backend(spark, wanted)


def test_bad_table_names(store):
    for name in ("", "a/b", "_staging", ".hidden"):
        with pytest.raises(ValueError, match="plain folder name"):
            store.path(name)


def test_row_objects_survive(spark, store):
    df = spark.createDataFrame([Row(id="q", n=1)])
    store.write(df, "r")
    assert store.read("r").collect() == [Row(id="q", n=1)]


def test_read_path_of_a_folder_without_delta_log_names_the_fix(rs_store, tmp_path):
    (tmp_path / "plain").mkdir()
    with pytest.raises(InputError, match="is not a Delta table .* set its format"):
        rs_store.read_path(str(tmp_path / "plain"))


# ---------------------------------------------------------------------------
# Table properties, z-order and time travel from the table contracts


def metric_rows(spark, *metrics: str):
    from usersegments.schema import RUN_METRICS

    now = datetime(2024, 1, 1, 12, 0)
    return spark.createDataFrame([("r1", "ingest", m, 1.0, now) for m in metrics], RUN_METRICS)


def native_properties(spark, store: TableStore, name: str) -> dict[str, str]:
    """A table's properties as the backend's own API reads them from the Delta log."""
    if store.backend == "delta-rs":
        return dict(DeltaTable(store.path(name)).metadata().configuration)
    from delta.tables import DeltaTable as SparkTable

    return dict(SparkTable.forPath(spark, store.path(name)).detail().first()["properties"])


def test_tables_are_created_with_their_contract_properties(spark, store):
    from usersegments.schema import EVENTS

    store.write(metric_rows(spark, "a"), "run_metrics")
    events = spark.createDataFrame([], EVENTS)
    store.write(events, "events", partition_by=["event_date"])
    store.write(sample(spark), "t")
    for name, expected in [
        ("run_metrics", {"delta.appendOnly": "true"}),
        ("events", {"delta.enableChangeDataFeed": "true"}),
        ("t", {}),
    ]:
        assert store.properties(name) == expected, name
        assert native_properties(spark, store, name) == expected, name
    # An overwrite keeps the properties the table was created with.
    store.write(events, "events", mode="overwrite", partition_by=["event_date"])
    assert native_properties(spark, store, "events") == {"delta.enableChangeDataFeed": "true"}


@pytest.mark.slow  # over ~3 s on 2 cores
def test_append_only_tables_refuse_overwrite_update_and_delete(spark, store):
    store.write(metric_rows(spark, "a"), "run_metrics")
    store.write(metric_rows(spark, "b"), "run_metrics")  # appends are the contract
    more = metric_rows(spark, "b", "c")
    inserted = store.merge(more, "run_metrics", on=["metric"], when_matched="ignore")
    assert inserted.inserted == 1  # an insert-only merge appends too
    version = store.version("run_metrics")
    with pytest.raises(StoreError, match=r"table 'run_metrics' is append-only .* an overwrite"):
        store.write(metric_rows(spark, "z"), "run_metrics", mode="overwrite")
    with pytest.raises(StoreError, match="a merge that updates matched rows .* ALTER TABLE"):
        store.merge(metric_rows(spark, "a"), "run_metrics", on=["metric"])
    # Delta itself refuses what bypasses the store: the property is in the table's log.
    path = store.path("run_metrics")
    if store.backend == "delta-rs":
        with pytest.raises(Exception, match="append-only"):
            DeltaTable(path).delete("metric = 'a'")
    else:
        from delta.tables import DeltaTable as SparkTable

        with pytest.raises(Exception, match="DELTA_CANNOT_MODIFY_APPEND_ONLY"):
            SparkTable.forPath(spark, path).delete("metric = 'a'")
    assert store.version("run_metrics") == version
    assert sorted(r["metric"] for r in store.read("run_metrics").collect()) == ["a", "b", "c"]


def _ids_per_file(store: TableStore, name: str) -> list[list[str]]:
    import pyarrow.parquet as pq

    return [
        pq.read_table(uri.removeprefix("file://"), columns=["id"]).column("id").to_pylist()
        for uri in DeltaTable(store.path(name)).file_uris()
    ]


@pytest.mark.slow  # over ~3 s on 2 cores
def test_maintain_zorders_by_the_key_and_keeps_the_rows(spark, store):
    batches = [sample(spark).withColumn("n", F.lit(i)) for i in range(5)]
    for batch in batches:
        store.write(batch, "t", partition_by=["day"])
    before = store.file_count("t")
    expected = batches[0]
    for batch in batches[1:]:
        expected = expected.unionByName(batch)

    done = store.maintain("t", compact_min_files=3, retention_hours=168, zorder_by=["id"])
    assert done.zordered and done.zorder_by == ("id",)
    assert done.compacted and done.files_after < before
    assertDataFrameEqual(store.read("t"), expected)
    # Both backends record VACUUM START/END after it.
    optimize = next(v for v in store.history("t") if v.operation.upper() == "OPTIMIZE")
    if store.backend == "delta-spark":
        # delta-spark range-partitions rows by their z-value into files (one file at
        # this size) without sorting inside a file; its commit names the columns.
        assert optimize.parameters["zOrderBy"] == '["id"]'
    else:
        # delta-rs sorts the rows by z-value: each rewritten file is in key order (a
        # plain compaction would concatenate the batches: b, c, b, c, ...).
        for ids in _ids_per_file(store, "t"):
            assert ids == sorted(ids)

    with pytest.raises(ValueError, match=r"zorder_by \['nope'\] are not columns of table 't'"):
        store.maintain("t", compact_min_files=1, retention_hours=168, zorder_by=["nope"])


@pytest.mark.slow
def test_maintain_stage_zorders_lookup_tables_and_records_it(spark, store):
    from tests.conftest import make_config
    from tests.helpers import metrics_of, new_run
    from usersegments.maintain import run_maintain
    from usersegments.schema import USER_PROFILES

    profiles = [
        spark.createDataFrame(
            [(f"u{i}{j}", [0.1], [0.2], 1.0, 1, None, None, "x", None, "r") for j in range(3)],
            USER_PROFILES,
        )
        for i in range(3)
    ]
    for batch in profiles:
        store.write(batch, "user_profiles")
    cfg = make_config(store.root, f"store.backend={store.backend}", "store.compact_min_files=2")
    run = new_run(spark, store, cfg)
    result = run_maintain(spark, store, cfg, run)
    run.finish()
    metrics = metrics_of(store, run, "maintain")
    assert metrics["tables_zordered"] == 1 and metrics["zordered.user_profiles"] == 1
    assert result.metrics["tables_zordered"] == 1
    assert "user_profiles" in result.tables
    assert store.read("user_profiles").count() == 9
    off = make_config(store.root, f"store.backend={store.backend}", "store.zorder=false")
    skipped = run_maintain(spark, store, off, new_run(spark, store, off))
    assert skipped.metrics["tables_zordered"] == 0


@pytest.mark.slow
def test_tables_command_reads_a_table_as_of_a_version(spark, store, capsys):
    from tests.conftest import set_args
    from usersegments import cli

    df = sample(spark)
    store.write(df.filter("id = 'a'"), "t")
    store.write(df.filter("id != 'a'"), "t", mode="overwrite")
    args = ["tables", "--output", store.root, *set_args(f"store.backend={store.backend}")]

    def shown(*options: str) -> tuple[str, list[str]]:
        capsys.readouterr()
        assert cli.main([*args, "--table", "t", *options]) == 0
        out = capsys.readouterr().out
        ids = [line.split("│")[1].strip() for line in out.splitlines() if line.count("│") > 2]
        return " ".join(out.split()), sorted(i for i in ids if i not in ("id", ""))

    old, old_ids = shown("--as-of-version", "0")
    assert "t at version 0 (latest 1): 1 rows, 1 shown" in old and old_ids == ["a"]
    new, new_ids = shown()
    assert "t at version 1 (latest 1): 2 rows, 2 shown" in new and new_ids == ["b", "c"]
    assert cli.main([*args, "--as-of-version", "0"]) == 2  # which table's version 0?
    assert "add --table NAME" in capsys.readouterr().err
    assert cli.main([*args, "--table", "t", "--as-of-version", "7"]) == 1
    assert "versions 0..1; version 7 does not exist" in capsys.readouterr().err


@pytest.mark.slow  # over ~3 s on 2 cores
def test_inserted_since_reads_only_the_rows_of_later_commits(spark, store):
    # events records its change data feed: an insert-only merge's rows come back alone,
    # typed as the table, whichever backend wrote and reads it.
    first, later = sample(spark).filter("id != 'c'"), sample(spark)
    store.merge(first, "events", on=["id"], when_matched="ignore", partition_by=["day"])
    store.merge(later, "events", on=["id"], when_matched="ignore")
    assert store.version("events") == 1
    with store.inserted_since("events", 0, 1, ["id", "ts", "day", "vec"]) as rows:
        assert rows.schema == store.read("events").select("id", "ts", "day", "vec").schema
        assertDataFrameEqual(rows, later.filter("id = 'c'").select("id", "ts", "day", "vec"))
    with store.inserted_since("events", 1, 1) as rows:
        assert rows.count() == 0 and rows.columns == store.read("events").columns
    with pytest.raises(StoreError, match="versions 0..1"):
        with store.inserted_since("events", 0, 2):
            pass


def test_inserted_since_refuses_a_table_without_change_data_feed(spark, store):
    from usersegments.errors import ChangeFeedUnavailable

    store.write(sample(spark), "t")
    store.write(sample(spark), "t")
    with pytest.raises(ChangeFeedUnavailable, match="delta.enableChangeDataFeed"):
        with store.inserted_since("t", 0, 1):
            pass


NOW = datetime(2026, 6, 1, tzinfo=timezone.utc)


def commit(hours_ago: float, operation: str, mode: str = "", **metrics) -> TableVersion:
    """A history entry ``hours_ago`` before ``NOW``."""
    return TableVersion(
        version=0,
        timestamp=NOW - timedelta(hours=hours_ago),
        operation=operation,
        parameters={"mode": mode} if mode else {},
        metrics=metrics,
    )


def test_vacuum_is_due_only_once_a_removed_file_aged_past_the_retention():
    week = 168
    # Appends only, the first one a day old: nothing removed, the table is young.
    appends = [commit(24, "WRITE", "Append"), commit(1, "WRITE", "Append")]
    assert not vacuum_due(appends, week, NOW)
    # Never vacuumed and older than the retention: due (files of failed writes).
    assert vacuum_due([commit(week + 1, "WRITE", "Append")], week, NOW)
    vacuumed = [commit(48, "VACUUM START"), commit(48, "VACUUM END")]
    # A merge that removed a file 8 days ago, after the vacuum two days ago had cut off
    # (files removed before 9 days ago): that file is deletable now.
    merged = commit(week + 24, "MERGE", numTargetFilesRemoved="1")
    assert vacuum_due([*vacuumed, merged], week, NOW)
    # The same merge 6 days ago: its file is kept until tomorrow.
    assert not vacuum_due(
        [*vacuumed, commit(week - 24, "MERGE", numTargetFilesRemoved="1")], week, NOW
    )
    # Removed before the last vacuum's cut-off: that vacuum deleted it already.
    assert not vacuum_due(
        [*vacuumed, commit(week + 72, "MERGE", num_target_files_removed=1)], week, NOW
    )
    # Merges that inserted only, on either backend's metric names, remove nothing.
    inserts = [
        commit(week + 24, "MERGE", numTargetFilesRemoved="0"),
        commit(week + 24, "MERGE", num_target_files_removed=0),
    ]
    assert not vacuum_due([*vacuumed, *inserts], week, NOW)
    # An operation that may remove files and does not say how many is taken to have.
    assert vacuum_due([*vacuumed, commit(week + 24, "DELETE")], week, NOW)
    # Not vacuumed for a whole retention period: due whatever the history says.
    assert vacuum_due([commit(week + 1, "VACUUM END"), commit(1, "WRITE", "Append")], week, NOW)
    # A zero retention keeps nothing: always due.
    assert vacuum_due([*vacuumed, commit(1, "WRITE", "Append")], 0, NOW)
