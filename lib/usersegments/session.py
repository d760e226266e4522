"""The one SparkSession factory: local, cluster (spark-submit) and Databricks.

The mode comes from ``spark.mode`` in the config, never guessed from the
environment. Delta Lake's session extension and catalog are wired only when
the session will have Delta's jars (naming the catalog without them breaks
every catalog call): off local mode whenever the store may use delta-spark
(spark-submit's ``--packages`` or the Databricks runtime bring them); in local
mode when the jars ``make`` fetched (``usersegments.delta_jars``) are there, which
the session then puts on its classpath, or when the settings name Delta jars.
delta-rs writes from the driver alone, so it is refused off local mode.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys

from pyspark.sql import SparkSession

from usersegments import delta_jars
from usersegments.config import Config
from usersegments.errors import ConfigError, SetupError

log = logging.getLogger(__name__)

DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
DELTA_CATALOG = "org.apache.spark.sql.delta.catalog.DeltaCatalog"
MIN_JAVA = 17

JAVA_INSTALL_HINT = (
    "install Java 17 or newer (Debian/Ubuntu: apt-get install -y openjdk-17-jre-headless; "
    "macOS: brew install openjdk@17) and put it on PATH or set JAVA_HOME"
)


def build_session(cfg: Config) -> SparkSession:
    """Return the SparkSession for ``cfg.spark.mode``.

    - local: starts Spark in this process with ``cfg.spark.master``; Python
      workers use this interpreter; Arrow on; UI off under CI (``spark.ui=auto``).
      Under ``spark-submit`` (``--master local[2] jobs/...``) the master and the
      driver memory given to spark-submit win.
    - cluster: ``getOrCreate`` over what ``spark-submit`` configured; the master
      and resources are never overridden.
    - databricks: the notebook's or job's active session, unchanged.
    """
    check_backend_for_mode(cfg)
    mode = cfg.spark.mode
    if mode == "databricks":
        active = SparkSession.getActiveSession()
        if active is None:
            raise ConfigError(
                "spark.mode is 'databricks' but there is no active SparkSession; run inside a "
                "Databricks notebook or job, or set spark.mode to local or cluster"
            )
        return active
    builder = SparkSession.builder.appName(cfg.spark.app_name)
    for key, value in session_conf(cfg).items():
        builder = builder.config(key, value)
    if mode == "local":
        check_java()
        # Workers are started from PYSPARK_PYTHON, not from spark.pyspark.python, in local
        # mode: without this they run the system python and cannot import pandas.
        os.environ["PYSPARK_PYTHON"] = sys.executable
        if not launched_by_spark_submit():
            builder = builder.master(cfg.spark.master)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(cfg.spark.log_level)
    return spark


def launched_by_spark_submit() -> bool:
    """True when this Python driver was started by ``spark-submit`` (its JVM is already up)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def session_conf(cfg: Config) -> dict[str, str]:
    """The Spark settings ``build_session`` applies for ``cfg`` (local and cluster modes)."""
    conf = {
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.session.timeZone": cfg.spark.session_timezone,
        "spark.sql.shuffle.partitions": str(cfg.spark.shuffle_partitions),
        # Parquet written for the delta-rs backend must carry microsecond timestamps.
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
        # pandas writes nanosecond timestamps, which Spark refuses as a type; read them
        # as epoch nanoseconds instead (ingest tells the unit by magnitude).
        "spark.sql.legacy.parquet.nanosAsLong": "true",
    }
    if cfg.spark.mode == "local":
        ui_on = cfg.spark.ui == "on" or (cfg.spark.ui == "auto" and not os.environ.get("CI"))
        conf.update(
            {
                "spark.pyspark.python": sys.executable,
                "spark.pyspark.driver.python": sys.executable,
                "spark.ui.enabled": "true" if ui_on else "false",
                "spark.ui.showConsoleProgress": "true",
                # Workers fork from a daemon that has torch and transformers imported.
                "spark.python.daemon.module": "usersegments.worker_daemon",
            }
        )
        if not launched_by_spark_submit():  # the JVM is up already under spark-submit
            conf["spark.driver.memory"] = cfg.spark.driver_memory
    delta = delta_conf(cfg)
    conf.update(delta)
    conf.update(cfg.spark.conf)
    if cfg.spark.mode == "local" and not launched_by_spark_submit():
        java_options = driver_java_options(cfg)
        if java_options:
            conf["spark.driver.extraJavaOptions"] = java_options
    if "spark.jars" in delta and cfg.spark.conf.get("spark.jars"):
        # Jars the settings name join the fetched Delta jars instead of replacing them.
        conf["spark.jars"] = f"{delta['spark.jars']},{cfg.spark.conf['spark.jars']}"
    return conf


_GC_FLAGS = {"parallel": "-XX:+UseParallelGC", "g1": "-XX:+UseG1GC"}


