"""Trials: one set of settings through profile -> cluster -> score, several at a time.

Every trial rebuilds profiles from the training events with its settings, clusters
them in memory (``cluster_users``, as ``evaluate`` does) and scores the result on
the held-out events. Trials are threads that submit Spark jobs to the one session
(``tune.parallel`` at once): while one trial runs driver-side or Python-worker work
(a sub-clustering pandas UDF, a collect), another's jobs keep the cores busy.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pyspark.sql import DataFrame, SparkSession

from usersegments.cluster.stage import cluster_users
from usersegments.config import Config, with_settings
from usersegments.errors import InputError, UserSegmentsError
from usersegments.evaluate.holdout import EVERYONE, group_hit_rate, with_everyone
from usersegments.evaluate.truth import score_against_truth
from usersegments.profile import profiles_from_sums, weighted_sums
from usersegments.tune.scores import HIT_RATE_LIFT, interest_fit, silhouette
from usersegments.tune.space import searched_values

log = logging.getLogger(__name__)

SUCCEEDED = "succeeded"
FAILED = "failed"


@dataclass
class Holdout:
    """The split every trial is scored on, built once per tune run.

    ``train``: training events (user_id, event_time, event_type, item_id, value,
    text_hash); ``held_out``: held-out events with an item (user_id, item_id);
    ``later``: held-out events' vectors (user_id, embedding); ``seen``: items each user
    touched in training (empty unless ``evaluate.exclude_seen``); ``vectors``: the
    cached text vectors (text_hash, embedding). Call ``release`` when done.
    """

    train: DataFrame
    held_out: DataFrame
    later: DataFrame
    seen: DataFrame
    vectors: DataFrame
    as_of: datetime
    objective: str
    repeat_share: float
    truth: str | None = None
    cached: list[DataFrame] = field(default_factory=list)

    def release(self) -> None:
        """Drop the cached frames."""
        for frame in self.cached:
            frame.unpersist()


@dataclass
class Trial:
    """One trial: its settings (dotted config keys), outcome, scores and time."""

    trial_id: int
    settings: dict[str, Any]
    status: str = "pending"
    error: str | None = None
    scores: dict[str, float | None] = field(default_factory=dict)
    seconds: float = 0.0
    chosen: bool = False

    @property
    def score(self) -> float | None:
        """The objective's value (None when the trial failed or had nobody to score)."""
        return self.scores.get("score")

    def settings_json(self) -> str:
        """The searched settings as a JSON object (what ``tuning_trials`` stores)."""
        return json.dumps(searched_values(self.settings), sort_keys=True)


