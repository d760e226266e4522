"""A generator of realistic behaviour logs with planted ground truth.

Users are personas: a primary interest area and sub-style, often a secondary
area, plus noise. Items have titles and descriptions composed from their
area's vocabulary (no two areas share a distinctive word) and shared generic
words (see ``vocabulary``). A configurable share of users switches primary
interest at a known date (planted drift) and a configurable share of rows is bad
in known ways (planted bad rows). Everything is a pure function of the seed.

By default items are drawn uniformly within a sub-style and a secondary interest
spreads over its area's sub-styles. ``item_popularity`` (Zipf popularity) and
``focused_secondary`` (a secondary interest is a sub-style, as the primary is) make
the log look more like a real one, where per-user blends of several interests'
recommendations pay; both off keeps the draws of earlier versions.

Files written under the output folder:

- ``events.csv`` and ``events.parquet``: the events (times as strings in mixed
  formats: ISO-8601 with and without zone, epoch seconds, epoch milliseconds);
- ``items.parquet`` / ``items.csv``: the catalog (item_id, text, category);
- ``truth.parquet`` / ``truth.csv``: per user area, sub_style, secondary_area, drift_date,
  new_area, new_sub_style and ``secondary_share`` (the share of the user's generated
  events about the secondary area, 0 without one; before bad rows are planted);
- ``manifest.json``: counts of rows and of each kind of planted bad row.

``write`` and ``output_paths`` live in ``usersegments.testing.files``.
"""

from __future__ import annotations

from dataclasses import asdict, astuple, dataclass, field
from datetime import datetime, timedelta, timezone
from functools import lru_cache

import numpy as np
import pandas as pd

from usersegments.testing.bad_rows import BAD_KINDS, plant_bad_rows
from usersegments.testing.files import output_paths, write
from usersegments.testing.vocabulary import (
    AREAS,
    GENERIC_WORDS,
    PRODUCT_FORMS,
    QUERY_TEMPLATES,
    REVIEW_TEMPLATES,
    area_names,
    distinctive_words,
)

__all__ = [
    "AREAS",
    "BAD_KINDS",
    "DEFAULT_END",
    "GeneratedData",
    "GeneratorSettings",
    "area_names",
    "distinctive_words",
    "generate",
    "generated_times",
    "make_items",
    "output_paths",
    "split_at",
    "write",
]


# Event mix: views >> searches > clicks > purchases > reviews, ratings.
EVENT_TYPES = ["view", "search", "click", "purchase", "review", "rate"]
EVENT_TYPE_P = [0.58, 0.16, 0.12, 0.07, 0.04, 0.03]

# The share of a persona's events about another sub-style of the interest's area.
OTHER_STYLE_SHARE = 0.15

DEFAULT_END = datetime(2026, 9, 30, tzinfo=timezone.utc)

_EVENT_COLUMNS = ["user_id", "event_time", "event_type", "item_id", "text", "value"]
_TRUTH_COLUMNS = [
    "user_id",
    "area",
    "sub_style",
    "secondary_area",
    "drift_date",
    "new_area",
    "new_sub_style",
    "secondary_share",
]


@dataclass(frozen=True)
class GeneratorSettings:
    """Knobs of ``generate``; the defaults make about 20 events per user."""

    users: int = 2000
    seed: int = 7
    days: int = 60
    end: datetime = DEFAULT_END
    items_per_style: int = 90
    median_events: float = 15.0
    secondary_share: float = 0.5
    noise_share: float = 0.08
    drift_share: float = 0.1
    drift_at: float = 0.7
    bad_row_share: float = 0.02
    duplicate_share: float = 0.01
    malformed_csv_lines: int = 3
    # Areas in pairs share every word (the second of a pair speaks the first's
    # vocabulary); only a brand name in item titles and who engages tell them apart.
    ambiguous_areas: bool = False
    # The first N planted areas only (0: all of them); an even N keeps pairs whole.
    areas: int = 0
    # Item popularity within a sub-style: 0 draws items uniformly; s > 0 draws the
    # r-th item of a sub-style with probability proportional to 1 / r**s (Zipf), as
    # real catalogues are skewed. 0 keeps the draws (and every figure) as they were.
    item_popularity: float = 0.0
    # True: a secondary interest is a sub-style of its area, as the primary is (85% of
    # its events there); False: each secondary event picks any sub-style of the area.
    focused_secondary: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.areas <= len(AREAS) or self.areas == 1:
            raise ValueError(f"areas must be 0 (all) or 2..{len(AREAS)}, got {self.areas}")
        if self.ambiguous_areas and self.areas % 2:
            raise ValueError(f"ambiguous_areas pairs areas: areas must be even, got {self.areas}")
        if self.item_popularity < 0:
            raise ValueError(f"item_popularity must be >= 0, got {self.item_popularity}")
        if self.areas == 2 and self.drift_share > 0:
            # A drifting user moves to an area that is neither their primary nor secondary.
            raise ValueError("drift_share > 0 needs areas of 3 or more (or 0, all of them)")

    def area_names(self) -> list[str]:
        """The areas these settings plant, in the vocabulary's order."""
        return area_names()[: self.areas or None]


