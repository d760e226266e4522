"""The search space: which settings a trial sets, drawn from the ``tune.*`` candidate lists."""

from __future__ import annotations

import math
import random
from typing import Any

from usersegments.config import TuneConfig

# tune.<candidate list> -> the config setting each of its values is put in.
SEARCHED: dict[str, str] = {
    "k": "cluster.k",
    "profile_half_life_days": "profile.half_life_days",
    "recommend_half_life_days": "recommend.half_life_days",
    "event_weights": "profile.event_weights",
    "value_transform": "profile.value_transform",
    "sub_target_size": "cluster.sub.target_size",
}

# Set with every cluster.sub.target_size candidate: the sub-cluster section accepts
# exactly one of target_size and distance_threshold.
_COMPANIONS: dict[str, dict[str, Any]] = {
    "cluster.sub.target_size": {"cluster.sub.distance_threshold": None},
}


def grid_size(tune: TuneConfig) -> int:
    """The number of distinct combinations of the candidate lists."""
    return math.prod(len(getattr(tune, name)) for name in SEARCHED)


def combination(tune: TuneConfig, index: int) -> dict[str, Any]:
    """The ``index``-th combination of the grid (mixed radix, last list fastest), as
    dotted config settings."""
    settings: dict[str, Any] = {}
    for name in reversed(SEARCHED):
        candidates = getattr(tune, name)
        index, position = divmod(index, len(candidates))
        settings[SEARCHED[name]] = candidates[position]
    ordered = {SEARCHED[name]: settings[SEARCHED[name]] for name in SEARCHED}
    for key in list(ordered):
        ordered.update(_COMPANIONS.get(key, {}))
    return ordered


def trial_settings(tune: TuneConfig) -> list[dict[str, Any]]:
    """The settings of every trial, in trial order.

    ``grid``: every combination; ``random``: ``tune.trials`` distinct combinations
    (all of them when the grid is smaller) drawn with ``tune.seed``, so the same seed
    and lists give the same trials. Combinations are decoded from their index, so a
    huge grid is never listed in memory.
    """
    total = grid_size(tune)
    if tune.search == "grid":
        indices = range(total)
    else:
        indices = random.Random(tune.seed).sample(range(total), min(tune.trials, total))
    return [combination(tune, i) for i in indices]


def searched_values(settings: dict[str, Any]) -> dict[str, Any]:
    """Only the searched settings of a trial (without the companions set with them)."""
    return {key: settings[key] for key in SEARCHED.values() if key in settings}
