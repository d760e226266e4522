"""Crashes survived: a run killed in the middle of any stage leaves every table at a
committed version, and resuming it (``run --resume``) or running the same command
again ends with the tables an uninterrupted run writes.

The crash is an exception injected right after the stage's first commit (its first
Delta write, merge or compaction; for the report, its first file), raised out of the
real CLI.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import FEW_USERS, make_config, set_args
from usersegments import cli, pipeline
from usersegments.report import publish as report_module
from usersegments.runlog import completed_stages
from usersegments.stages import RUN, stages_of
from usersegments.store import TableStore
from usersegments.testing.synthetic import GeneratorSettings, generate, split_at, write

pytestmark = pytest.mark.slow

SETTINGS = (
    *FEW_USERS,
    "store.compact_min_files=2",  # so that the maintain stage commits a compaction
)
# Columns that name the run or the wall-clock time of a write: they differ between
# any two runs by design, so the comparison leaves them out.
RUN_COLUMNS = {"run_id", "events_through", "rejected_at", "created_at"}
BOOKKEEPING = {"runs", "run_metrics"}


class InjectedCrash(RuntimeError):
    """The simulated death of the process in the middle of a stage."""


@contextmanager
def crash_after_first_write(monkeypatch: pytest.MonkeyPatch, stage: str) -> Iterator[None]:
    """While ``stage`` runs, its first commit succeeds and then the process "dies"."""
    armed = {"on": False}
    real_stage_function = pipeline.stage_function

    def stage_function(name: str) -> Callable:
        fn = real_stage_function(name)
        if name != stage:
            return fn

        def in_stage(*args, **kwargs):
            armed["on"] = True
            try:
                return fn(*args, **kwargs)
            finally:
                armed["on"] = False

        return in_stage

    def then_crash(method: Callable) -> Callable:
        def committed(self, df, name, *args, **kwargs):
            out = method(self, df, name, *args, **kwargs)
            if armed["on"] and name not in BOOKKEEPING:
                raise InjectedCrash(f"killed in {stage} after committing '{name}'")
            return out

        return committed

    real_maintain = TableStore.maintain

    def maintained(self, name, *args, **kwargs):
        out = real_maintain(self, name, *args, **kwargs)
        if armed["on"] and out.compacted:
            raise InjectedCrash(f"killed in {stage} after compacting '{name}'")
        return out

    real_filesystem = report_module._filesystem

    def report_filesystem(root: str):
        filesystem, path = real_filesystem(root)
        return _CrashAfterFirstFile(filesystem, stage, armed), path

    with monkeypatch.context() as patch:
        patch.setattr(pipeline, "stage_function", stage_function)
        patch.setattr(TableStore, "write", then_crash(TableStore.write))
        patch.setattr(TableStore, "merge", then_crash(TableStore.merge))
        patch.setattr(TableStore, "maintain", maintained)
        patch.setattr(report_module, "_filesystem", report_filesystem)
        yield


class _CrashAfterFirstFile:
    """A pyarrow filesystem whose second output stream fails: the first file is written."""

    def __init__(self, filesystem, stage: str, armed: dict[str, bool]) -> None:
        self._filesystem = filesystem
        self._stage = stage
        self._armed = armed
        self._files = 0

    def open_output_stream(self, path: str, *args, **kwargs):
        if self._armed["on"] and self._files >= 1:
            raise InjectedCrash(f"killed in {self._stage} after writing one report file")
        self._files += 1
        return self._filesystem.open_output_stream(path, *args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._filesystem, name)


def snapshot(store: TableStore) -> dict[str, pd.DataFrame]:
    """Every table's rows, sorted, without the columns that name the run or write time."""
    tables = {}
    for name in store.tables():
        if name in BOOKKEEPING:
            continue
        pdf = store.read(name).toPandas()
        pdf = pdf.drop(columns=[c for c in pdf.columns if c in RUN_COLUMNS])
        for column in pdf.columns:
            if pdf[column].map(lambda v: isinstance(v, list | np.ndarray)).any():
                pdf[column] = pdf[column].map(_comparable)
        tables[name] = pdf.sort_values(list(pdf.columns)).reset_index(drop=True)
    return tables


def _comparable(value) -> tuple:
    values = np.asarray(value)
    if values.dtype.kind == "f":
        return tuple(np.round(values.astype(float), 5))
    return tuple(values.tolist())


