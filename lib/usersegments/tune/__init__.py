"""Tune: search profile, cluster and recommend settings on held-out events.

``usersegments tune`` holds out each user's last ``tune.holdout_last`` events (the
time-based split of ``evaluate``), then tries settings drawn from the ``tune.*``
candidate lists (cluster.k, both half-lives, event weights, the value transform,
cluster.sub.target_size): each trial rebuilds profiles from the training events,
clusters them and scores the result, as Spark jobs, ``tune.parallel`` trials at a
time. Embeddings are read from ``text_embeddings`` (computed once, by the embed
stage before it). The score is, decided once from the data:

- ``hit_rate_lift`` where items repeat across users: held-out hit rate@K of the
  segment's popular items minus that of overall popularity;
- ``interest_fit`` where they do not (posts, reviews of unique items): mean over
  held-out users of cos(later event, segment centroid) - cos(later event, global
  centroid).

Silhouette, and NMI against a ``--truth`` table, are recorded beside it. Every trial
goes to ``tuning_trials`` (and to MLflow when installed); the full config with the
best trial's settings is written as YAML for ``usersegments run --config``.

Modules:

- ``space``: the searched settings and the trials drawn from the candidate lists.
- ``scores``: repeat share, the objective, interest fit and silhouette.
- ``trials``: the held-out split, one trial, the thread pool of trials, the best.
- ``tracking``: trials as MLflow child runs.
- ``stage``: the ``run_tune`` stage: table, YAML, metrics.
"""

from __future__ import annotations

from usersegments.tune.scores import (
    HIT_RATE_LIFT,
    INTEREST_FIT,
    OBJECTIVES,
    choose_objective,
    interest_fit,
    repeat_share,
    silhouette,
)
from usersegments.tune.space import SEARCHED, grid_size, trial_settings
from usersegments.tune.stage import run_tune, tuned_path
from usersegments.tune.trials import Holdout, Trial, choose_best, run_trial, run_trials

__all__ = [
    "HIT_RATE_LIFT",
    "INTEREST_FIT",
    "OBJECTIVES",
    "SEARCHED",
    "Holdout",
    "Trial",
    "choose_best",
    "choose_objective",
    "grid_size",
    "interest_fit",
    "repeat_share",
    "run_trial",
    "run_trials",
    "run_tune",
    "silhouette",
    "trial_settings",
    "tuned_path",
]