class _PopularityCache:
    """Hit rate of the popularity baseline per popularity-weight setting.

    The baseline recommends the same items to every trial's tested users (the
    clusterable users do not change with the searched settings: ``profile.min_events``
    is not searched), so it only changes with the settings of the popularity weight;
    trials that share them score it once.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, dict] = {}

    @staticmethod
    def key(cfg: Config) -> str:
        weight = cfg.profile.model_dump(
            mode="json", include={"event_weights", "default_event_weight", "value_transform"}
        )
        return json.dumps([cfg.recommend.half_life_days, weight], sort_keys=True)

    def get(self, cfg: Config, compute: Callable[[], dict]) -> dict:
        key = self.key(cfg)
        with self._lock:
            if key in self._values:
                return self._values[key]
        # Computed outside the lock so other trials' jobs are not held up; two trials
        # may compute the same figure once each, which is harmless.
        value = compute()
        with self._lock:
            self._values.setdefault(key, value)
        return value


def _score(
    spark: SparkSession,
    holdout: Holdout,
    cfg: Config,
    profiles: DataFrame,
    user_segments: DataFrame,
    as_of: datetime | None,
    popularity: _PopularityCache,
) -> dict[str, float | None]:
    """The objective and the other figures of one clustering."""
    scores: dict[str, float | None] = {}
    if holdout.objective == HIT_RATE_LIFT:
        groups = with_everyone(user_segments.select("user_id", "segment_id"))
        tested = groups.select("user_id").join(
            holdout.held_out.select("user_id").distinct(), "user_id"
        )

        def rate(column: str) -> dict:
            return group_hit_rate(
                holdout.train,
                holdout.held_out,
                groups,
                column,
                tested,
                holdout.seen,
                cfg,
                holdout.as_of,
            )

        segment = rate("segment_id")
        baseline = popularity.get(cfg, lambda: rate(EVERYONE))
        scores["hit_rate"] = segment["hit_rate"]
        scores["hit_rate_popularity"] = baseline["hit_rate"]
        scores["hit_rate_lift"] = segment["hit_rate"] - baseline["hit_rate"]
        scores["users_tested"] = segment["users"]
    else:
        fit = interest_fit(user_segments, profiles, holdout.later)
        scores["interest_fit"] = fit["interest_fit"]
        scores["users_tested"] = fit["users"]
    scores["score"] = scores[holdout.objective]
    scores["silhouette_cosine"] = silhouette(user_segments, profiles)
    if holdout.truth:
        truth = score_against_truth(spark, user_segments, holdout.truth, as_of, cfg.privacy)
        scores["nmi_segment_vs_substyle"] = truth.get("nmi_segment_vs_substyle")
        scores["nmi_cluster_vs_area"] = truth.get("nmi_cluster_vs_area")
        scores["nmi_segment_vs_area"] = truth.get("nmi_segment_vs_area")
    return scores


def run_trial(
    spark: SparkSession,
    holdout: Holdout,
    cfg: Config,
    trial: Trial,
    run_id: str,
    popularity: _PopularityCache | None = None,
) -> Trial:
    """Profile, cluster and score ``trial``'s settings; fills in its outcome and time.

    A trial that the data cannot support (an ``InputError`` such as too few users for
    its settings) is recorded as failed with the message; any other error stops the run.
    """
    t0 = time.perf_counter()
    popularity = popularity or _PopularityCache()
    try:
        trial_cfg = with_settings(cfg, trial.settings, f"tune trial {trial.trial_id}")
        sums = weighted_sums(holdout.train, holdout.vectors, trial_cfg.profile, holdout.as_of)
        profiles = profiles_from_sums(sums, holdout.as_of, run_id).cache()
        try:
            clustered = cluster_users(spark, profiles, trial_cfg, run_id)
            try:
                trial.scores = _score(
                    spark,
                    holdout,
                    trial_cfg,
                    profiles,
                    clustered.user_segments,
                    clustered.as_of,
                    popularity,
                )
                trial.scores["coarse_clusters"] = clustered.coarse.k
                trial.scores["segments"] = clustered.segments.count()
            finally:
                clustered.release()
        finally:
            profiles.unpersist()
        trial.status = SUCCEEDED
    except UserSegmentsError as exc:
        trial.status, trial.error = FAILED, str(exc)
        log.warning("tune: trial %d failed: %s", trial.trial_id, exc)
    trial.seconds = time.perf_counter() - t0
    return trial


def run_trials(
    spark: SparkSession,
    holdout: Holdout,
    cfg: Config,
    settings: Sequence[dict[str, Any]],
    run_id: str,
    done: Callable[[Trial], None] | None = None,
) -> list[Trial]:
    """Every trial of ``settings`` (ids from 1), ``tune.parallel`` at a time; ``done``
    is called with each trial as it finishes. Returns the trials in id order."""
    trials = [Trial(trial_id=i, settings=s) for i, s in enumerate(settings, start=1)]
    popularity = _PopularityCache()
    workers = max(1, min(cfg.tune.parallel, len(trials)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tune-trial") as pool:
        futures = [
            pool.submit(run_trial, spark, holdout, cfg, trial, run_id, popularity)
            for trial in trials
        ]
        try:
            for future in as_completed(futures):
                finished = future.result()
                if done is not None:
                    done(finished)
        except BaseException:
            # A bug or an interrupt: trials not started yet would only add to the wait.
            for future in futures:
                future.cancel()
            raise
    return trials


def choose_best(trials: Sequence[Trial]) -> Trial:
    """The trial with the highest score (the lowest id among equals), marked ``chosen``;
    an ``InputError`` with the first failure when no trial has a score."""
    scored = [t for t in trials if t.status == SUCCEEDED and t.score is not None]
    if not scored:
        failed = next((t for t in trials if t.error), None)
        why = (
            f": trial {failed.trial_id}: {failed.error}"
            if failed
            else ": no clustered user has a held-out event to score it on (held-out events "
            "need an item id for hit_rate_lift, a text for interest_fit)"
        )
        raise InputError(f"no tuning trial could be scored{why}")
    best = max(scored, key=lambda t: (t.score, -t.trial_id))
    best.chosen = True
    return best
