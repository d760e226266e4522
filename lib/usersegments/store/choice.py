"""Which Delta backend a store uses: ``resolve_backend`` reads ``store.backend`` and
the session (local mode or not, Delta's jars and extension loaded or not)."""

from __future__ import annotations

from pyspark.sql import SparkSession

from usersegments.config import Config
from usersegments.errors import ConfigError, StoreError
from usersegments.session import (
    DELTA_CATALOG,
    DELTA_EXTENSION,
    check_backend_for_mode,
    delta_classes_loaded,
    delta_spark_ready,
)
from usersegments.store.delta_spark import DELTA_SPARK_PACKAGE


def resolve_backend(spark: SparkSession, cfg: Config) -> str:
    """Pick the Delta backend for ``cfg.store.backend`` on this session.

    delta-rs is refused off local mode (``check_backend_for_mode``, or a master that
    is not local). ``auto`` takes delta-rs in local mode (the embedded default, even
    when the session also carries the Delta jars ``make`` fetched) and delta-spark
    everywhere else; delta-spark without Delta fails naming the fix.
    """
    check_backend_for_mode(cfg)
    if cfg.spark.mode == "databricks":  # the runtime always has Delta
        return "delta-spark"
    master = spark.sparkContext.master if getattr(spark, "_jvm", None) is not None else ""
    # spark.mode local under spark-submit takes spark-submit's master, which may be a cluster.
    local = cfg.spark.mode == "local" and (master == "" or master.startswith("local"))
    if cfg.store.backend == "delta-rs":
        if not local:
            raise ConfigError(
                f"store.backend is 'delta-rs' but Spark runs on {master!r}: delta-rs writes "
                "from the driver alone and runs in local mode only; set store.backend to "
                f"delta-spark (or auto) and start Spark with --packages {DELTA_SPARK_PACKAGE}"
            )
        return "delta-rs"
    if cfg.store.backend == "auto" and local:
        return "delta-rs"
    _require_delta_spark(spark, cfg.store.backend, local)
    return "delta-spark"


def _require_delta_spark(spark: SparkSession, wanted: str, local: bool) -> None:
    """Raise ``StoreError`` naming the fix when the session cannot use delta-spark."""
    needs = f"store.backend is '{wanted}' and needs delta-spark"
    if not delta_classes_loaded(spark):
        if local:
            fix = (
                "run `make install` (it fetches them with Maven; under spark-submit give "
                f"--packages {DELTA_SPARK_PACKAGE}), or set store.backend to delta-rs"
            )
        else:
            fix = f"start Spark with --packages {DELTA_SPARK_PACKAGE} (or run on Databricks)"
        raise StoreError(f"{needs}, but the Delta jars are not on the classpath: {fix}")
    if not delta_spark_ready(spark):
        raise StoreError(
            f"{needs}, but the session lacks Delta's extension: add --conf "
            f"spark.sql.extensions={DELTA_EXTENSION} --conf "
            f"spark.sql.catalog.spark_catalog={DELTA_CATALOG}"
        )
