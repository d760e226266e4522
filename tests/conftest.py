"""Shared fixtures: one local-mode SparkSession for the whole test session.

Spark UI off, two cores, few shuffle partitions. The delta-spark backend is
tested only when its jars are on the classpath: set USERSEGMENTS_DELTA_JARS to
a comma-separated list of jar paths (delta-spark and delta-storage) to wire them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from usersegments.config import Config, load_config  # noqa: E402
from usersegments.session import build_session, delta_spark_ready  # noqa: E402
from usersegments.store import TableStore  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DELTA_JARS_SKIP = (
    "Delta jars not on the classpath (set USERSEGMENTS_DELTA_JARS to test delta-spark)"
)


_TEST_OVERRIDES = (
    "spark.master=local[2]",
    "spark.shuffle_partitions=2",
    "spark.ui=off",
    "spark.driver_memory=2g",
    "spark.log_level=ERROR",
)


def make_config(root: str | os.PathLike[str], *overrides: str) -> Config:
    """A test config: local[2], small shuffles, UI off, tables under ``root``."""
    base = list(_TEST_OVERRIDES)
    jars = os.environ.get("USERSEGMENTS_DELTA_JARS")
    if jars:
        base.append(f"spark.conf.spark.jars={jars}")
        base.append("spark.conf.spark.sql.extensions=io.delta.sql.DeltaSparkSessionExtension")
        base.append(
            "spark.conf.spark.sql.catalog.spark_catalog="
            "org.apache.spark.sql.delta.catalog.DeltaCatalog"
        )
    return load_config(overrides=[*base, *overrides], output=str(root))


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    """The one SparkSession of the test run."""
    cfg = make_config(tmp_path_factory.mktemp("spark-root"))
    session = build_session(cfg)
    assert os.environ["PYSPARK_PYTHON"] == sys.executable
    yield session
    session.stop()


@pytest.fixture
def cfg(tmp_path) -> Config:
    """A fresh test config whose store root is this test's temporary folder."""
    return make_config(tmp_path / "store")


@pytest.fixture(params=["delta-rs", "delta-spark"])
def store(request, spark, tmp_path) -> TableStore:
    """A TableStore on each backend; delta-spark skips without its jars."""
    if request.param == "delta-spark" and not delta_spark_ready(spark):
        pytest.skip(DELTA_JARS_SKIP)
    cfg = make_config(tmp_path / "store", f"store.backend={request.param}")
    return TableStore.from_config(spark, cfg)


@pytest.fixture
def rs_store(spark, cfg) -> TableStore:
    """A TableStore on the embedded delta-rs backend."""
    return TableStore.from_config(spark, make_config(cfg.store.root, "store.backend=delta-rs"))


PLANTED_OVERRIDES = ("privacy.min_segment_size=10", "cluster.sub.target_size=25")


@pytest.fixture(scope="session")
def planted(spark, tmp_path_factory):
    """700 generated users (14 planted areas, no drift) through `usersegments run`.

    The full command runs in this process on the test session's Spark: ingest,
    embed, profile, cluster, label, recommend and report. Returns the store, the
    config, the run id and the generated data with its file paths.
    """
    from usersegments.cli import main
    from usersegments.synthetic import GeneratorSettings, generate, write

    root = tmp_path_factory.mktemp("planted")
    data = generate(GeneratorSettings(users=700, seed=21, drift_share=0.0))
    paths = write(data, root / "input")
    cfg = make_config(root / "store", *PLANTED_OVERRIDES)
    overrides = [arg for o in [*_TEST_OVERRIDES, *PLANTED_OVERRIDES] for arg in ("--set", o)]
    code = main(
        [
            "run",
            "--output",
            cfg.store.root,
            *overrides,
            "--events",
            paths["events_parquet"],
            "--items",
            paths["items"],
            "--truth",
            paths["truth"],
        ]
    )
    assert code == 0
    store = TableStore.from_config(spark, cfg)
    run_id = store.read("runs").filter("command = 'run'").first()["run_id"]
    return Planted(store=store, cfg=cfg, run_id=run_id, data=data, paths=paths)


@dataclass
class Planted:
    """The planted run: its store, config, run id, generated data and input paths."""

    store: TableStore
    cfg: Config
    run_id: str
    data: object
    paths: dict[str, str]


# ---------------------------------------------------------------------------
# spark-submit jobs, run in the background from collection on

SMALL = ("cluster.k=6", "privacy.min_segment_size=10", "cluster.sub.target_size=25")
SPARK_SUBMIT_JOBS = pytest.StashKey[Future]()
_JOBS_TEST = "test_jobs_run_under_spark_submit"


def submit_jobs(workdir: Path) -> dict[str, str]:
    """Run jobs/run_pipeline.py on a first window of generated events, then
    jobs/update_segments.py with the second and jobs/evaluate.py, each in its own
    ``spark-submit --master local[2]``; returns each job's stdout and the output root."""
    from usersegments.synthetic import GeneratorSettings, generate, split_at, write

    data = generate(GeneratorSettings(users=120, seed=3))
    first, second = split_at(data, datetime.fromisoformat(str(data.manifest["drift_date"])))
    window1, window2 = write(first, workdir / "w1"), write(second, workdir / "w2")
    output = workdir / "out"
    spark_submit = Path(sys.executable).parent / "spark-submit"
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "CI": "true", "HF_HUB_OFFLINE": "1"}
    common = ["--config", str(REPO / "conf" / "local.yaml"), "--output", str(output)]
    for setting in (*_TEST_OVERRIDES, *SMALL):
        common += ["--set", setting]
    runs = {
        "run_pipeline.py": ["--events", window1["events_csv"], "--items", window1["items"]],
        "update_segments.py": ["--events", window2["events_csv"], "--items", window2["items"]],
        "evaluate.py": ["--truth", window2["truth"]],
    }
    outputs = {"output": str(output)}
    for job, args in runs.items():
        command = [str(spark_submit), "--master", "local[2]", "--driver-memory", "2g"]
        with subprocess.Popen(
            [*command, str(REPO / "jobs" / job), *common, *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ) as process:
            _RUNNING[job] = process
            stdout, stderr = process.communicate(timeout=900)
        _RUNNING.pop(job, None)
        if process.returncode != 0:
            raise AssertionError(
                f"spark-submit {job} exited {process.returncode}:\n{stdout[-3000:]}\n"
                f"{stderr[-4000:]}"
            )
        outputs[job] = stdout
    return outputs


_RUNNING: dict[str, subprocess.Popen] = {}


def pytest_collection_modifyitems(session, config, items):
    """The spark-submit test waits for the background jobs: run it last."""
    items.sort(key=lambda item: item.name == _JOBS_TEST)


def pytest_collection_finish(session):
    """Start the spark-submit jobs when their test was collected: they are separate
    JVMs, so they overlap the in-process tests instead of adding to the suite's time."""
    if not any(item.name == _JOBS_TEST for item in session.items):
        return
    workdir = Path(tempfile.mkdtemp(prefix="usersegments-jobs-"))
    future: Future = Future()

    def work() -> None:
        try:
            future.set_result(submit_jobs(workdir))
        except BaseException as exc:  # handed to the test that waits for it
            future.set_exception(exc)

    threading.Thread(target=work, name="spark-submit-jobs", daemon=True).start()
    session.config.stash[SPARK_SUBMIT_JOBS] = future

    def cleanup() -> None:
        for process in list(_RUNNING.values()):
            process.kill()
        shutil.rmtree(workdir, ignore_errors=True)

    session.config.add_cleanup(cleanup)
