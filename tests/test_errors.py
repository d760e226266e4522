"""Errors a user can fix get the right type, exit code and a message naming the fix."""

from __future__ import annotations

import pytest

from tests.conftest import make_config, set_args
from usersegments import cli, pipeline
from usersegments.errors import (
    ConfigError,
    InputError,
    MissingTableError,
    ResourceError,
    SetupError,
    StoreError,
)
from usersegments.runlog import RunLog, check_resumable
from usersegments.schema import EVENTS, TEXT_EMBEDDINGS
from usersegments.store import TableStore


def _run(capsys, *argv: str) -> tuple[int, str]:
    code = cli.main(list(argv))
    return code, capsys.readouterr().err


def test_user_fixable_errors_exit_2_and_the_others_1():
    assert {ConfigError.exit_code, InputError.exit_code, MissingTableError.exit_code} == {2}
    assert StoreError.exit_code == SetupError.exit_code == 1
    assert issubclass(MissingTableError, StoreError)


def test_a_stage_before_its_tables_exist_names_the_table_and_the_command(tmp_path, capsys):
    code, err = _run(capsys, "label", "--output", str(tmp_path / "store"), *set_args())
    assert code == 2
    assert err.startswith("usersegments label: table 'segments' does not exist")
    assert "usersegments run" in err
    assert err.count("\n") == 1  # one line, no stack trace


@pytest.mark.slow
def test_holdout_below_one_names_the_option_before_touching_tables(tmp_path, capsys):
    root = str(tmp_path / "store")
    code, err = _run(capsys, "evaluate", "--holdout-last", "0", "--output", root, *set_args())
    assert code == 2
    assert "--holdout-last" in err and "got 0" in err


@pytest.mark.slow
def test_profiles_of_an_empty_events_table_is_an_input_error(spark, tmp_path, capsys):
    root = tmp_path / "store"
    store = TableStore.from_config(spark, make_config(root))
    store.write(spark.createDataFrame([], EVENTS), "events")
    store.write(spark.createDataFrame([], TEXT_EMBEDDINGS), "text_embeddings")
    code, err = _run(capsys, "profile", "--output", str(root), *set_args())
    assert code == 2
    assert "events table is empty" in err and "usersegments ingest" in err


@pytest.mark.parametrize(
    ("override", "named"),
    [("cluster.k=0", "cluster.k"), ("store.backend=nope", "store.backend")],
)
def test_a_bad_setting_is_a_config_error_naming_the_key(override, named, capsys):
    code, err = _run(capsys, "config", "--set", override)
    assert code == 2
    assert named in err and err.count("\n") == 1


@pytest.mark.slow
def test_a_stage_out_of_java_heap_names_the_memory_settings_and_the_resume(
    spark, tmp_path, capsys, monkeypatch
):
    """A Spark task's OutOfMemoryError (here raised by the JVM's own ``raise_error`` in the
    profile stage's first query) ends the command with one line naming the settings."""
    real_stage_function = pipeline.stage_function

    def failing(name):
        if name != "profile":
            return real_stage_function(name)

        def profile(spark, *args, **kwargs):
            spark.sql("SELECT raise_error('java.lang.OutOfMemoryError: Java heap space')").collect()

        return profile

    monkeypatch.setattr(pipeline, "stage_function", failing)
    root = tmp_path / "store"
    code, err = _run(capsys, "profile", "--output", str(root), *set_args())
    assert code == ResourceError.exit_code == 1
    assert err.startswith("usersegments profile: stage 'profile' ran out of Java heap")
    assert "spark.driver_memory=2g" in err and "spark.shuffle_partitions" in err
    assert err.rstrip().endswith("Then run `usersegments profile` again.")
    assert err.count("\n") == 1  # one line, no stack trace
    store = TableStore.from_config(spark, make_config(root))
    (run,) = store.read("runs").collect()
    run_id = run["run_id"]
    assert run["status"] == "failed"
    # A `run` is told how to go on: `run --resume` with its id.
    cfg = make_config(root)
    told = str(pipeline.out_of_memory("cluster", cfg, RunLog(spark, store, cfg, "run", "r-1")))
    assert told.startswith("stage 'cluster' stopped Spark (an uncaught error in its JVM")
    assert not pipeline.spark_stopped(spark)
    assert told.endswith(
        "Then go on with `usersegments run --resume r-1` (the stages that completed are kept)."
    )
    # The run may go on with more memory; a setting that shapes the tables must match.
    more_memory = make_config(root, "spark.driver_memory=8g", "spark.shuffle_partitions=16")
    check_resumable(store, run_id, "profile", more_memory)
    with pytest.raises(InputError, match="cluster.k"):
        check_resumable(store, run_id, "profile", make_config(root, "cluster.k=5"))