@dataclass
class GeneratedData:
    """What ``generate`` produced, in memory; ``write`` puts it on disk."""

    events: pd.DataFrame
    items: pd.DataFrame
    truth: pd.DataFrame
    settings: GeneratorSettings
    manifest: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class _Persona:
    """One user's planted interests, fields in the order of the truth table's first
    columns (``secondary_share`` follows, counted from the events); ``drift`` is None
    for users who never switch."""

    user_id: str
    area: str
    style: str
    secondary: str | None
    drift: datetime | None
    new_area: str | None
    new_style: str | None
    # Not a truth column: the sub-style a focused secondary interest is about.
    secondary_style: str | None = None

    def truth_fields(self) -> tuple:
        """The truth table's persona columns, in order (all fields but the last)."""
        return astuple(self)[:-1]


# Syllables of the made-up brand names of ambiguous areas (words no encoder knows).
BRAND_SYLLABLES = ("vor", "tal", "qui", "mex", "dran", "sol", "pim", "rue", "zan", "kel")


def speaks_like(area: str, style: str, ambiguous: bool) -> tuple[str, list[str], list[str]]:
    """The (style name, nouns, style words) an area's texts use: its own, or with
    ``ambiguous`` and an area second of its pair, the first's (style by position)."""
    names = area_names()
    position = names.index(area)
    if ambiguous and position % 2 == 1:
        lead = names[position - 1]
        own_styles = list(AREAS[area][1])
        lead_styles = list(AREAS[lead][1])
        lead_style = lead_styles[own_styles.index(style) % len(lead_styles)]
        return lead_style, AREAS[lead][0], AREAS[lead][1][lead_style]
    return style, AREAS[area][0], AREAS[area][1][style]


