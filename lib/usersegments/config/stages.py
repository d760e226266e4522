"""The sections for the pipeline's stages: profile, cluster (with its sub-clusters),
interests, label, recommend, evaluate, update, report, privacy and tune."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from usersegments.config.section import Section

# The default weight of each event type; ``tune.event_weights`` starts from it too.
DEFAULT_EVENT_WEIGHTS: dict[str, float] = {
    "purchase": 3.0,
    "review": 2.0,
    "rate": 2.0,
    "like": 1.5,
    "click": 1.0,
    "view": 1.0,
    "search": 1.0,
}

ValueTransform = Literal["none", "log1p", "linear"]


def positive_days_or_auto(setting: str, value: object) -> object:
    """``value`` as a number of days > 0, or ``"auto"``; a ValueError naming ``setting``.

    Checked before pydantic's own parsing so that the message names the setting once,
    not once per branch of ``float | 'auto'``.
    """
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        days = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        days = math.nan
    if isinstance(value, bool) or not math.isfinite(days) or days <= 0:
        raise ValueError(f"{setting} must be a number of days > 0 or 'auto', got {value!r}")
    return days


class ProfileConfig(Section):
    """How a user's events become one interest vector (see ``profile``)."""

    event_weights: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_EVENT_WEIGHTS),
        description="Weight of each event type in a user's vector.",
    )
    default_event_weight: float = Field(
        1.0, ge=0, description="Weight of event types not listed in event_weights."
    )
    half_life_days: float | Literal["auto"] = Field(
        "auto",
        description="Time decay: an event this much older than the user's latest event "
        "weighs half as much; a number of days > 0, or auto = the median active span "
        "(first to last event) of the users with at least min_events events, derived from "
        "the log by every full run and kept by its updates.",
    )
    value_transform: ValueTransform = Field(
        "none", description="How an event's value multiplies its weight."
    )
    min_events: int = Field(3, ge=1, description="Users with fewer events are not clustered.")
    pca_dims: int | None = Field(
        None, ge=2, description="Reduce vectors with PCA before clustering."
    )
    as_of: datetime | None = Field(
        None, description="Reference time of the decay (default: the latest event time)."
    )

    @field_validator("half_life_days", mode="before")
    @classmethod
    def _half_life(cls, value: object) -> object:
        return positive_days_or_auto("profile.half_life_days", value)

    @field_validator("event_weights")
    @classmethod
    def _non_negative_weights(cls, value: dict[str, float]) -> dict[str, float]:
        negative = {k: v for k, v in value.items() if v < 0}
        if negative:
            raise ValueError(f"event weights must be >= 0, got {negative}")
        return value


class SubClusterConfig(Section):
    """Fine segments inside each coarse cluster (agglomerative clustering)."""

    linkage: Literal["ward", "average"] = Field(
        "ward", description="ward on normalised vectors, or average with cosine distance."
    )
    distance_threshold: float | None = Field(
        None, gt=0, description="Cut the dendrogram at this distance (exclusive with target_size)."
    )
    target_size: int | None = Field(
        150, ge=2, description="Aim for segments of about this many users."
    )
    max_local_points: int = Field(
        10_000, ge=10, description="Larger clusters: fit on a sample this big, assign the rest."
    )

    @model_validator(mode="after")
    def _one_criterion(self) -> SubClusterConfig:
        if (self.distance_threshold is None) == (self.target_size is None):
            raise ValueError(
                "set exactly one of cluster.sub.distance_threshold and cluster.sub.target_size "
                "(set the other to null)"
            )
        return self


