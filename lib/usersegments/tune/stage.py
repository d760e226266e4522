"""The tune stage: hold out each user's last events, run the trials, record them in
``tuning_trials`` and write the best settings as a ready-to-use config file."""

from __future__ import annotations

import logging
import os
from datetime import datetime, timezone

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from usersegments.config import Config, with_settings
from usersegments.config.segmenting import DEFAULT_EVENT_WEIGHTS
from usersegments.embed import model_id, model_vectors
from usersegments.errors import InputError
from usersegments.evaluate.holdout import holdout_split
from usersegments.evaluate.stage import holdout_count
from usersegments.frames import rows_to_spark
from usersegments.paths import is_local, local_path
from usersegments.runlog import RunLog, StageResult
from usersegments.schema import TUNING_TRIALS
from usersegments.store import TableStore
from usersegments.times import max_time
from usersegments.tune.scores import INTEREST_FIT, choose_objective, repeat_share
from usersegments.tune.space import trial_settings
from usersegments.tune.tracking import log_to_mlflow
from usersegments.tune.trials import FAILED, Holdout, Trial, choose_best, run_trials

log = logging.getLogger(__name__)

EVENT_COLUMNS = ("user_id", "event_time", "event_type", "item_id", "value", "text_hash")
TUNED_FILE = "tuned.yaml"

# The figures of a trial, in the order of the tuning_trials columns after ``score``.
FIGURES = (
    "hit_rate",
    "hit_rate_popularity",
    "hit_rate_lift",
    "interest_fit",
    "silhouette_cosine",
    "nmi_segment_vs_substyle",
    "nmi_cluster_vs_area",
    "coarse_clusters",
    "segments",
    "users_tested",
)


def tune_holdout_count(option: int | None, cfg: Config) -> int:
    """Events held out per user: ``--holdout-last`` when given, else ``tune.holdout_last``."""
    return holdout_count(option, cfg, "tune")


def tuned_path(cfg: Config, store: TableStore) -> str:
    """Where the best settings go: ``tune.output``, else ``<store root>/tuned.yaml``."""
    return cfg.tune.output or f"{store.root.rstrip('/')}/{TUNED_FILE}"


def loadable(cfg: Config) -> Config:
    """``cfg`` as it must be written to reload as itself: ``load_config`` merges a file's
    ``profile.event_weights`` over the default map key by key, so a type a tuned map
    leaves out (it weighs ``default_event_weight``) is written with that weight."""
    profile = cfg.profile
    left_out = {t: profile.default_event_weight for t in DEFAULT_EVENT_WEIGHTS}
    weights = {**left_out, **profile.event_weights}
    return with_settings(cfg, {"profile.event_weights": weights}, "tune")


def prepare_holdout(store: TableStore, cfg: Config, n_out: int, truth: str | None) -> Holdout:
    """The time-based split of the stored events and what every trial reads from it,
    cached; the objective is resolved here, from the data, once."""
    events = store.read("events").select("event_id", *EVENT_COLUMNS)
    split = holdout_split(events, n_out, cfg.profile.min_events).cache()
    vectors = model_vectors(store, model_id(cfg.embed)).cache()
    cached = [split, vectors]
    try:
        train = split.filter(~F.col("held_out")).select(*EVENT_COLUMNS)
        held_all = split.filter(F.col("held_out"))
        if held_all.isEmpty():
            raise InputError(
                f"no user has more than profile.min_events + tune.holdout_last = "
                f"{cfg.profile.min_events} + {n_out} events, so none can be held out: "
                "lower tune.holdout_last (--holdout-last) or profile.min_events"
            )
        as_of = max_time(train, "event_time")
        share = repeat_share(train, held_all)
        objective = choose_objective(cfg.tune.objective, share, cfg.tune.repeat_share_min)
        later = held_all.join(vectors, "text_hash").select("user_id", "embedding")
        if objective == INTEREST_FIT:
            later = later.cache()
            cached.append(later)
        seen = train.filter(F.col("item_id").isNotNull()).select("user_id", "item_id")
        if not cfg.evaluate.exclude_seen:
            seen = seen.limit(0)
        held_out = held_all.filter(F.col("item_id").isNotNull()).select("user_id", "item_id")
    except BaseException:
        for frame in cached:
            frame.unpersist()
        raise
    log.info(
        "tune: %.0f%% of held-out events repeat items seen in training: objective %s",
        100 * share,
        objective,
    )
    return Holdout(
        train=train,
        held_out=held_out,
        later=later,
        seen=seen,
        vectors=vectors,
        as_of=as_of,
        objective=objective,
        repeat_share=share,
        truth=truth,
        cached=cached,
    )


