"""Session factory settings and the command-line contract."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
from pyspark.sql import functions as F

from tests.conftest import REPO
from usersegments import cli
from usersegments.config import load_config
from usersegments.errors import StageNotAvailable
from usersegments.pipeline import stage_function
from usersegments.session import DELTA_EXTENSION, session_conf, wants_delta_spark


def test_python_workers_use_this_interpreter(spark):
    @F.pandas_udf("string")
    def where(s: pd.Series) -> pd.Series:
        return s.map(lambda _: sys.executable)

    seen = spark.range(2).select(where(F.col("id").cast("string")).alias("exe")).collect()
    assert {r.exe for r in seen} == {sys.executable}


def test_local_conf(monkeypatch):
    monkeypatch.setenv("CI", "true")
    conf = session_conf(load_config(overrides=["spark.shuffle_partitions=3"]))
    assert conf["spark.pyspark.python"] == sys.executable
    assert conf["spark.ui.enabled"] == "false"
    assert conf["spark.sql.shuffle.partitions"] == "3"
    assert conf["spark.sql.execution.arrow.pyspark.enabled"] == "true"
    assert "spark.sql.extensions" not in conf  # no Delta jars asked for


def test_cluster_conf_never_sets_master_or_driver_memory():
    conf = session_conf(load_config(overrides=["spark.mode=cluster", "store.backend=delta-spark"]))
    assert not any(k in conf for k in ("spark.master", "spark.driver.memory"))
    assert conf["spark.sql.extensions"] == DELTA_EXTENSION


def test_delta_wiring_follows_backend_and_jars():
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
    commands = [
        "generate",
        "ingest",
        "embed",
        "profile",
        "cluster",
        "label",
        "recommend",
        "report",
        "maintain",
        "run",
        "update",
        "evaluate",
        "demo",
    ]
    for command in commands:
        args = parser.parse_args(
            [command, "--config", "c.yaml", "--set", "a.b=1", "--set", "c.d=2", "--output", "out"]
        )
        assert (args.config, args.overrides, args.output) == ("c.yaml", ["a.b=1", "c.d=2"], "out")


def test_module_entry_point_runs():
    out = subprocess.run(
        [sys.executable, "-m", "usersegments", "--help"], capture_output=True, text=True, check=True
    )
    assert "usersegments" in out.stdout and "demo" in out.stdout
