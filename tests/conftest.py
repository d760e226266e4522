"""Shared fixtures: one local-mode SparkSession for the whole test session.

Spark UI off, two cores, few shuffle partitions. The session carries the
delta-spark jars that ``make`` fetched (``usersegments.delta_jars``), so every
store-parametrised test runs on both backends. Without those jars the
delta-spark cases skip, naming the fix, except under CI (``CI`` set), where they
fail: CI must prove both backends.
"""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from usersegments import delta_jars  # noqa: E402
from usersegments.config import Config, load_config  # noqa: E402
from usersegments.session import build_session, delta_spark_ready  # noqa: E402
from usersegments.store import TableStore  # noqa: E402
from usersegments.testing.synthetic import GeneratorSettings  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


QUICK_JIT = "-XX:TieredStopAtLevel=1"
_TEST_OVERRIDES = (
    "spark.master=local[2]",
    "spark.shuffle_partitions=2",
    "spark.ui=off",
    "spark.driver_memory=2g",
    "spark.log_level=ERROR",
    # The tests run hundreds of small queries of many shapes: compiling each to Java
    # bytecode costs more than evaluating it on a few hundred rows. Interpreted
    # evaluation cuts a small run by a fifth (80-user run + update, same process:
    # 28 s + 18 s compiled, 22 s + 15 s interpreted). Real data keeps Spark's codegen.
    "spark.conf.spark.sql.codegen.wholeStage=false",
    "spark.conf.spark.sql.codegen.factoryMode=NO_CODEGEN",
    # One coarse fit instead of cluster.restarts: each restart is a bisecting fit and its
    # refining passes, seconds per clustering on 2 cores, and on generated data the
    # restarts end alike (1M events: four restarts, one cohesion). The choice among
    # restarts has its own test (test_the_coarse_fit_keeps_its_most_cohesive_restart).
    "cluster.restarts=1",
    # The JVM's quick (C1) compiler only: the tests' JVMs live minutes and run many
    # small queries of many shapes, so the optimising compiler's work on two cores
    # costs more than it returns (profile/cluster + label unit tests: 41.2 s and
    # 36.7 s against 34.6 s and 31.6 s). Real runs keep both compilers.
    f"spark.conf.spark.driver.extraJavaOptions={QUICK_JIT}",
    # The suite's one JVM runs thousands of jobs, and Spark's status store keeps the last
    # 1,000 jobs, stages and SQL executions with their plans' metrics even with the UI
    # off: in the middle of a full run the heap held 584k SQLPlanMetric objects and 481 MB
    # of long arrays after a full GC, 1.35 of its 1.36 GB old generation at the peak, and
    # one run's evaluate job ran out of heap there. No test reads that history.
    "spark.conf.spark.ui.retainedJobs=100",
    "spark.conf.spark.ui.retainedStages=100",
    "spark.conf.spark.sql.ui.retainedExecutions=50",
)


def make_config(root: str | os.PathLike[str], *overrides: str) -> Config:
    """A test config: local[2], small shuffles, UI off, tables under ``root``."""
    return load_config(overrides=[*_TEST_OVERRIDES, *overrides], output=str(root))


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


def require_delta_spark(spark) -> None:
    """Skip (fail under CI) unless ``spark`` has the delta-spark jars and extension."""
    if delta_spark_ready(spark):
        return
    if delta_jars.fetched_jars():
        why = f"the jars in {delta_jars.JARS_DIR} were not loaded (session started elsewhere?)"
    else:
        why = delta_jars.missing_reason()
    reason = f"delta-spark not on the test session: {why}"
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must test both backends)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(params=["delta-rs", pytest.param("delta-spark", marks=pytest.mark.delta_spark)])
def store(request, spark, tmp_path) -> TableStore:
    """A TableStore on each backend; delta-spark needs its jars (``require_delta_spark``)."""
    if request.param == "delta-spark":
        require_delta_spark(spark)
    cfg = make_config(tmp_path / "store", f"store.backend={request.param}")
    return TableStore.from_config(spark, cfg)


@pytest.fixture
def rs_store(spark, cfg) -> TableStore:
    """A TableStore on the embedded delta-rs backend."""
    return TableStore.from_config(spark, make_config(cfg.store.root, "store.backend=delta-rs"))


def set_args(*overrides: str) -> list[str]:
    """``--set KEY=VALUE`` command-line arguments: the test settings, then ``overrides``."""
    return [arg for o in [*_TEST_OVERRIDES, *overrides] for arg in ("--set", o)]


PLANTED_OVERRIDES = ("privacy.min_segment_size=10", "cluster.sub.target_size=25")


PLANTED_SETTINGS = GeneratorSettings(
    users=700, seed=21, drift_share=0.0, item_popularity=1.0, focused_secondary=True
)


