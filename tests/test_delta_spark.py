"""The delta-spark jars and backend choice: which coordinate, where the fetched jars
go, how a session is wired with them, and which backend each mode gets."""

from __future__ import annotations

import pyarrow as pa
import pytest
from deltalake import DeltaTable as RsTable
from deltalake import write_deltalake

from tests.conftest import make_config, require_delta_spark
from tests.test_faults import SETTINGS, assert_same_tables, command, snapshot
from usersegments import cli, delta_jars
from usersegments.config import load_config
from usersegments.errors import ConfigError
from usersegments.session import (
    DELTA_EXTENSION,
    build_session,
    check_backend_for_mode,
    session_conf,
)
from usersegments.store import TableStore, resolve_backend


@pytest.fixture
def versions(monkeypatch):
    """Pretend pyspark 4.2.0 and delta-spark 4.4.1 are installed."""
    monkeypatch.setattr(delta_jars, "delta_version", lambda: "4.4.1")
    monkeypatch.setattr(delta_jars, "spark_binary_version", lambda: "4.2")


def test_artifact_names_the_spark_line_from_delta_4_1():
    assert delta_jars.artifact_id("4.4.0", "4.2") == "delta-spark_4.2_2.13"
    assert delta_jars.artifact_id("4.1.0", "4.0") == "delta-spark_4.0_2.13"
    assert delta_jars.artifact_id("4.0.1", "4.0") == "delta-spark_2.13"


def test_fetch_resolves_the_release_line_up_to_the_pip_version(versions):
    assert delta_jars.version_range() == "[4.4.0,4.4.1]"
    assert delta_jars.wanted() == ("delta-spark_4.2_2.13", "4.4", "4.4.1")


def test_fetched_jars_count_only_for_a_suiting_coordinate(versions, tmp_path):
    assert delta_jars.fetched_jars(tmp_path) == []
    assert "make install" in delta_jars.missing_reason(tmp_path)
    (tmp_path / "delta-spark_4.2_2.13-4.4.0.jar").write_bytes(b"")
    manifest = tmp_path / delta_jars.MANIFEST
    for coordinate, suits in [
        ("io.delta:delta-spark_4.2_2.13:4.4.0", True),  # the line's latest published jars
        ("io.delta:delta-spark_4.2_2.13:4.4.1", True),
        ("io.delta:delta-spark_4.2_2.13:4.4.2", False),  # newer than pip's
        ("io.delta:delta-spark_4.2_2.13:4.3.1", False),  # another release line
        ("io.delta:delta-spark_4.1_2.13:4.4.0", False),  # another Spark line
    ]:
        manifest.write_text(coordinate + "\n")
        assert bool(delta_jars.fetched_jars(tmp_path)) is suits, coordinate
    assert "io.delta:delta-spark_4.1_2.13:4.4.0" in delta_jars.missing_reason(tmp_path)


def test_maven_failures_read_as_one_line(versions):
    offline = "[ERROR] Could not transfer artifact io.delta:x: Unknown host repo.maven.apache.org"
    assert delta_jars.maven_failure(offline) == "Maven Central is unreachable from this machine"
    missing = "[ERROR] Could not find artifact io.delta:delta-spark_4.2_2.13:jar:4.4.1 in central"
    assert "pin delta-spark" in delta_jars.maven_failure(missing)
    assert delta_jars.maven_failure("[ERROR] odd\n[ERROR] more") == "mvn failed: [ERROR] odd"


