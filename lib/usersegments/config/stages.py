"""The sections of the stages after segmenting: recommend, evaluate, update, report,
privacy and tune (``config.segmenting`` has profile, cluster, interests and label)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from usersegments.config.section import Section
from usersegments.config.segmenting import (
    DEFAULT_EVENT_WEIGHTS,
    ValueTransform,
    positive_days_or_auto,
)


class RecommendConfig(Section):
    """Per-segment recommendations (see ``recommend``)."""

    top_n: int = Field(20, ge=1, le=1000, description="Items recommended per segment.")
    per_user: bool = Field(False, description="Also write user_recommendations.")
    half_life_days: float | Literal["auto"] = Field(
        "auto",
        description="Recency decay of item popularity: a number of days > 0, or auto = the "
        "median age of the log's events at its latest event (the recent half of the "
        "activity weighs at least half), derived from the events each time.",
    )

    @field_validator("half_life_days", mode="before")
    @classmethod
    def _half_life(cls, value: object) -> object:
        return positive_days_or_auto("recommend.half_life_days", value)


class EvaluateConfig(Section):
    """Offline evaluation (see ``evaluate``)."""

    holdout_last: int = Field(
        2, ge=1, description="Each user's last N events are held out (--holdout-last)."
    )
    k: int = Field(10, ge=1, le=1000, description="Cut-off of hit rate@K and recall@K.")
    exclude_seen: bool = Field(
        True, description="Recommend a user nothing they touched before the holdout."
    )
    candidates: int = Field(
        200,
        ge=1,
        description="Items ranked per group before a user's seen items are removed.",
    )


class UpdateConfig(Section):
    """Incremental updates (see ``dynamics``)."""

    recluster_threshold: float = Field(
        0.2,
        gt=0,
        le=1,
        description="Re-cluster when more than this share of the reassigned users changed "
        "segment in one update (drift).",
    )
    novelty_distance: float = Field(
        0.5, gt=0, le=2, description="A text this far (cosine) from every centroid is novel."
    )
    move_margin: float = Field(
        0.02,
        ge=0,
        le=1,
        description="An updated user changes segment only when the nearest segment is more "
        "similar (cosine) than their current one by more than this.",
    )
    min_new_events: int = Field(
        3,
        ge=0,
        description="An updated user changes segment only after at least this many events "
        "since they entered their current one (a stray event never moves a user).",
    )
    read_changes: bool = Field(
        True,
        description="Read only the events committed since the events version the stored "
        "profiles hold, through the events table's change data feed; false, or a table "
        "without the feed, reads the whole table (the reason is recorded in run_metrics).",
    )
    match_similarity: float = Field(
        0.8,
        gt=0,
        le=1,
        description="On re-clustering, a new segment keeps an old id when their centroids' "
        "cosine is at least this (Hungarian matching).",
    )


class ReportConfig(Section):
    """The HTML report (see ``report``)."""

    enabled: bool = Field(True, description="Write <output>/report/index.html.")
    map_sample: int = Field(
        5000, ge=100, le=50_000, description="Users drawn on the 2-D map (a sample)."
    )
    projection: Literal["auto", "umap", "pca"] = Field(
        "auto",
        description="2-D map projection: auto = UMAP when umap-learn is installed, else PCA.",
    )
    history_runs: int = Field(
        12, ge=1, le=100, description="Latest runs shown in the views of segments over runs."
    )
    change_min_share: float = Field(
        0.1,
        gt=0,
        description="A segment size change at least this share of its size is news "
        "on the overview (with at least 1% of all users).",
    )


class PrivacyConfig(Section):
    """What may be stored and shown about users."""

    min_segment_size: int = Field(
        20, ge=1, description="No segment describes fewer users (smaller ones are merged)."
    )
    pseudonymize_user_ids: bool = Field(
        False,
        description="Replace user ids with a keyed HMAC at ingest; key from the "
        "USERSEGMENTS_PSEUDONYM_KEY environment variable or secret_scope.",
    )
    secret_scope: str | None = Field(
        None, description="Databricks secret scope holding the pseudonym key."
    )
    secret_key: str = Field(
        "usersegments-pseudonym-key", description="Key name inside secret_scope."
    )
    drop_text_after_embedding: bool = Field(
        False,
        description="Once embedded, events keep only text_hash: each distinct text is kept "
        "once in the texts table (no user id, no time) for labels and recommendations.",
    )


PositiveDays = Annotated[float, Field(gt=0)]
NonNegativeWeight = Annotated[float, Field(ge=0)]


class TuneConfig(Section):
    """The settings search of ``usersegments tune`` (see ``tune``)."""

    search: Literal["random", "grid"] = Field(
        "random",
        description="random: tune.trials distinct combinations of the candidate lists, drawn "
        "with tune.seed; grid: every combination (tune.trials is then ignored).",
    )
    trials: int = Field(8, ge=1, description="Combinations tried by a random search.")
    seed: int = Field(42, description="Seed of the random search (same seed, same trials).")
    holdout_last: int = Field(
        2, ge=1, description="Each user's last N events are held out to score a trial."
    )
    parallel: int = Field(
        2,
        ge=1,
        description="Trials whose Spark jobs run at once on the one session (1 = one after "
        "another, when memory is short).",
    )
    objective: Literal["auto", "hit_rate_lift", "interest_fit"] = Field(
        "auto",
        description="What a trial is scored on: hit_rate_lift = held-out hit rate@K of segment "
        "recommendations minus that of popularity; interest_fit = how much closer held-out "
        "events lie to the user's segment centroid than to the global mean; auto = "
        "hit_rate_lift when at least repeat_share_min of held-out events are items seen in "
        "training, else interest_fit.",
    )
    repeat_share_min: float = Field(
        0.5,
        ge=0,
        le=1,
        description="objective auto: the share of held-out events on items seen in training "
        "from which items are taken to repeat across users.",
    )
    k: list[int | Literal["auto"]] = Field(
        default_factory=lambda: [8, 12, 16],
        description="Candidates of cluster.k (auto = chosen from cluster.k_candidates).",
    )
    profile_half_life_days: list[PositiveDays] = Field(
        default_factory=lambda: [14.0, 30.0, 90.0],
        description="Candidates of profile.half_life_days.",
    )
    recommend_half_life_days: list[PositiveDays] = Field(
        default_factory=lambda: [7.0, 14.0, 30.0],
        description="Candidates of recommend.half_life_days.",
    )
    event_weights: list[dict[str, NonNegativeWeight]] = Field(
        default_factory=lambda: [dict(DEFAULT_EVENT_WEIGHTS), {}],
        description="Candidates of profile.event_weights, each a whole map (types it does not "
        "list weigh profile.default_event_weight; {} = every type alike).",
    )
    value_transform: list[ValueTransform] = Field(
        default_factory=lambda: ["none", "log1p"],
        description="Candidates of profile.value_transform.",
    )
    sub_target_size: list[Annotated[int, Field(ge=2)]] = Field(
        default_factory=lambda: [50, 150],
        description="Candidates of cluster.sub.target_size (distance_threshold is unset).",
    )
    output: str | None = Field(
        None,
        description="Where the best settings are written as a config file "
        "(default: <store.root>/tuned.yaml).",
    )

    @field_validator(
        "k",
        "profile_half_life_days",
        "recommend_half_life_days",
        "event_weights",
        "value_transform",
        "sub_target_size",
    )
    @classmethod
    def _non_empty(cls, value: list[Any], info: Any) -> list[Any]:
        if not value:
            raise ValueError(
                f"tune.{info.field_name} must list at least one candidate, got an empty list"
            )
        return value

    @field_validator("k")
    @classmethod
    def _k_at_least_two(cls, value: list[int | str]) -> list[int | str]:
        if any(isinstance(v, int) and v < 2 for v in value):
            raise ValueError(f"tune.k candidates must be >= 2 or 'auto', got {value}")
        return value
