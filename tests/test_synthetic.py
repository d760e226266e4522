"""The synthetic generator: realistic, deterministic, with planted truth."""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from importlib import resources

import pandas as pd
import pytest

from usersegments.testing.synthetic import (
    AREAS,
    GeneratorSettings,
    area_names,
    distinctive_words,
    generate,
    split_at,
    write,
)

# sha256 of the CSV text of events, items and truth for users=60, seed=5. Any change to
# the vocabulary or to the order of the random draws changes every figure downstream;
# update this only on purpose. (Changed when truth gained secondary_share: without that
# column the digest is still d6fea6ce..., so events, items and the draws are unchanged.)
GOLDEN_60_USERS_SEED_5 = "58b340261471ccd737fab570f31208c5a59209135d4a1202bbae6de2526463a6"


def test_deterministic_for_a_seed():
    a = generate(GeneratorSettings(users=150, seed=3))
    b = generate(GeneratorSettings(users=150, seed=3))
    c = generate(GeneratorSettings(users=150, seed=4))
    pd.testing.assert_frame_equal(a.events, b.events)
    pd.testing.assert_frame_equal(a.truth, b.truth)
    assert a.manifest == b.manifest
    assert not a.events.equals(c.events)


def test_data_for_a_seed_is_pinned():
    data = generate(GeneratorSettings(users=60, seed=5))
    digest = hashlib.sha256()
    for frame in (data.events, data.items, data.truth):
        digest.update(frame.to_csv(index=False).encode())
    assert digest.hexdigest() == GOLDEN_60_USERS_SEED_5


def test_vocabulary_ships_as_package_data():
    assert resources.files("usersegments.testing").joinpath("vocabulary.json").is_file()


def test_areas_are_distinct_and_rich():
    assert len(AREAS) >= 12
    for area, (_, styles) in AREAS.items():
        assert 2 <= len(styles) <= 4, area
    names = area_names()
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not distinctive_words(a) & distinctive_words(b), (a, b)


def test_catalog_and_personas():
    data = generate(GeneratorSettings(users=400, seed=1))
    assert len(data.items) >= 2000
    assert data.items["item_id"].is_unique
    assert set(data.items["category"]) == set(area_names())
    mix = data.events["event_type"].value_counts()
    assert mix["view"] > mix["search"] > mix["purchase"] > mix["review"]
    per_user = data.events.groupby("user_id").size()
    assert per_user.max() > 4 * per_user.median()  # heavy-tailed activity
    truth = data.truth
    assert truth["user_id"].is_unique and len(truth) == 400
    drifted = truth[truth["new_area"].notna()]
    assert 0.04 < len(drifted) / len(truth) < 0.2
    assert (drifted["new_area"] != drifted["area"]).all()
    assert drifted["drift_date"].notna().all()


def test_written_files_and_manifest(tmp_path):
    data = generate(GeneratorSettings(users=100, seed=2))
    paths = write(data, tmp_path)
    for key in ("events_csv", "events_parquet", "items", "truth", "manifest"):
        assert (tmp_path / paths[key].split("/")[-1]).stat().st_size > 0
    raw = (tmp_path / "events.csv").read_bytes()
    assert b"\xff\xfe" in raw  # invalid UTF-8 planted in the CSV
    assert pd.read_parquet(paths["events_parquet"]).shape[0] == data.manifest["rows"]


def test_split_at_partitions_the_events():
    data = generate(GeneratorSettings(users=80, seed=6))
    before, after = split_at(data, datetime(2026, 9, 10, tzinfo=timezone.utc))
    assert len(before.events) > 0 and len(after.events) > 0
    assert len(before.events) + len(after.events) == len(data.events)
    assert before.manifest["rows"] == len(before.events)
    assert after.manifest["window"] == "after"


def test_truth_gives_each_users_secondary_share():
    truth = generate(GeneratorSettings(users=400, seed=1)).truth
    with_secondary = truth["secondary_area"].notna()
    assert (truth.loc[~with_secondary, "secondary_share"] == 0).all()
    # A secondary area gets about 20% of a user's events (plus noise landing on it).
    assert 0.15 < truth.loc[with_secondary, "secondary_share"].mean() < 0.3


