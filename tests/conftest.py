"""Shared fixtures: one local-mode SparkSession for the whole test session.

Spark UI off, two cores, few shuffle partitions. The delta-spark backend is
tested only when its jars are on the classpath: set USERSEGMENTS_DELTA_JARS to
a comma-separated list of jar paths (delta-spark and delta-storage) to wire them.
"""

from __future__ import annotations

import os
import sys
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


def make_config(root: str | os.PathLike[str], *overrides: str) -> Config:
    """A test config: local[2], small shuffles, UI off, tables under ``root``."""
    base = [
        "spark.master=local[2]",
        "spark.shuffle_partitions=2",
        "spark.ui=off",
        "spark.driver_memory=2g",
        "spark.log_level=ERROR",
    ]
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
