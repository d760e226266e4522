"""Evaluate: would these segments have predicted what users did next?

A time-based split holds out each user's last ``N`` events (``--holdout-last``,
``evaluate.holdout_last``; only users who keep ``profile.min_events`` events
for training are tested). Profiles and the two-level clustering are rebuilt
from the training events alone, in memory, with the run's config; nothing of
the stored tables is changed. Each tested user then gets the top
``evaluate.k`` items of, in turn:

- ``segment``: their segment's most popular items (what ``recommend`` writes);
- ``cluster``: their coarse cluster's most popular items;
- ``popularity``: the most popular items overall (the baseline);

minus the items they touched in training (``evaluate.exclude_seen``). The users with
two interests or more (found in their training events) are also scored with the lists
of their interests' segments blended by weight (what ``recommend.per_user`` writes)
against their primary segment's list alone: ``hit_rate@K.blended_multi`` and
``hit_rate@K.segment_multi``.
``hit_rate@K`` is the share of tested users with at least one held-out item
among their K; ``recall@K`` the mean share of each user's held-out items found.
With ``--truth``, ARI/NMI of the training clustering against the planted truth.
Every figure goes to ``run_metrics`` (stage ``evaluate``).

Modules:

- ``holdout``: the holdout split, hit rate and recall of each recommender.
- ``interests``: blended interest lists against primary-segment lists (several interests).
- ``truth``: the planted truth file and ARI/NMI against it (also used by ``cluster``).
- ``drift``: where planted drifters are after an update (``drift_recovery``).
- ``stage``: the ``run_evaluate`` stage.
"""

from __future__ import annotations

from usersegments.evaluate.drift import drift_recovery
from usersegments.evaluate.holdout import (
    STRATEGIES,
    group_hit_rate,
    hit_and_recall,
    holdout_split,
    score_strategies,
    tested_and_seen,
)
from usersegments.evaluate.stage import holdout_count, run_evaluate
from usersegments.evaluate.truth import score_against_truth

__all__ = [
    "STRATEGIES",
    "drift_recovery",
    "group_hit_rate",
    "hit_and_recall",
    "holdout_count",
    "holdout_split",
    "run_evaluate",
    "score_against_truth",
    "score_strategies",
    "tested_and_seen",
]