def run_tune(
    spark: SparkSession,
    store: TableStore,
    cfg: Config,
    run: RunLog,
    holdout_last: int | None = None,
    truth: str | None = None,
) -> StageResult:
    """Search the ``tune.*`` candidates; record every trial, write the best config."""
    n_out = tune_holdout_count(holdout_last, cfg)  # bad options fail before any table is read
    settings = trial_settings(cfg.tune)
    store.require(
        "events",
        "text_embeddings",
        fix="pass --events to `usersegments tune` (or run `usersegments run` first)",
    )
    run.model_id = run.model_id or model_id(cfg.embed)
    holdout = prepare_holdout(store, cfg, n_out, truth)
    log.info(
        "tune: %d trials (%s search), %d at a time",
        len(settings),
        cfg.tune.search,
        min(cfg.tune.parallel, len(settings)),
    )
    try:
        trials = run_trials(spark, holdout, cfg, settings, run.run_id, done=_log_trial)
    finally:
        holdout.release()
    best = choose_best(trials)
    _write_trials(spark, store, run.run_id, holdout.objective, trials)
    path = tuned_path(cfg, store)
    best_cfg = loadable(with_settings(cfg, best.settings, f"tune trial {best.trial_id}"))
    header = (
        f"# usersegments config tuned by run {run.run_id}: trial {best.trial_id} of "
        f"{len(trials)}, {holdout.objective} = {best.score:.4f}\n"
        f"# use it with: usersegments run --config {path}\n"
    )
    _put_text(path, header + best_cfg.to_yaml())
    log_to_mlflow(run.run_id, holdout.objective, trials)
    metrics = {
        "trials": len(trials),
        "trials_failed": sum(t.status == FAILED for t in trials),
        "best_trial": best.trial_id,
        "best_score": best.score,
        "objective_interest_fit": holdout.objective == INTEREST_FIT,
        "repeat_share": holdout.repeat_share,
        "holdout_last": n_out,
    }
    run.record_all("tune", metrics)
    log.info("tune: best trial %d, score %.4f -> %s", best.trial_id, best.score, path)
    return StageResult(
        stage="tune",
        tables={"tuning_trials": store.version("tuning_trials")},
        metrics=metrics,
        path=path,
    )


def _log_trial(trial: Trial) -> None:
    if trial.status == FAILED:
        return
    log.info("tune: trial %d done in %.1fs: score %s", trial.trial_id, trial.seconds, trial.score)


def _write_trials(
    spark: SparkSession, store: TableStore, run_id: str, objective: str, trials: list[Trial]
) -> None:
    """Append one ``tuning_trials`` row per trial (their number is tune.trials, small)."""
    now = datetime.now(timezone.utc)
    rows = [
        (
            run_id,
            t.trial_id,
            t.settings_json(),
            t.status,
            t.error,
            objective,
            t.score,
            *[_figure(t, name) for name in FIGURES],
            t.seconds,
            t.chosen,
            now,
        )
        for t in trials
    ]
    store.write(rows_to_spark(spark, rows, TUNING_TRIALS), "tuning_trials")


def _figure(trial: Trial, name: str) -> float | int | None:
    value = trial.scores.get(name)
    if value is None:
        return None
    integral = TUNING_TRIALS[name].dataType.typeName() in ("integer", "long")
    return int(value) if integral else float(value)


def _put_text(path: str, text: str) -> None:
    """Write ``text`` to a local path or an object-store URI (through pyarrow)."""
    if is_local(path):
        target = local_path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        temporary.write_text(text, encoding="utf-8")
        temporary.replace(target)
        return
    from pyarrow import fs

    filesystem, where = fs.FileSystem.from_uri(path)
    with filesystem.open_output_stream(where) as out:
        out.write(text.encode("utf-8"))
