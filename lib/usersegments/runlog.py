"""Run bookkeeping: the run id, the recorded config, and the ``run_metrics`` table.

Every command that writes tables is one run. Its config (as JSON) and status
go to the ``runs`` table; each stage's counts and figures go to ``run_metrics``
(one row per metric, value as double), so any claim about a run can be read
back from its tables.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from usersegments.config import Config
from usersegments.errors import InputError
from usersegments.frames import rows_to_spark
from usersegments.schema import RUN_METRICS, RUNS
from usersegments.store import TableStore
from usersegments.times import collected_utc

log = logging.getLogger(__name__)


def new_run_id(now: datetime | None = None) -> str:
    """A sortable, unique run id such as ``20261123T182000Z-1a2b3c4d``."""
    now = now or datetime.now(timezone.utc)
    return f"{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"


def product_version() -> str:
    """The installed usersegments version (``unknown`` when run from a bare source tree)."""
    try:
        return package_version("usersegments")
    except PackageNotFoundError:
        return "unknown"


@dataclass
class StageResult:
    """What one stage did: tables it wrote (name -> version), its metrics, its time, and
    the file it wrote when it writes one (the report)."""

    stage: str
    tables: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    path: str | None = None


class RunLog:
    """One run: its id, its config, and the metrics its stages record."""

    def __init__(
        self,
        spark: SparkSession,
        store: TableStore,
        cfg: Config,
        command: str,
        run_id: str | None = None,
    ) -> None:
        self.spark = spark
        self.store = store
        self.cfg = cfg
        self.command = command
        self.run_id = run_id or new_run_id()
        self.started_at = datetime.now(timezone.utc)
        self.model_id: str | None = None
        self._pending: list[tuple[str, str, float, datetime]] = []

    def start(self, resumed: bool = False) -> None:
        """Record the run (status ``running``) with its config before any stage writes:
        appended for a new run (its id is new, so no merge is needed), merged over the
        earlier row of a ``resumed`` one."""
        self._write_run_row(status="running", finished_at=None, new=not resumed)

    def finish(self, status: str = "succeeded") -> None:
        """Flush metrics and mark the run ``succeeded`` or ``failed``."""
        self.flush()
        self._write_run_row(status=status, finished_at=datetime.now(timezone.utc))

    def record(self, stage: str, metric: str, value: float | int | bool) -> None:
        """Queue one metric of ``stage``; written at the next ``flush``."""
        self._pending.append((stage, metric, float(value), datetime.now(timezone.utc)))

    def record_all(self, stage: str, metrics: Mapping[str, float | int | bool]) -> None:
        """Queue several metrics of ``stage``."""
        for metric, value in metrics.items():
            self.record(stage, metric, value)

    def queued(self, stage: str, metric: str) -> float | None:
        """The latest value of ``metric`` that ``stage`` queued in this run and that is
        not flushed yet; None if none is queued."""
        values = [v for s, m, v, _ in self._pending if (s, m) == (stage, metric)]
        return values[-1] if values else None

    def flush(self) -> None:
        """Append the queued metrics to ``run_metrics``."""
        if not self._pending:
            return
        rows = [(self.run_id, s, m, v, t) for s, m, v, t in self._pending]
        self.store.write(rows_to_spark(self.spark, rows, RUN_METRICS), "run_metrics")
        self._pending.clear()

    def timed(self, stage: str) -> _StageTimer:
        """Context manager that logs a stage's start and end and records its seconds."""
        return _StageTimer(self, stage)

    def _write_run_row(self, status: str, finished_at: datetime | None, new: bool = False) -> None:
        row = (
            self.run_id,
            self.command,
            self.started_at,
            finished_at,
            status,
            json.dumps(self.cfg.to_dict(), sort_keys=True),
            self.cfg.fingerprint(),
            self.model_id,
            product_version(),
        )
        frame = rows_to_spark(self.spark, [row], RUNS)
        if new:
            self.store.write(frame, "runs")
        else:
            self.store.merge(frame, "runs", on=["run_id"])


def completed_stages(store: TableStore, run_id: str) -> frozenset[str]:
    """The stages run ``run_id`` completed: those that recorded their ``seconds`` (a
    stage's timer records it, and flushes, only when the stage returned)."""
    if not store.exists("run_metrics"):
        return frozenset()
    rows = (
        store.read("run_metrics")
        .filter((F.col("run_id") == run_id) & (F.col("metric") == "seconds"))
        .select("stage")
        .distinct()
        .collect()
    )
    return frozenset(row["stage"] for row in rows)


def check_resumable(store: TableStore, run_id: str, command: str, cfg: Config) -> datetime:
    """Refuse (``InputError``) to resume ``run_id`` unless it is a ``command`` run that did
    not succeed (failed, or ``running`` when its process was killed) and recorded the
    same settings as ``cfg`` (the ``spark`` section aside); returns when it started."""
    row = None
    if store.exists("runs"):
        row = store.read("runs").filter(F.col("run_id") == run_id).first()
    if row is None:
        raise InputError(
            f"--resume {run_id}: no such run under {store.root!r}; "
            "`usersegments tables --table runs` lists the runs"
        )
    if row["command"] != command:
        raise InputError(
            f"--resume {run_id}: that run was `{row['command']}`, not `{command}`; "
            f"resume it with the command it was, or start a new `{command}`"
        )
    if row["status"] == "succeeded":
        raise InputError(f"--resume {run_id}: that run succeeded; there is nothing to resume")
    recorded, current = json.loads(row["config_json"]), cfg.to_dict()
    # How Spark runs (the spark section) may change: a run that ran out of memory goes
    # on with more of it. Every other setting shapes the tables and must match.
    differing = _differing_settings(
        {k: v for k, v in recorded.items() if k != "spark"},
        {k: v for k, v in current.items() if k != "spark"},
    )
    if differing:
        raise InputError(
            f"--resume {run_id}: the settings differ from the run's ({'; '.join(differing)}): "
            "give the same --config and --set options as the run had"
        )
    return collected_utc(row["started_at"])


def _differing_settings(recorded: dict, current: dict, prefix: str = "") -> list[str]:
    """``key: recorded -> current`` for every dotted setting whose value differs."""
    out: list[str] = []
    for key in sorted(set(recorded) | set(current)):
        was, now = recorded.get(key), current.get(key)
        if isinstance(was, dict) and isinstance(now, dict):
            out += _differing_settings(was, now, f"{prefix}{key}.")
        elif was != now:
            out.append(f"{prefix}{key}: {was!r} in the run, {now!r} now")
    return out


class _StageTimer:
    def __init__(self, run: RunLog, stage: str) -> None:
        self.run = run
        self.stage = stage
        self.seconds = 0.0

    def __enter__(self) -> _StageTimer:
        log.info("[%s] %s started", self.run.run_id, self.stage)
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self.seconds = time.perf_counter() - self._t0
        if exc_type is None:
            self.run.record(self.stage, "seconds", self.seconds)
            self.run.flush()
            log.info("[%s] %s done in %.1fs", self.run.run_id, self.stage, self.seconds)
