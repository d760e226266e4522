"""Shared fixtures: one local-mode SparkSession for the whole test session.

Spark UI off, two cores, few shuffle partitions. The delta-spark backend is
tested only when its jars are on the classpath: set USERSEGMENTS_DELTA_JARS to
a comma-separated list of jar paths (delta-spark and delta-storage) to wire them.
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


def set_args(*overrides: str) -> list[str]:
    """``--set KEY=VALUE`` command-line arguments: the test settings, then ``overrides``."""
    return [arg for o in [*_TEST_OVERRIDES, *overrides] for arg in ("--set", o)]


PLANTED_OVERRIDES = ("privacy.min_segment_size=10", "cluster.sub.target_size=25")


@pytest.fixture(scope="session")
def planted(spark, tmp_path_factory):
    """700 generated users (14 planted areas, no drift) through the full run.

    The run is ``jobs/run_pipeline.py`` under ``spark-submit`` (so every planted
    test also proves the job): ingest, embed, profile, cluster, label, recommend
    and report. Returns the store, the config, the run id and the generated data
    with its file paths.
    """
    from usersegments.synthetic import GeneratorSettings, generate, write

    root = tmp_path_factory.mktemp("planted")
    data = generate(GeneratorSettings(users=700, seed=21, drift_share=0.0))
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


def spark_submit(job: str, *args: str) -> str:
    """Run ``jobs/<job>`` under ``spark-submit --master local[2]`` with this interpreter
    as the driver and workers; returns its stdout, or fails with its output."""
    command = [
        str(Path(sys.executable).parent / "spark-submit"),
        "--master",
        "local[2]",
        "--driver-memory",
        "2g",
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