def test_fetch_without_maven_says_so_and_goes_on(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(delta_jars, "JARS_DIR", tmp_path / "jars")
    monkeypatch.setattr(delta_jars.shutil, "which", lambda name: None)
    assert delta_jars.main(["fetch"]) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "Maven (mvn) is not installed" in err and "going on with delta-rs only" in err


def test_local_session_carries_the_fetched_jars(monkeypatch):
    monkeypatch.delenv("PYSPARK_GATEWAY_PORT", raising=False)
    monkeypatch.setattr(delta_jars, "fetched_jars", lambda jars_dir=None: ["/j/delta.jar"])
    conf = session_conf(load_config())
    assert conf["spark.jars"] == "/j/delta.jar"
    assert conf["spark.sql.extensions"] == DELTA_EXTENSION
    own = session_conf(load_config(overrides=["spark.conf.spark.jars=/j/other.jar"]))
    assert own["spark.jars"] == "/j/delta.jar,/j/other.jar"
    assert "spark.jars" not in session_conf(load_config(overrides=["store.backend=delta-rs"]))
    # Under spark-submit the JVM is up: only its own --jars/--packages can bring Delta.
    monkeypatch.setenv("PYSPARK_GATEWAY_PORT", "1")
    assert "spark.sql.extensions" not in session_conf(load_config())


def test_local_session_without_jars_is_not_wired(monkeypatch):
    monkeypatch.delenv("PYSPARK_GATEWAY_PORT", raising=False)
    monkeypatch.setattr(delta_jars, "fetched_jars", lambda jars_dir=None: [])
    conf = session_conf(load_config())
    assert "spark.sql.extensions" not in conf and "spark.jars" not in conf


def test_cluster_auto_is_wired_for_delta_without_local_jars(monkeypatch):
    monkeypatch.setattr(delta_jars, "fetched_jars", lambda jars_dir=None: ["/j/delta.jar"])
    conf = session_conf(load_config(overrides=["spark.mode=cluster"]))
    assert conf["spark.sql.extensions"] == DELTA_EXTENSION
    assert "spark.jars" not in conf  # spark-submit --packages brings them


@pytest.mark.parametrize("mode", ["cluster", "databricks"])
def test_delta_rs_is_refused_off_local_mode(spark, mode, tmp_path):
    cfg = make_config(tmp_path, f"spark.mode={mode}", "store.backend=delta-rs")
    fix = r"store.backend is 'delta-rs' but spark.mode is '%s'.*set store.backend to delta-spark"
    for refuse in (check_backend_for_mode, build_session):
        with pytest.raises(ConfigError, match=fix % mode):
            refuse(cfg)
    with pytest.raises(ConfigError, match="--packages io.delta:delta-spark_"):
        resolve_backend(spark, cfg)


@pytest.mark.delta_spark
@pytest.mark.parametrize("mode", ["cluster", "databricks"])
def test_auto_picks_delta_spark_off_local_mode(spark, mode, tmp_path):
    require_delta_spark(spark)
    cfg = make_config(tmp_path, f"spark.mode={mode}")
    assert resolve_backend(spark, cfg) == "delta-spark"


@pytest.mark.delta_spark
def test_auto_keeps_delta_rs_in_local_mode_with_delta_spark_on_hand(spark, cfg, tmp_path):
    require_delta_spark(spark)
    assert resolve_backend(spark, cfg) == "delta-rs"  # the embedded local default
    asked = make_config(tmp_path / "asked", "store.backend=delta-spark")
    assert resolve_backend(spark, asked) == "delta-spark"
    jars = spark.sparkContext.getConf().get("spark.jars")
    assert str(delta_jars.JARS_DIR) in jars and "delta-spark_" in jars


@pytest.mark.delta_spark
def test_tables_cross_between_the_backends(spark, tmp_path):
    """delta-rs reads what delta-spark wrote, and delta-spark what delta-rs wrote."""
    require_delta_spark(spark)
    by_spark = str(tmp_path / "by_spark")
    spark.createDataFrame([("a", 1), ("b", 2)], "id string, n long").write.format("delta").save(
        by_spark
    )
    assert sorted(RsTable(by_spark).to_pandas()["id"]) == ["a", "b"]
    by_rs = str(tmp_path / "by_rs")
    write_deltalake(by_rs, RsTable(by_spark).to_pandas())
    store = TableStore.from_config(spark, make_config(tmp_path, "store.backend=delta-spark"))
    assert sorted(r["id"] for r in store.read_path(by_rs).collect()) == ["a", "b"]


@pytest.mark.delta_spark
@pytest.mark.parametrize("creator", ["delta-rs", "delta-spark"])
def test_contract_properties_cross_between_the_backends(spark, tmp_path, creator):
    """A table one backend creates with its contract's properties (the change data feed,
    append-only) is written by the other, which honours them."""
    require_delta_spark(spark)
    from datetime import date, datetime

    from delta.tables import DeltaTable as SparkTable

    from usersegments.errors import StoreError
    from usersegments.schema import EVENTS, RUN_METRICS

    other = "delta-spark" if creator == "delta-rs" else "delta-rs"
    first, second = (
        TableStore.from_config(spark, make_config(tmp_path / "store", f"store.backend={b}"))
        for b in (creator, other)
    )
    when = datetime(2024, 1, 1, 9, 0)

    def event(text: str):
        day = date(2024, 1, 1)
        row = ("e1", "u1", when, "view", "i1", text, "h", 1.0, "c", day, day, "r")
        return spark.createDataFrame([row], EVENTS)

    first.write(event("old"), "events", partition_by=["event_month"])
    second.merge(event("new"), "events", on=["event_id"])
    changes = (
        spark.read.format("delta")
        .option("readChangeFeed", "true")
        .option("startingVersion", 0)
        .load(second.path("events"))
    )
    assert sorted((r["_change_type"], r["text"]) for r in changes.collect()) == [
        ("insert", "old"),
        ("update_postimage", "new"),
        ("update_preimage", "old"),
    ]
    feed = RsTable(second.path("events")).load_cdf(starting_version=1).read_all()
    assert sorted(pa.table(feed).column("_change_type").to_pylist()) == [
        "update_postimage",
        "update_preimage",
    ]

    metric = spark.createDataFrame([("r", "s", "m", 1.0, when)], RUN_METRICS)
    first.write(metric, "run_metrics")
    second.write(metric, "run_metrics")
    assert second.properties("run_metrics") == {"delta.appendOnly": "true"}
    with pytest.raises(StoreError, match="append-only"):
        second.write(metric, "run_metrics", mode="overwrite")
    with pytest.raises(Exception, match="DELTA_CANNOT_MODIFY_APPEND_ONLY"):
        SparkTable.forPath(spark, second.path("run_metrics")).delete()
    with pytest.raises(Exception, match="append-only"):
        RsTable(second.path("run_metrics")).delete()
    assert first.read("run_metrics").count() == 2


@pytest.mark.slow
@pytest.mark.delta_spark
def test_delta_spark_run_and_update_write_what_delta_rs_writes(
    spark, tmp_path, windows, uninterrupted
):
    """``run`` then ``update`` on delta-spark end with the tables the same commands write
    on delta-rs (``uninterrupted``, tests/conftest.py, built once per session), row
    for row."""
    require_delta_spark(spark)
    after_run, after_update = uninterrupted
    root = tmp_path / "store"
    on_spark = "store.backend=delta-spark"
    store = TableStore.from_config(spark, make_config(root, *SETTINGS, on_spark))
    assert store.backend == "delta-spark"
    # Floats summed in another order (the files come back in another order) may differ
    # in their last bits; vectors are compared at 5 decimals by snapshot().
    close = {"check_exact": False, "atol": 1e-6, "rtol": 0}

    assert cli.main(command("run", root, windows[0], on_spark)) == 0
    assert_same_tables(snapshot(store), after_run, **close)
    assert cli.main(command("update", root, windows[1], on_spark)) == 0
    assert_same_tables(snapshot(store), after_update, **close)
    assert store.properties("events") == {"delta.enableChangeDataFeed": "true"}
    assert store.properties("run_metrics") == {"delta.appendOnly": "true"}
