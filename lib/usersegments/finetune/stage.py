"""The finetune stage: pairs from the training events, a TorchDistributor training, a
new encoder version, and its before/after scores on held-out behaviour.

The split is the one ``tune`` scores on (each user's last ``finetune.holdout_last``
events held out): pairs come from the training events only, and both encoders are
scored by the same trial (the configured settings through profile, cluster and the
objective ``tune.objective`` chooses from the data: hit-rate lift over popularity
where items repeat, the held-out interest fit where they do not; NMI against a truth
table when given). The new version becomes ``finetuned:latest`` with ``--promote``,
or with ``finetune.promote: auto`` when it scores higher.
"""

from __future__ import annotations

import logging
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from usersegments import halflife
from usersegments.config import Config, with_settings
from usersegments.embed import model_id
from usersegments.embed.model import resolve_model_path
from usersegments.errors import InputError
from usersegments.evaluate.holdout import holdout_split
from usersegments.evaluate.stage import holdout_count
from usersegments.finetune.pairs import training_pairs
from usersegments.finetune.train import TrainSpec, train_encoder
from usersegments.finetune.versions import (
    FINETUNED_PREFIX,
    models_folder,
    next_version,
    write_metadata,
)
from usersegments.finetune.versions import (
    promote as promote_version,
)
from usersegments.paths import local_path
from usersegments.privacy import with_texts
from usersegments.runlog import RunLog, StageResult
from usersegments.schema import FINETUNE_PAIRS, conform
from usersegments.store import TableStore
from usersegments.tune.scores import INTEREST_FIT
from usersegments.tune.stage import prepare_holdout
from usersegments.tune.trials import Trial, run_trial

log = logging.getLogger(__name__)

PAIRS_TABLE = "finetune_pairs"
# The truth scores compared before and after, when the command is given a truth table.
TRUTH_FIGURES = ("nmi_cluster_vs_area", "nmi_segment_vs_area", "nmi_segment_vs_substyle")


def run_finetune(
    spark: SparkSession,
    store: TableStore,
    cfg: Config,
    run: RunLog,
    holdout_last: int | None = None,
    truth: str | None = None,
    promote: bool = False,
) -> StageResult:
    """Build pairs, train a new encoder version, score it against the current one."""
    n_out = holdout_count(holdout_last, cfg, "finetune")
    store.require(
        "events",
        "text_embeddings",
        fix="pass --events to `usersegments finetune` (or run `usersegments run` first)",
    )
    run.model_id = run.model_id or model_id(cfg.embed)
    pairs = _write_pairs(store, cfg, run.run_id, n_out)
    folder = models_folder(cfg.embed.models_root)
    folder.mkdir(parents=True, exist_ok=True)
    version = next_version(folder)
    output = folder / f"v{version}"
    spec = _train_spec(cfg, store, str(output))
    log.info("finetune: %d pairs; training v%d from %s", pairs, version, spec.base_model)
    trained = _distributed(cfg, spec)
    metadata: dict[str, Any] = {
        "version": version,
        "base_model": cfg.embed.model,
        "base_model_id": run.model_id,
        "events_version": store.version("events"),
        "pairs": pairs,
        "run_id": run.run_id,
        "train": spec.to_dict(),
        **trained,
    }
    tuned_cfg = with_settings(cfg, {"embed.model": f"{FINETUNED_PREFIX}v{version}"}, "finetune")
    write_metadata(output, metadata)  # finished: the version can be embedded with
    before, after = _before_after(spark, store, cfg, tuned_cfg, run, n_out, truth)
    better = _better(after, before)
    promoted = promote or (cfg.finetune.promote == "auto" and better)
    metadata.update({"before": before, "after": after, "promoted": promoted})
    write_metadata(output, metadata)
    if promoted:
        promote_version(folder, version)
    metrics = _metrics(version, pairs, trained, before, after, promoted)
    metrics["objective_interest_fit"] = before["objective"] == INTEREST_FIT
    run.record_all("finetune", metrics)
    _log_to_mlflow(run.run_id, metadata, output)
    return StageResult(
        stage="finetune",
        tables={PAIRS_TABLE: store.version(PAIRS_TABLE)},
        metrics=metrics,
        path=str(output),
    )


def _write_pairs(store: TableStore, cfg: Config, run_id: str, n_out: int) -> int:
    """The training pairs of the events before the holdout, written (replacing the last
    ones) to ``finetune_pairs``; returns how many."""
    columns = ("event_id", "user_id", "event_time", "event_type", "value", "text_hash", "text")
    events = with_texts(store, store.read("events").select(*columns))
    split = holdout_split(events, n_out, cfg.profile.min_events)
    train = split.filter(~F.col("held_out"))
    pairs = training_pairs(train, cfg.finetune, cfg.profile).withColumn("run_id", F.lit(run_id))
    store.write(conform(pairs, FINETUNE_PAIRS), PAIRS_TABLE, mode="overwrite")
    count = store.row_count(PAIRS_TABLE)
    if count < 2:
        raise InputError(
            f"fine-tuning found {count} training pairs: it needs users with at least two "
            "events of different texts before their held-out ones. Ingest more behaviour, "
            "or lower finetune.holdout_last / raise finetune.popular_share"
        )
    return count