def brands(area: str) -> list[str]:
    """Three made-up brand names of ``area`` (distinct across areas)."""
    k = area_names().index(area)
    n = len(BRAND_SYLLABLES)
    first = BRAND_SYLLABLES[k % n] + BRAND_SYLLABLES[(k // n + 3) % n]
    return [(first + BRAND_SYLLABLES[(k + j + 1) % n]).title() for j in range(3)]


def make_items(
    rng: np.random.Generator,
    per_style: int,
    ambiguous: bool = False,
    areas: list[str] | None = None,
) -> pd.DataFrame:
    """The item catalog of ``areas`` (default all): titles and descriptions from each
    sub-style's vocabulary (with ``ambiguous``, see ``speaks_like``, and a brand of the
    area first in each title)."""
    rows = []
    for area in areas or area_names():
        for style in AREAS[area][1]:
            spoken, nouns, words = speaks_like(area, style, ambiguous)
            seen: set[str] = set()
            while len(seen) < per_style:
                w1, w2 = rng.choice(words, size=2, replace=False)
                title = " ".join(
                    [
                        str(rng.choice(GENERIC_WORDS)).title(),
                        str(w1).title(),
                        str(rng.choice(nouns)).title(),
                        str(rng.choice(PRODUCT_FORMS)).title(),
                    ]
                )
                if rng.random() < 0.5:
                    title += f" {int(rng.integers(2, 40))}"
                if ambiguous:
                    title = f"{rng.choice(brands(area))} {title}"
                if title in seen:
                    continue
                seen.add(title)
                description = f"{title}. For {spoken} fans: {w2} and {w1}, {rng.choice(nouns)}."
                rows.append((area, style, description))
    items = pd.DataFrame(rows, columns=["category", "sub_style", "text"])
    items.insert(0, "item_id", [f"i{n:05d}" for n in range(len(items))])
    return items


def generate(settings: GeneratorSettings | None = None) -> GeneratedData:
    """Generate events, items and truth for ``settings`` (deterministic for a seed)."""
    s = settings or GeneratorSettings()
    rng = np.random.default_rng(s.seed)
    items = make_items(rng, s.items_per_style, s.ambiguous_areas, s.area_names())
    by_style = {k: g["item_id"].to_numpy() for k, g in items.groupby("sub_style", sort=True)}
    start = s.end - timedelta(days=s.days)
    drift_date = start + timedelta(days=s.days * s.drift_at)
    # The order of the draws below is the data: every change to it changes every figure.
    truth_rows, events = [], []
    for u in range(s.users):
        persona = _draw_persona(rng, f"u{u:06d}", s, drift_date)
        offsets = _event_offsets(rng, persona, s, start)
        secondary = 0
        for off in offsets:
            when = start + timedelta(seconds=float(off))
            area, style = _event_interest(rng, persona, when, s)
            secondary += area == persona.secondary
            events.append(
                _make_event(
                    rng,
                    persona.user_id,
                    when,
                    area,
                    style,
                    by_style,
                    s.ambiguous_areas,
                    s.item_popularity,
                )
            )
        # Noise events that land on the secondary area count too: they are its events.
        truth_rows.append((*persona.truth_fields(), secondary / len(offsets)))

    truth = pd.DataFrame(truth_rows, columns=_TRUTH_COLUMNS)
    frame, manifest = plant_bad_rows(
        rng, pd.DataFrame(events, columns=_EVENT_COLUMNS), s.bad_row_share, s.duplicate_share
    )
    manifest.update(
        {
            "settings": {k: str(v) for k, v in asdict(s).items()},
            "drift_date": drift_date.isoformat(),
            "drifted_users": int(truth["new_area"].notna().sum()),
            "items": len(items),
            "areas": s.area_names(),
            "malformed_csv_lines": s.malformed_csv_lines,
        }
    )
    return GeneratedData(
        events=frame,
        items=items[["item_id", "text", "category"]],
        truth=truth,
        settings=s,
        manifest=manifest,
    )


def generated_times(events: pd.DataFrame) -> pd.Series:
    """The generator's event times as UTC timestamps (NaT for the planted garbage)."""
    raw = events["event_time"].astype("string")
    # Float64 whatever the subset holds: a window of integer epochs alone would give Int64,
    # into which the millisecond division below cannot be written back.
    numeric = pd.to_numeric(raw, errors="coerce").astype("Float64")
    texts = raw.where(numeric.isna())
    parsed = pd.to_datetime(texts, utc=True, errors="coerce", format="ISO8601")
    seconds = numeric.where(numeric < 1e11, numeric / 1000.0)
    from_epoch = pd.to_datetime(seconds, unit="s", utc=True, errors="coerce")
    return parsed.fillna(from_epoch)


def split_at(data: GeneratedData, when: datetime) -> tuple[GeneratedData, GeneratedData]:
    """Two time windows of ``data``: events before ``when`` and from ``when`` on.

    Rows without a readable time (planted garbage) stay in the first window. Items,
    truth and settings are shared; each manifest counts its own rows.
    """
    times = generated_times(data.events)
    later = (times >= pd.Timestamp(when)).fillna(False).to_numpy()
    windows = []
    for mask, name in ((~later, "before"), (later, "after")):
        events = data.events[mask].reset_index(drop=True)
        manifest = {**data.manifest, "rows": len(events), "window": name, "split_at": str(when)}
        windows.append(GeneratedData(events, data.items, data.truth, data.settings, manifest))
    return windows[0], windows[1]


def _draw_style(rng: np.random.Generator, area: str) -> str:
    styles = list(AREAS[area][1])
    return styles[int(rng.integers(len(styles)))]


def _draw_persona(
    rng: np.random.Generator, user_id: str, s: GeneratorSettings, drift_date: datetime
) -> _Persona:
    """A user's primary area and style, maybe a secondary area, maybe a planted switch."""
    areas = s.area_names()
    area = areas[int(rng.integers(len(areas)))]
    style = _draw_style(rng, area)
    secondary = None
    if rng.random() < s.secondary_share:
        others = [a for a in areas if a != area]
        secondary = others[int(rng.integers(len(others)))]
    drift = new_area = new_style = None
    if rng.random() < s.drift_share:
        choices = [a for a in areas if a not in (area, secondary)]
        new_area = choices[int(rng.integers(len(choices)))]
        new_style = _draw_style(rng, new_area)
        drift = drift_date + timedelta(hours=float(rng.uniform(0, 48)))
    # Drawn last, and only when asked, so the other settings keep their draws.
    secondary_style = (
        _draw_style(rng, secondary) if s.focused_secondary and secondary is not None else None
    )
    return _Persona(user_id, area, style, secondary, drift, new_area, new_style, secondary_style)


def _event_offsets(
    rng: np.random.Generator, persona: _Persona, s: GeneratorSettings, start: datetime
) -> np.ndarray:
    """Sorted seconds after ``start`` of the user's events (heavy-tailed counts)."""
    n = int(np.clip(rng.lognormal(np.log(s.median_events), 0.8), 5, 400))
    offsets = np.sort(rng.uniform(0, s.days * 86400, size=n))
    if persona.drift is not None:
        # Drifted users stay active after the switch, so the new interest is visible.
        cut = (persona.drift - start).total_seconds()
        after = max(3, n // 3)
        offsets[-after:] = np.sort(rng.uniform(cut, s.days * 86400, size=after))
        offsets = np.sort(offsets)
    return offsets


def _event_interest(
    rng: np.random.Generator, persona: _Persona, when: datetime, s: GeneratorSettings
) -> tuple[str, str]:
    """The area and style one event is about: the persona's, its secondary, or noise.

    An interest with a sub-style (the primary; a focused secondary) keeps to it but for
    ``OTHER_STYLE_SHARE`` of its events; one without (noise; an unfocused secondary)
    draws any sub-style of its area."""
    area, style = persona.area, persona.style
    if persona.drift is not None and when >= persona.drift:
        area, style = persona.new_area, persona.new_style
    roll = rng.random()
    if roll < s.noise_share:
        areas = s.area_names()
        area, style = areas[int(rng.integers(len(areas)))], None
    elif persona.secondary is not None and roll < s.noise_share + 0.2:
        area, style = persona.secondary, persona.secondary_style
    if style is None or rng.random() < OTHER_STYLE_SHARE:
        style = _draw_style(rng, area)
    return area, style


def _pick_item(rng: np.random.Generator, pool: np.ndarray, popularity: float) -> str:
    """One item of ``pool``: uniform, or Zipf with exponent ``popularity`` over the
    pool's order (the first item the most popular)."""
    if popularity <= 0:
        return str(pool[int(rng.integers(len(pool)))])
    cumulative = _zipf_cumulative(len(pool), popularity)
    return str(pool[min(int(np.searchsorted(cumulative, rng.random())), len(pool) - 1)])


@lru_cache(maxsize=64)
def _zipf_cumulative(n: int, exponent: float) -> np.ndarray:
    """The cumulative Zipf distribution over ranks 1..n (computed once per pool size)."""
    weights = 1.0 / np.arange(1, n + 1) ** exponent
    return np.cumsum(weights / weights.sum())


def _make_event(rng, user_id, when, area, style, by_style, ambiguous=False, popularity=0.0):
    etype = EVENT_TYPES[int(rng.choice(len(EVENT_TYPES), p=EVENT_TYPE_P))]
    _, nouns, words = speaks_like(area, style, ambiguous)
    item_id = text = value = None
    if etype == "search":
        template = QUERY_TEMPLATES[int(rng.integers(len(QUERY_TEMPLATES)))]
        text = template.format(w=rng.choice(words), a=rng.choice(nouns))
    else:
        item_id = _pick_item(rng, by_style[style], popularity)
        if etype == "review":
            template = REVIEW_TEMPLATES[int(rng.integers(len(REVIEW_TEMPLATES)))]
            text = template.format(w=rng.choice(words))
        if etype in ("rate", "review"):
            value = float(rng.integers(1, 6))
    return (user_id, _format_time(rng, when), etype, item_id, text, value)


def _format_time(rng: np.random.Generator, when: datetime) -> str:
    """Times arrive in the formats real logs mix: mostly ISO-8601, some epochs."""
    roll = rng.random()
    if roll < 0.70:
        return when.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    if roll < 0.80:
        return when.strftime("%Y-%m-%d %H:%M:%S")  # zone-less: taken as input.timezone (UTC)
    if roll < 0.90:
        return str(int(when.timestamp()))  # epoch seconds
    return str(int(when.timestamp() * 1000))  # epoch milliseconds