def driver_java_options(cfg: Config) -> str:
    """The local JVM's options: ``spark.local_gc``'s collector, then the options that
    ``spark.conf`` gives ``spark.driver.extraJavaOptions`` (one naming a collector
    itself is left alone)."""
    given = cfg.spark.conf.get("spark.driver.extraJavaOptions", "").strip()
    if re.search(r"-XX:\+Use\w*GC\b", given):
        return given
    return f"{_GC_FLAGS[cfg.spark.local_gc]} {given}".strip()


def delta_conf(cfg: Config) -> dict[str, str]:
    """Delta's extension and catalog when ``wants_delta_spark``; in a local session that
    Python starts, also the fetched jars (``spark.jars``), unless the settings bring
    Delta's jars themselves."""
    if not wants_delta_spark(cfg):
        return {}
    conf = {
        "spark.sql.extensions": DELTA_EXTENSION,
        "spark.sql.catalog.spark_catalog": DELTA_CATALOG,
    }
    if cfg.spark.mode == "local":
        # Delta rebuilds each table's state from its log in 50 tasks unless told; on one
        # machine that is 50 tiny tasks per read, so use the shuffle partitions instead.
        conf["spark.databricks.delta.snapshotPartitions"] = str(cfg.spark.shuffle_partitions)
    if cfg.spark.mode == "local" and not launched_by_spark_submit() and not names_delta_jars(cfg):
        jars = delta_jars.fetched_jars()
        if jars:
            conf["spark.jars"] = ",".join(jars)
    return conf


def wants_delta_spark(cfg: Config) -> bool:
    """Whether the session should be wired for delta-spark: asked for; or the settings
    name Delta jars; or ``auto`` off local mode (where it picks delta-spark); or ``auto``
    in a local session that Python starts, when the fetched jars are there."""
    if cfg.store.backend == "delta-rs":
        return False
    if cfg.store.backend == "delta-spark" or names_delta_jars(cfg):
        return True
    if cfg.spark.mode != "local":
        return True
    # Under spark-submit the JVM is up: only its own --jars/--packages can bring Delta.
    return not launched_by_spark_submit() and bool(delta_jars.fetched_jars())


def names_delta_jars(cfg: Config) -> bool:
    """Whether ``spark.conf`` brings Delta's jars itself (``spark.jars`` or ``--packages``)."""
    jars = " ".join(cfg.spark.conf.get(key, "") for key in ("spark.jars", "spark.jars.packages"))
    return "delta-spark" in jars or "io.delta" in jars


def check_backend_for_mode(cfg: Config) -> None:
    """Refuse ``store.backend: delta-rs`` off local mode: delta-rs commits from the driver
    alone, so on a cluster or Databricks the tables go through delta-spark."""
    if cfg.store.backend == "delta-rs" and cfg.spark.mode != "local":
        raise ConfigError(
            f"store.backend is 'delta-rs' but spark.mode is '{cfg.spark.mode}': delta-rs "
            "writes from the driver alone and runs in local mode only; set store.backend to "
            f"delta-spark (or auto) and give Spark the Delta jars (--packages "
            f"{delta_jars.package()}; Databricks runtimes include them)"
        )


def delta_spark_ready(spark: SparkSession) -> bool:
    """True when the session can use delta-spark: Delta classes load and its extension is on."""
    extensions = spark.conf.get("spark.sql.extensions", "") or ""
    if DELTA_EXTENSION not in extensions:
        return False
    return delta_classes_loaded(spark)


def delta_classes_loaded(spark: SparkSession) -> bool:
    """True when the JVM behind ``spark`` can load ``io.delta.tables.DeltaTable``."""
    jvm = getattr(spark, "_jvm", None)
    if jvm is None:  # Spark Connect: no JVM handle; the server decides.
        return True
    from py4j.java_gateway import JavaClass

    return isinstance(jvm.io.delta.tables.DeltaTable, JavaClass)


def check_java() -> None:
    """Fail with the install line when Java is missing or older than 17."""
    java_home = os.environ.get("JAVA_HOME")
    java = os.path.join(java_home, "bin", "java") if java_home else shutil.which("java")
    if not java or not os.path.exists(java):
        raise SetupError(f"Java was not found; Spark needs it: {JAVA_INSTALL_HINT}")
    try:
        out = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=30, check=False
        )
    except OSError as exc:
        raise SetupError(f"cannot run {java!r} ({exc}): {JAVA_INSTALL_HINT}") from None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if match:
        major = int(match.group(1))
        if major == 1 and match.group(2):  # "1.8.0" style
            major = int(match.group(2))
        if major < MIN_JAVA:
            raise SetupError(
                f"Java {major} found at {java!r}; Spark 4 needs {MIN_JAVA}+: {JAVA_INSTALL_HINT}"
            )
