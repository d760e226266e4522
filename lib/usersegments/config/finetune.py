"""The ``finetune`` section: adapting the encoder to the platform's behaviour (see
``usersegments.finetune``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from usersegments.config.section import Section


class FinetuneConfig(Section):
    """How ``usersegments finetune`` builds its training pairs and trains the encoder."""

    window: int = Field(
        3,
        ge=1,
        description="A user's event is paired with each of the user's next N events (other "
        "texts only): what the same person engages with next is the positive.",
    )
    max_events_per_user: int = Field(
        200,
        ge=2,
        description="Only each user's most recent N training events make pairs (a heavy user "
        "does not dominate, and no user's history grows without bound).",
    )
    popular_share: float = Field(
        0.001,
        gt=0,
        le=1,
        description="Down-sampling of popular texts (as word2vec's sample): a pair is kept "
        "with probability min(1, sqrt(popular_share / share)) for each of its two texts, "
        "where share is the text's share of all training events.",
    )
    max_steps: int = Field(300, ge=1, description="Optimizer steps (batches) at most.")
    batch_size: int = Field(
        32, ge=2, description="Pairs per step; the other pairs of a batch are its negatives."
    )
    learning_rate: float = Field(2e-5, gt=0, description="AdamW learning rate (linear warmup).")
    warmup_share: float = Field(
        0.1, ge=0, lt=1, description="Share of max_steps over which the rate warms up."
    )
    temperature: float = Field(
        0.05, gt=0, description="Softmax temperature of the contrastive loss (cosine / T)."
    )
    seed: int = Field(42, description="Seed of the pair sampling, the shuffle and the model.")
    max_minutes: float = Field(
        30.0, gt=0, description="Time budget: training stops (and saves) after this long."
    )
    checkpoint_every: int = Field(
        100,
        ge=1,
        description="Steps between checkpoints; a rerun of the same version resumes there.",
    )
    num_processes: int = Field(
        1,
        ge=1,
        description="Training processes (TorchDistributor): 1 on a laptop; one per GPU or "
        "executor on a cluster.",
    )
    local_mode: bool = Field(
        True,
        description="TorchDistributor local_mode: train on the driver (true) or in Spark "
        "tasks on the executors (false, for clusters).",
    )
    use_gpu: Literal["auto", "true", "false"] = Field(
        "auto", description="Train on GPUs (auto: when torch sees CUDA on the driver)."
    )
    promote: Literal["manual", "auto"] = Field(
        "manual",
        description="manual: the tuned model becomes finetuned:latest only with --promote; "
        "auto: also when it scores better than the current encoder on held-out behaviour.",
    )
    holdout_last: int = Field(
        2, ge=1, description="Each user's last N events are held out to score before/after."
    )