class ClusterConfig(Section):
    """Two-level clustering (see ``cluster``)."""

    k: int | Literal["auto"] = Field(
        "auto", description="Coarse clusters: a number >= 2, or auto to pick from k_candidates."
    )
    k_candidates: list[int] = Field(
        default_factory=lambda: [6, 8, 10, 12, 14, 16, 20],
        description="Values of k tried when k is auto (scored by cosine silhouette).",
    )
    sample_size: int = Field(20_000, ge=100, description="Users sampled to choose k.")
    leaves_per_cluster: int = Field(
        3,
        ge=1,
        le=10,
        description="Bisecting k-means first splits into this many leaves per coarse cluster, "
        "then merges leaves (weighted Ward) back to k.",
    )
    max_iter: int = Field(20, ge=1, description="Bisecting k-means iterations per split.")
    refine_iterations: int = Field(
        10,
        ge=0,
        description="k-means passes over all users after the bisecting fit: each user to "
        "the nearest cluster centroid, centroids recomputed (0 = none). Bisection never "
        "moves a user across an earlier split; refining does.",
    )
    refine_tolerance: float = Field(
        1e-4,
        ge=0.0,
        description="Refining stops when no centroid moves by more than this cosine distance.",
    )
    seed: int = Field(42, description="Seed of every random choice in clustering.")
    sub: SubClusterConfig = Field(default_factory=SubClusterConfig)

    @field_validator("k")
    @classmethod
    def _k_at_least_two(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 2:
            raise ValueError(f"k must be >= 2 or 'auto', got {value}")
        return value

    @field_validator("k_candidates")
    @classmethod
    def _candidates(cls, value: list[int]) -> list[int]:
        if not value or any(k < 2 for k in value):
            raise ValueError(f"k_candidates must be a non-empty list of integers >= 2, got {value}")
        return sorted(set(value))


class InterestsConfig(Section):
    """Several interests per user, from their own events (see ``interests``)."""

    max_events_per_user: int = Field(
        200,
        ge=2,
        description="Only each user's this many most recent events are clustered (bounds "
        "the memory of one user's group).",
    )
    distance_threshold: float = Field(
        0.9,
        gt=0,
        le=2,
        description="Ward's dendrogram of a user's unit event vectors is split from the top "
        "while the two sides' unit centroids are further apart than this (Euclidean; "
        "0.9 = cosine similarity 0.6). On generated data, events of one area lie a median "
        "0.98 apart and events of two areas 1.31: sides of one area average out below "
        "0.9, sides of two areas stay above it.",
    )
    max_per_user: int = Field(3, ge=1, le=10, description="At most this many interests per user.")
    min_weight: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="Interests with a smaller share of the user's decayed weighted "
        "engagement are dropped (the rest renormalised; the heaviest is always kept).",
    )


class LabelConfig(Section):
    """Segment descriptions (see ``label``)."""

    n_keywords: int = Field(8, ge=1, le=50, description="Keywords kept per segment.")
    ngram_max: int = Field(2, ge=1, le=3, description="Longest keyword n-gram.")
    min_df: int = Field(2, ge=1, description="A term must appear in this many events.")
    min_members: int = Field(
        2,
        ge=1,
        description="A keyword must be used by this many members of its segment (one "
        "prolific poster's signature does not describe a segment).",
    )
    max_segment_share: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Boilerplate cut: a term whose weight is spread over more than "
        "1 + this x (segments - 1) segments (inverse Simpson of its per-segment "
        "frequencies) is no keyword, so words every segment uses (reply prefixes, "
        "mail domains) are left out; with 2 segments a term needs about 3.7x the "
        "frequency in one than in the other.",
    )
    keyword_candidates: int = Field(
        40,
        ge=1,
        le=500,
        description="Best c-TF-IDF terms per segment brought to the driver, from which "
        "near-duplicates are merged down to n_keywords.",
    )
    phrase_share: float = Field(
        0.5,
        gt=0,
        le=1,
        description="An n-gram replaces a chosen keyword that is one of its words (or a "
        "shorter n-gram of them) when its score is at least this share of that keyword's.",
    )
    english_stop_words: bool = Field(True, description="Drop English stop words.")
    stop_words: list[str] = Field(default_factory=list, description="Extra stop words.")
    n_top_items: int = Field(5, ge=1, le=100, description="Representative items per segment.")
    item_candidates: int = Field(
        200,
        ge=1,
        description="Representative items are chosen among the segment's this many most "
        "touched items (nearest to the centroid).",
    )
    separator: str = Field(" · ", description="Joins the keywords of a label.")
    label_keywords: int = Field(2, ge=1, le=5, description="Keywords joined into a label.")
    generator: str | None = Field(
        None,
        description="Optional local text-generation model folder (transformers) that phrases "
        "each label from its keywords and items; off by default.",
    )
    generator_max_new_tokens: int = Field(
        12, ge=1, le=64, description="Tokens the label generator may write per label."
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
