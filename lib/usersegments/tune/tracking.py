"""MLflow: each trial as a child run of one parent run per tune, when mlflow is installed.

Logged from the driver thread after the trials finished (MLflow's active-run stack is
per thread, and the trials ran on a pool), so parent and children nest correctly.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence

from usersegments.tune.trials import Trial

log = logging.getLogger(__name__)


def log_to_mlflow(run_id: str, objective: str, trials: Sequence[Trial]) -> bool:
    """Log ``trials`` under a parent MLflow run named after ``run_id``; False (and no
    message) when mlflow is not installed."""
    try:
        import mlflow
    except ImportError:
        return False
    try:
        with mlflow.start_run(run_name=f"usersegments tune {run_id}"):
            mlflow.set_tags({"usersegments.run_id": run_id, "objective": objective})
            for trial in trials:
                with mlflow.start_run(run_name=f"trial {trial.trial_id}", nested=True):
                    mlflow.log_params(
                        {
                            key: json.dumps(value)
                            for key, value in json.loads(trial.settings_json()).items()
                        }
                    )
                    figures = {
                        name: float(value)
                        for name, value in trial.scores.items()
                        if value is not None and math.isfinite(float(value))
                    }
                    mlflow.log_metrics({**figures, "seconds": trial.seconds})
                    mlflow.set_tags({"status": trial.status, "chosen": str(trial.chosen).lower()})
    except Exception as exc:  # noqa: BLE001
        # Tracking is a copy of what tuning_trials already holds: an unreachable
        # tracking server must not throw away a finished search.
        log.warning("tune: logging the trials to MLflow failed: %s", exc)
        return False
    return True
