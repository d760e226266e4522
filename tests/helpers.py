"""Helpers for tests that run stages against a real store."""

from __future__ import annotations

from usersegments.config import Config
from usersegments.runlog import RunLog
from usersegments.store import TableStore


def new_run(spark, store: TableStore, cfg: Config, command: str = "test") -> RunLog:
    """A started run on ``store``."""
    run = RunLog(spark, store, cfg, command)
    run.start()
    return run


def metrics_of(store: TableStore, run: RunLog | str, stage: str) -> dict[str, float]:
    """The metrics ``run`` (a RunLog or a run id) recorded for ``stage``."""
    run_id = run if isinstance(run, str) else run.run_id
    rows = store.read("run_metrics").filter(f"run_id = '{run_id}' and stage = '{stage}'").collect()
    return {r["metric"]: r["value"] for r in rows}