@pytest.fixture(scope="session")
def planted(spark, tmp_path_factory):
    """700 generated users (14 planted areas, no drift) through the full run.

    Items are drawn with Zipf popularity within a sub-style, and a secondary interest
    is a sub-style of its area as the primary is: real catalogues are skewed and real
    second interests are specific, and recommendations blended from several interests
    only pay where both hold (``PLANTED_SETTINGS``).

    The run is ``jobs/run_pipeline.py`` under ``spark-submit`` (so every planted
    test also proves the job): ingest, embed, profile, cluster, label, recommend
    and report. Returns the store, the config, the run id and the generated data
    with its file paths.
    """
    from usersegments.testing.synthetic import generate, write

    root = tmp_path_factory.mktemp("planted")
    data = generate(PLANTED_SETTINGS)
    paths = write(data, root / "input")
    cfg = make_config(root / "store", *PLANTED_OVERRIDES)
    overrides = set_args(*PLANTED_OVERRIDES)
    out = spark_submit(
        "run_pipeline.py",
        "--output",
        cfg.store.root,
        *overrides,
        "--events",
        paths["events_parquet"],
        "--items",
        paths["items"],
        "--truth",
        paths["truth"],
    )
    assert "report:" in out
    store = TableStore.from_config(spark, cfg)
    run_id = store.read("runs").filter("command = 'run'").first()["run_id"]
    return Planted(store=store, cfg=cfg, run_id=run_id, data=data, paths=paths)


@pytest.fixture(scope="session")
def windows(tmp_path_factory):
    """Two windows of 80 generated users, before and after the planted drift
    (``tests.test_faults.drift_windows``)."""
    from tests.test_faults import drift_windows

    return drift_windows(tmp_path_factory.mktemp("fault-input"))


@pytest.fixture(scope="session")
def uninterrupted(spark, tmp_path_factory, windows):
    """The tables of an uninterrupted ``run`` on window 1 and ``update`` on window 2 on
    delta-rs: what a crashed-and-resumed run (tests/test_faults.py) and the same commands
    on delta-spark (tests/test_delta_spark.py) must end with. Built once per session."""
    from tests.test_faults import uninterrupted_tables

    root = tmp_path_factory.mktemp("uninterrupted") / "store"
    return uninterrupted_tables(spark, root, windows)


@dataclass
class Planted:
    """The planted run: its store, config, run id, generated data and input paths."""

    store: TableStore
    cfg: Config
    run_id: str
    data: object
    paths: dict[str, str]


# ---------------------------------------------------------------------------
# spark-submit jobs

SMALL = ("cluster.k=6", "privacy.min_segment_size=10", "cluster.sub.target_size=25")
# A few dozen users, as the fault and stream tests use them: small segments, no
# re-clustering (so an update only moves users), a short half-life.
FEW_USERS = (
    "cluster.k=4",
    "privacy.min_segment_size=5",
    "cluster.sub.target_size=10",
    "profile.half_life_days=14",
    "update.recluster_threshold=1.0",
)


def spark_submit(job: str, *args: str) -> str:
    """Run ``jobs/<job>`` under ``spark-submit --master local[2]`` with this interpreter
    as the driver and workers; returns its stdout, or fails with its output."""
    command = [
        str(Path(sys.executable).parent / "spark-submit"),
        "--master",
        "local[2]",
        "--driver-memory",
        "2g",
        "--driver-java-options",
        QUICK_JIT,
        str(REPO / "jobs" / job),
        *args,
    ]
    environment = {
        **os.environ,
        "PYSPARK_PYTHON": sys.executable,
        "CI": "true",
        "HF_HUB_OFFLINE": "1",
    }
    done = subprocess.run(
        command, env=environment, capture_output=True, text=True, timeout=900, check=False
    )
    assert done.returncode == 0, (
        f"spark-submit {job} exited {done.returncode}:\n{done.stdout[-3000:]}\n"
        f"{done.stderr[-4000:]}"
    )
    return done.stdout


def run_job(job: str, *args: str) -> int:
    """Run ``jobs/<job>`` in this process on the test session (its ``__main__`` block, the
    script spark-submit runs, without a cold JVM per call); returns its exit status."""
    argv = sys.argv
    sys.argv = [str(REPO / "jobs" / job), *args]
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
    except SystemExit as done:
        return int(done.code or 0)
    finally:
        sys.argv = argv
    raise AssertionError(f"jobs/{job} ended without sys.exit")


# Fixtures that run the pipeline end to end: a test that uses one is slow wherever
# it lives, so the unit lane (``make test-fast``, ``-m "not slow"``) leaves it out.
END_TO_END_FIXTURES = frozenset(
    {
        "planted",
        "dynamic",
        "notebook_runs",
        "uninterrupted",
        "tuned",
        "report_root",
        "interests_update",
        "few_new",
        "few_new_history",
    }
)


def pytest_collection_modifyitems(config, items):
    """Mark every test that uses an end-to-end fixture as ``slow``, and keep the tests
    that share a fixture in one worker when ``make test`` runs them in parallel
    (``--dist loadgroup``): the planted run's users together, every module's together,
    so each expensive fixture is built once."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if END_TO_END_FIXTURES & fixtures:
            item.add_marker(pytest.mark.slow)
        group = "planted" if "planted" in fixtures else item.module.__name__
        item.add_marker(pytest.mark.xdist_group(group))
