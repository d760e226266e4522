"""The sections that build segments: profile (event weights and time decay), cluster
(with its sub-clusters), interests and label."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Literal

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
        4_000,
        ge=10,
        description="Larger clusters: fit on a sample this big, assign the rest. A Ward "
        "fit's time and memory grow with the square of its points (4,000 unit vectors: "
        "about 2 s and 0.35 GB in one Python worker; 10,000: 15-27 s and 1 GB).",
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
    sample_size: int = Field(
        20_000,
        ge=100,
        description="Users sampled to choose k and to fit the restarts; all users are "
        "assigned and refine the chosen fit.",
    )
    leaves_per_cluster: int = Field(
        3,
        ge=1,
        le=10,
        description="Bisecting k-means first splits into this many leaves per coarse cluster, "
        "then merges leaves (weighted Ward) back to k.",
    )
    max_iter: int = Field(
        10,
        ge=1,
        description="Bisecting k-means iterations per level of splits. MLlib runs all of "
        "them (it has no convergence test), one Spark job each; a two-way split settles in "
        "a few, and the refining passes over all users follow.",
    )
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
    restarts: int = Field(
        4,
        ge=1,
        le=20,
        description="Coarse fits from seeds seed, seed+1, ...: each bisects the sample "
        "into leaves, merges them to k and refines on the sample; the most cohesive (users' "
        "mean cosine similarity to their cluster's centroid) is refined on all users. "
        "k-means ends in a local optimum that depends on its start. Their cost does not "
        "grow with users (they read the sample).",
    )
    fit_few_event_users: bool = Field(
        True,
        description="Users with a profile but fewer than profile.min_events events also "
        "inform the coarse fit, each as one user like those placed; they get no segment, "
        "and the centres then take refine_iterations passes over the placed users alone. "
        "false: the fit reads only the users it places.",
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