def test_ambiguous_areas_share_their_words_and_differ_only_by_brand():
    data = generate(GeneratorSettings(users=80, seed=5, ambiguous_areas=True))
    first, second = area_names()[:2]
    words = {
        area: {
            w.strip(".,:").lower()
            for text in data.items.loc[data.items["category"] == area, "text"]
            for w in text.split()[1:]  # after the brand
        }
        for area in (first, second)
    }
    # The second area speaks the first's vocabulary: none of its own distinctive words.
    assert not words[second] & distinctive_words(second)
    assert words[second] & distinctive_words(first)
    brands_seen = {
        area: set(data.items.loc[data.items["category"] == area, "text"].str.split().str[0])
        for area in (first, second)
    }
    assert brands_seen[first] and not brands_seen[first] & brands_seen[second]
    # Without the option the catalog is the pinned one (no brands, own vocabularies).
    plain = generate(GeneratorSettings(users=80, seed=5))
    assert not plain.items["text"].str.split().str[0].isin(brands_seen[first]).any()


def test_a_subset_of_areas_plants_only_those_areas_and_keeps_pairs_whole():
    data = generate(GeneratorSettings(users=60, seed=5, areas=4, ambiguous_areas=True))
    chosen = area_names()[:4]
    assert set(data.truth["area"]) == set(chosen)
    assert set(data.truth["secondary_area"].dropna()) <= set(chosen)
    assert set(data.items["category"]) == set(chosen)
    assert data.manifest["areas"] == chosen
    with pytest.raises(ValueError, match="areas must be even"):
        GeneratorSettings(areas=3, ambiguous_areas=True)
    with pytest.raises(ValueError, match="areas must be 0"):
        GeneratorSettings(areas=len(area_names()) + 1)
    with pytest.raises(ValueError, match="needs areas of 3 or more"):
        GeneratorSettings(areas=2, drift_share=0.1)


def _item_events(settings: GeneratorSettings) -> pd.DataFrame:
    """Events with an item, with the item's area, sub-style (from its "For <style> fans"
    description) and the user's planted secondary area."""
    data = generate(settings)
    items = data.items.rename(columns={"text": "item_text"})
    items["sub_style"] = items["item_text"].str.extract(r"For (.+?) fans:", expand=False)
    assert items["sub_style"].notna().all()
    return (
        data.events.dropna(subset=["user_id", "item_id"])
        .merge(items, on="item_id")
        .merge(data.truth[["user_id", "secondary_area"]], on="user_id")
    )


def test_options_skew_item_popularity_and_focus_secondary_interests():
    """``item_popularity`` makes a sub-style's first items the most engaged with (Zipf);
    ``focused_secondary`` puts most of a secondary area's events on one sub-style."""
    base = dict(users=300, seed=5, drift_share=0.0)
    uniform = _item_events(GeneratorSettings(**base))
    skewed = _item_events(GeneratorSettings(**base, item_popularity=1.0, focused_secondary=True))

    def top_item_share(events: pd.DataFrame) -> float:
        counts = events.groupby(["sub_style", "item_id"]).size()
        return float(counts.groupby("sub_style").agg(lambda c: c.max() / c.sum()).mean())

    def secondary_focus(events: pd.DataFrame) -> float:
        secondary = events[events["category"] == events["secondary_area"]]
        enough = secondary.groupby("user_id").size() >= 4
        top = secondary.groupby("user_id")["sub_style"].agg(
            lambda s: s.value_counts().iloc[0] / len(s)
        )
        return float(top[enough].mean())

    # 90 items a sub-style: uniform draws give the top item ~4% of a style's events;
    # Zipf (s = 1) gives it 1 / H(90) = 20%.
    assert top_item_share(uniform) < 0.08 < 0.15 < top_item_share(skewed)
    # 85% of a focused secondary interest's events are about its sub-style.
    assert secondary_focus(uniform) < 0.7 < 0.8 < secondary_focus(skewed)


def test_negative_item_popularity_is_refused():
    with pytest.raises(ValueError, match="item_popularity"):
        GeneratorSettings(item_popularity=-1.0)