def assert_same_tables(
    got: dict[str, pd.DataFrame], want: dict[str, pd.DataFrame], **compare: object
) -> None:
    """The same tables with the same rows; ``compare`` goes to ``assert_frame_equal``
    (e.g. ``check_exact=False, atol=1e-6`` for floats summed in another order)."""
    assert sorted(got) == sorted(want)
    for name in want:
        pd.testing.assert_frame_equal(got[name], want[name], obj=f"table '{name}'", **compare)


def assert_committed(store: TableStore, failed_runs: int) -> None:
    """After a crash: every table reads at its latest commit, the run is marked failed and
    the root's lock is gone."""
    for name in store.tables():
        versions = [v.version for v in store.history(name)]
        assert versions == sorted(versions, reverse=True)
        latest = store.read_version(name, versions[0])
        assert store.read(name).exceptAll(latest).isEmpty(), name
    runs = store.read("runs").toPandas()
    assert (runs["status"] == "failed").sum() == failed_runs
    assert not (Path(store.root) / "_usersegments.lock").exists()


def drift_windows(root: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Two windows of 80 generated users written under ``root``: before and after the
    planted drift (the session fixture ``windows`` in tests/conftest.py)."""
    data = generate(GeneratorSettings(users=80, seed=3, items_per_style=8, drift_share=0.25))
    first, second = split_at(data, datetime.fromisoformat(data.manifest["drift_date"]))
    return write(first, root / "window1"), write(second, root / "window2")


def command(name: str, root: Path, paths: dict[str, str], *overrides: str) -> list[str]:
    """The CLI arguments of ``usersegments <name>`` on one window into ``root``, with
    ``SETTINGS`` and then ``overrides``."""
    return [
        name,
        "--output",
        str(root),
        *set_args(*SETTINGS, *overrides),
        "--events",
        paths["events_parquet"],
        "--items",
        paths["items"],
    ]


def uninterrupted_tables(spark, root: Path, windows) -> tuple[dict, dict]:
    """The tables of an uninterrupted run on window 1 and of the update on window 2 into
    ``root``, on the local default backend (delta-rs): the session fixture
    ``uninterrupted`` in tests/conftest.py, shared with tests/test_delta_spark.py."""
    store = TableStore.from_config(spark, make_config(root, *SETTINGS))
    assert store.backend == "delta-rs"
    assert cli.main(command("run", root, windows[0])) == 0
    after_run = snapshot(store)
    assert cli.main(command("update", root, windows[1])) == 0
    return after_run, snapshot(store)


def test_a_crash_in_any_stage_is_finished_by_resuming_or_rerunning(
    spark, tmp_path, monkeypatch, windows, uninterrupted
):
    after_run, after_update = uninterrupted
    root = tmp_path / "store"
    store = TableStore.from_config(spark, make_config(root, *SETTINGS))

    def killed_in(stage: str, name: str, window: dict[str, str], *resume: str) -> None:
        with crash_after_first_write(monkeypatch, stage), pytest.raises(InjectedCrash):
            cli.main([*command(name, root, window), *resume])
        assert_committed(store, failed_runs=1)

    # The run dies in its first stage; each resume goes on from the stage that died
    # (re-running it over what the dead attempt committed) and dies in the next one,
    # so every stage is killed once and resumed once.
    stages = stages_of(RUN)
    killed_in(stages[0], "run", windows[0])
    run_id = store.read("runs").first()["run_id"]
    for done, stage in enumerate(stages[1:], start=1):
        killed_in(stage, "run", windows[0], "--resume", run_id)
        assert completed_stages(store, run_id) == set(stages[:done])
    assert cli.main([*command("run", root, windows[0]), "--resume", run_id]) == 0
    runs = store.read("runs").toPandas()
    assert runs["run_id"].tolist() == [run_id]
    assert runs["status"].tolist() == ["succeeded"]
    seconds = store.read("run_metrics").filter("metric = 'seconds'").groupBy("stage").count()
    assert {row["stage"]: row["count"] for row in seconds.collect()} == dict.fromkeys(stages, 1)
    assert_same_tables(snapshot(store), after_run)

    # The update dies after its fold; running it again (not resumed) must not fold twice.
    with crash_after_first_write(monkeypatch, "update"), pytest.raises(InjectedCrash):
        cli.main(command("update", root, windows[1]))
    assert_committed(store, failed_runs=1)
    assert cli.main(command("update", root, windows[1])) == 0
    assert_same_tables(snapshot(store), after_update)
    report = (root / "report" / "index.html").read_text(encoding="utf-8")
    assert all((root / "report" / image).exists() for image in _images(report))


def _images(page: str) -> list[str]:
    return [part.split("'", 1)[0] for part in page.split("src='")[1:]]
