"""Session factory settings and the command-line contract."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pandas as pd
import pytest
from pyspark.sql import functions as F

from tests.conftest import REPO
from usersegments import cli
from usersegments.cli.parser import INPUT_OPTIONS
from usersegments.config import load_config
from usersegments.errors import StageNotAvailable
from usersegments.session import (
    DELTA_EXTENSION,
    driver_java_options,
    session_conf,
    wants_delta_spark,
)
from usersegments.stages import (
    DEMO,
    RUN,
    STAGES,
    UPDATE,
    stage_function,
    stages_of,
    subcommand_stages,
)


def test_python_workers_use_this_interpreter(spark):
    @F.pandas_udf("string")
    def where(s: pd.Series) -> pd.Series:
        return s.map(lambda _: sys.executable)

    seen = spark.range(2).select(where(F.col("id").cast("string")).alias("exe")).collect()
    assert {r.exe for r in seen} == {sys.executable}


def test_local_conf(monkeypatch):
    monkeypatch.setattr("usersegments.delta_jars.fetched_jars", lambda jars_dir=None: [])
    monkeypatch.setenv("CI", "true")
    conf = session_conf(load_config(overrides=["spark.shuffle_partitions=3"]))
    assert conf["spark.pyspark.python"] == sys.executable
    assert conf["spark.ui.enabled"] == "false"
    assert conf["spark.sql.shuffle.partitions"] == "3"
    assert conf["spark.sql.execution.arrow.pyspark.enabled"] == "true"
    assert "spark.sql.extensions" not in conf  # no Delta jars asked for


def test_the_local_jvm_gets_the_parallel_collector_unless_told_otherwise(spark):
    options = "spark.conf.spark.driver.extraJavaOptions=-Xss4m"
    assert driver_java_options(load_config(overrides=[options])) == "-XX:+UseParallelGC -Xss4m"
    assert driver_java_options(load_config(overrides=["spark.local_gc=g1"])) == "-XX:+UseG1GC"
    named = "spark.conf.spark.driver.extraJavaOptions=-XX:+UseZGC -Xss4m"
    assert driver_java_options(load_config(overrides=[named])) == "-XX:+UseZGC -Xss4m"
    cluster = session_conf(load_config(overrides=["spark.mode=cluster"]))
    assert "spark.driver.extraJavaOptions" not in cluster
    # The test session is a local one that Python started: its JVM runs the collector.
    beans = spark.sparkContext._jvm.java.lang.management.ManagementFactory
    collectors = {bean.getName() for bean in beans.getGarbageCollectorMXBeans()}
    assert collectors == {"PS Scavenge", "PS MarkSweep"}, collectors


def test_cluster_conf_never_sets_master_or_driver_memory():
    conf = session_conf(load_config(overrides=["spark.mode=cluster", "store.backend=delta-spark"]))
    assert not any(k in conf for k in ("spark.master", "spark.driver.memory"))
    assert conf["spark.sql.extensions"] == DELTA_EXTENSION


def test_delta_wiring_follows_backend_and_jars(monkeypatch):
    monkeypatch.setattr("usersegments.delta_jars.fetched_jars", lambda jars_dir=None: [])
    assert wants_delta_spark(load_config(overrides=["store.backend=delta-spark"]))
    assert not wants_delta_spark(load_config(overrides=["store.backend=delta-rs"]))
    jars = "spark.conf.spark.jars.packages=io.delta:delta-spark_2.13:4.0.0"
    assert wants_delta_spark(load_config(overrides=[jars]))
    assert not wants_delta_spark(load_config())


def test_unknown_stage_is_refused():
    with pytest.raises(StageNotAvailable, match="'nope' stage is not available"):
        stage_function("nope")


def test_cli_config_error_is_one_line_and_exit_2(capsys):
    code = cli.main(["config", "--set", "cluster.k=zero"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.count("\n") == 0
    assert err.startswith("usersegments config: invalid configuration: config key 'cluster.k'")


def test_cli_prints_defaults(capsys):
    assert cli.main(["config", "--defaults"]) == 0
    assert capsys.readouterr().out == (REPO / "conf" / "default.yaml").read_text()


def test_every_command_takes_the_common_options():
    parser = cli.build_parser()
    stage_commands = [stage.name for stage in subcommand_stages()]
    for command in [*stage_commands, "generate", "run", "update", "demo", "config", "tables"]:
        args = parser.parse_args(
            [command, "--config", "c.yaml", "--set", "a.b=1", "--set", "c.d=2", "--output", "out"]
        )
        assert (args.config, args.overrides, args.output) == ("c.yaml", ["a.b=1", "c.d=2"], "out")


def test_each_stage_function_takes_the_inputs_its_registry_row_declares():
    for stage in STAGES:
        parameters = inspect.signature(stage.load()).parameters
        assert list(parameters)[:4] == ["spark", "store", "cfg", "run"], stage.name
        assert set(stage.inputs) <= set(parameters), stage.name
        assert set(stage.inputs) <= set(INPUT_OPTIONS), stage.name


def test_commands_run_their_registry_stages_in_pipeline_order():
    order = [stage.name for stage in STAGES]
    for command in (RUN, UPDATE, DEMO):
        names = stages_of(command, reclustered=True)
        assert list(names) == sorted(names, key=order.index)
    assert stages_of(RUN)[0] == "ingest" and stages_of(RUN)[-1] == "maintain"
    assert "label" in stages_of(UPDATE, reclustered=True)
    assert "label" not in stages_of(UPDATE, reclustered=False)
    assert "evaluate" in stages_of(DEMO) and "evaluate" not in stages_of(RUN)


def test_help_lists_every_stage_with_its_help_line(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    for stage in subcommand_stages():
        assert f"{stage.name} {stage.help}" in out
    assert " -> ".join(stages_of(RUN)) in out


def test_stage_options_reach_the_stage_command():
    args = cli.build_parser().parse_args(["evaluate", "--holdout-last", "3", "--truth", "t.pq"])
    assert (args.holdout_last, args.truth) == (3, "t.pq")
    args = cli.build_parser().parse_args(["update", "--events", "a.csv", "--recluster"])
    assert (args.events, args.recluster_now) == (["a.csv"], True)


def test_module_entry_point_runs():
    out = subprocess.run(
        [sys.executable, "-m", "usersegments", "--help"], capture_output=True, text=True, check=True
    )
    assert "usersegments" in out.stdout and "demo" in out.stdout


def test_generate_takes_the_realism_options_and_refuses_a_bad_one(tmp_path, capsys):
    import pandas as pd

    out = tmp_path / "generated"
    args = ["generate", "--output", str(out), "--users", "40", "--seed", "3"]
    assert cli.main([*args, "--item-popularity", "1.0", "--focused-secondary"]) == 0
    events = pd.read_parquet(out / "events.parquet")
    assert events["user_id"].nunique() >= 30
    assert cli.main([*args, "--item-popularity", "-0.5"]) == 2
    err = capsys.readouterr().err
    assert "item_popularity" in err and "Traceback" not in err