def _train_spec(cfg: Config, store: TableStore, output: str) -> TrainSpec:
    ft = cfg.finetune
    use_gpu = ft.use_gpu == "true" or (ft.use_gpu == "auto" and _cuda_available())
    return TrainSpec(
        base_model=resolve_model_path(cfg.embed.model, cfg.embed.models_root),
        output=output,
        pairs_table=str(local_path(store.path(PAIRS_TABLE))),
        max_length=cfg.embed.max_length,
        pooling=cfg.embed.pooling,
        batch_size=ft.batch_size,
        learning_rate=ft.learning_rate,
        warmup_share=ft.warmup_share,
        temperature=ft.temperature,
        seed=ft.seed,
        max_steps=ft.max_steps,
        max_minutes=ft.max_minutes,
        checkpoint_every=ft.checkpoint_every,
        use_gpu=use_gpu,
    )


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _distributed(cfg: Config, spec: TrainSpec) -> dict[str, Any]:
    """``train_encoder(spec)`` through TorchDistributor: ``finetune.num_processes``
    processes, on the driver (``local_mode``) or in Spark tasks on the executors."""
    from pyspark.ml.torch.distributor import TorchDistributor

    distributor = TorchDistributor(
        num_processes=cfg.finetune.num_processes,
        local_mode=cfg.finetune.local_mode,
        use_gpu=spec.use_gpu,
    )
    return distributor.run(train_encoder, spec)


def _before_after(
    spark: SparkSession,
    store: TableStore,
    cfg: Config,
    tuned_cfg: Config,
    run: RunLog,
    n_out: int,
    truth: str | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The same trial (the configured settings) scored with the current encoder and with
    the tuned one, whose vectors are embedded first (cached under its own model id)."""
    from usersegments.embed import run_embed

    run_embed(spark, store, tuned_cfg, run)
    scores: list[dict[str, Any]] = []
    settings: dict[str, float] = {}
    for which in (cfg, tuned_cfg):
        holdout = prepare_holdout(store, which, n_out, truth)
        try:
            if not settings:  # derived once from the training events, shared by both
                settings = _resolved_half_lives(cfg, holdout.train)
            trial = run_trial(spark, holdout, which, Trial(1, settings), run.run_id)
        finally:
            holdout.release()
        scores.append({"objective": holdout.objective, "status": trial.status, **trial.scores})
    return scores[0], scores[1]


def _resolved_half_lives(cfg: Config, train: DataFrame) -> dict[str, float]:
    """``profile`` and ``recommend`` half-lives as numbers (``auto`` derived from ``train``)."""
    return {
        "profile.half_life_days": halflife.profile_half_life(cfg.profile, train).days,
        "recommend.half_life_days": halflife.recommend_half_life(cfg.recommend, train).days,
    }


def _better(after: dict[str, Any], before: dict[str, Any]) -> bool:
    """Whether the tuned encoder scored higher on the (shared) objective."""
    if after.get("score") is None:
        return False
    return before.get("score") is None or after["score"] > before["score"]


def _metrics(
    version: int,
    pairs: int,
    trained: dict[str, Any],
    before: dict[str, Any],
    after: dict[str, Any],
    promoted: bool,
) -> dict[str, float]:
    metrics: dict[str, float] = {
        "version": version,
        "pairs": pairs,
        "steps": trained["steps"],
        "train_seconds": trained["seconds"],
        "pairs_per_second": trained["pairs_per_second"],
        "loss_first": trained["loss_curve"][0][1],
        "loss_last": trained["loss_curve"][-1][1],
        "promoted": promoted,
    }
    for name in ("score", *TRUTH_FIGURES):
        for when, scores in (("before", before), ("after", after)):
            if scores.get(name) is not None:
                metrics[f"{name}_{when}"] = scores[name]
    return metrics


def _log_to_mlflow(run_id: str, metadata: dict[str, Any], output: Any) -> bool:
    """Log the training (params, loss curve, before/after) and the model folder to MLflow
    when it is installed; a tracking failure never fails the finished training."""
    try:
        import mlflow
    except ImportError:
        return False
    try:
        with mlflow.start_run(run_name=f"usersegments finetune {run_id}"):
            mlflow.log_params({k: v for k, v in metadata["train"].items() if k != "output"})
            for step, loss in metadata["loss_curve"]:
                mlflow.log_metric("loss", loss, step=step)
            for when in ("before", "after"):
                for name, value in metadata[when].items():
                    if isinstance(value, int | float) and not isinstance(value, bool):
                        mlflow.log_metric(f"{when}_{name}", float(value))
            mlflow.log_artifacts(str(output), artifact_path="encoder")
    except Exception as exc:  # noqa: BLE001
        log.warning("finetune: logging to MLflow failed: %s", exc)
        return False
    return True
