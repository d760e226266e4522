"""Labels, recommendations, evaluation and the report, on the planted `usersegments run`."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
from pyspark.sql import functions as F

from tests.conftest import PLANTED_OVERRIDES, run_job, set_args
from tests.helpers import metrics_of
from usersegments.config import load_config
from usersegments.evaluate import holdout_split
from usersegments.label import (
    LabelGenerator,
    class_tfidf,
    event_terms,
    label_from_keywords,
    label_segments,
)
from usersegments.recommend import without_seen
from usersegments.schema import SEGMENT_RECOMMENDATIONS, SEGMENTS
from usersegments.testing.synthetic import area_names, distinctive_words


def test_label_from_keywords_prefers_phrases_and_skips_repeats():
    keywords = ["trail", "trail running", "running", "ultramarathon", "lugged outsole"]
    assert label_from_keywords(keywords, 2, " · ") == "trail running · ultramarathon"
    assert label_from_keywords(["a b", "b", "c"], 1, "/") == "a b"
    assert label_from_keywords([], 2, " · ") == ""


def test_terms_drop_stop_words_numbers_and_count_once_per_event(spark):
    cfg = load_config(overrides=["label.stop_words=[deluxe]"]).label
    events = spark.createDataFrame(
        [("e1", "The Deluxe Trail Kit 12. For trail running fans: trail!")],
        "event_id string, text string",
    )
    terms = set(event_terms(events, cfg).first()["terms"])
    assert {"trail", "kit", "running", "fans", "trail kit", "trail running"} <= terms
    assert not terms & {"the", "for", "deluxe", "12"}
    assert len(event_terms(events, cfg).first()["terms"]) == len(terms)  # distinct


def test_class_tfidf_ranks_the_distinctive_term_first(spark):
    cfg = load_config(overrides=["label.min_df=1", "label.n_keywords=2"]).label
    rows = [("a", "shared", 1.0), ("b", "shared", 1.0)] + [("a", "alpha", 1.0)] * 2
    rows += [("b", "beta", 1.0)] * 3
    scored = class_tfidf(
        spark.createDataFrame(rows, "segment_id string, term string, weight double"), cfg
    ).collect()
    first = {r["segment_id"]: r["term"] for r in scored if r["rank"] == 1}
    assert first == {"a": "alpha", "b": "beta"}
    assert max(r["rank"] for r in scored) == 2


def test_each_planted_area_is_named_by_its_dominant_segment(planted):
    store, data = planted.store, planted.data
    segments = store.read("segments").toPandas()
    members = store.read("user_segments").select("user_id", "segment_id").toPandas()
    joined = members.merge(data.truth[["user_id", "area"]], on="user_id")
    keywords = dict(zip(segments["segment_id"], segments["keywords"], strict=True))
    missing = {}
    for area in area_names():
        dominant = joined[joined["area"] == area]["segment_id"].value_counts().index[0]
        top5 = list(keywords[dominant])[:5]
        words = {w for k in top5 for w in k.split()}
        if not words & distinctive_words(area):
            missing[area] = (dominant, top5)
    assert not missing, missing
    assert segments["label"].str.len().min() > 0
    assert all(len(items) == planted.cfg.label.n_top_items for items in segments["top_items"])


def test_top_items_were_touched_by_members(planted):
    store = planted.store
    items = store.read("segments").select("segment_id", F.explode("top_items").alias("item_id"))
    touched = (
        store.read("events")
        .join(store.read("user_segments").select("user_id", "segment_id"), "user_id")
        .select("segment_id", "item_id")
        .distinct()
    )
    assert items.count() > 0
    assert items.join(touched, ["segment_id", "item_id"], "left_anti").count() == 0


def test_segment_recommendations_are_ranked_per_segment(planted):
    store, cfg = planted.store, planted.cfg
    recs = store.read("segment_recommendations")
    assert recs.schema == SEGMENT_RECOMMENDATIONS
    assert store.read("segments").schema == SEGMENTS
    pdf = recs.toPandas()
    n_segments = store.read("segments").count()
    assert pdf["segment_id"].nunique() == n_segments
    for _, group in pdf.groupby("segment_id"):
        group = group.sort_values("rank")
        assert list(group["rank"]) == list(range(1, len(group) + 1))
        assert len(group) == cfg.recommend.top_n
        assert group["score"].is_monotonic_decreasing
        assert group["text"].notna().all()
    assert (pdf["run_id"] == planted.run_id).all()


def test_per_user_lists_leave_out_seen_items(spark):
    recs = spark.createDataFrame(
        [("s", "i1", 1, 3.0), ("s", "i2", 2, 2.0), ("s", "i3", 3, 1.0)],
        "segment_id string, item_id string, rank int, score double",
    )
    users = spark.createDataFrame([("u", "s"), ("v", "s")], "user_id string, segment_id string")
    seen = spark.createDataFrame([("u", "i1")], "user_id string, item_id string")
    out = without_seen(recs, users, seen, "segment_id", 2).toPandas()
    got = {u: list(g.sort_values("rank")["item_id"]) for u, g in out.groupby("user_id")}
    assert got == {"u": ["i2", "i3"], "v": ["i1", "i2"]}


def test_holdout_keeps_min_events_for_training(spark):
    from datetime import datetime, timedelta

    t0 = datetime(2026, 1, 1)
    rows = [(f"a{i}", "a", t0 + timedelta(days=i)) for i in range(6)]
    rows += [(f"b{i}", "b", t0 + timedelta(days=i)) for i in range(4)]
    events = spark.createDataFrame(rows, "event_id string, user_id string, event_time timestamp")
    held = {r["event_id"] for r in holdout_split(events, 2, 3).filter("held_out").collect()}
    assert held == {"a5", "a4"}  # b would keep only 2 < 3 events


def test_segments_beat_popularity_offline(planted, capsys):
    """``jobs/evaluate.py`` on the planted run."""
    store, cfg = planted.store, planted.cfg
    # k as the planted run chose it: the job re-clusters without trying every candidate.
    k_chosen = int(metrics_of(store, planted.run_id, "cluster")["k"])
    code = run_job(
        "evaluate.py",
        "--output",
        store.root,
        *set_args(*PLANTED_OVERRIDES, f"cluster.k={k_chosen}"),
        "--truth",
        planted.paths["truth"],
    )
    out = capsys.readouterr().out
    assert code == 0, out
    k = cfg.evaluate.k
    assert f"hit rate@{k}" in out
    run_id = store.read("runs").filter("command = 'evaluate'").first()["run_id"]
    m = metrics_of(store, run_id, "evaluate")
    assert m["users_tested"] > 500 and m["holdout_last"] == cfg.evaluate.holdout_last
    assert m[f"hit_rate@{k}.segment"] > m[f"hit_rate@{k}.popularity"], m
    assert m[f"recall@{k}.segment"] > m[f"recall@{k}.popularity"], m
    assert m["ari_cluster_vs_area"] > 0.7, m
    # The stored tables are untouched by the evaluation's re-clustering.
    assert store.read("user_segments").filter(F.col("run_id") == run_id).count() == 0


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.ids: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        if "id" in attrs:
            self.ids.append(attrs["id"])


def test_report_renders_every_image_and_segment_card(planted):
    store = planted.store
    index = Path(store.root) / "report" / "index.html"
    page = _Page()
    page.feed(index.read_text(encoding="utf-8"))
    plots = {image.rsplit("-", 1)[0] for image in page.images}
    assert {"map", "sizes", "k_selection", "ingest"} <= plots
    # Every image is named by its content and nothing else is left beside the page.
    assert sorted(p.name for p in index.parent.glob("*.png")) == sorted(page.images)
    for image in page.images:
        path = index.parent / image
        assert path.is_file() and path.stat().st_size > 1000, image
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    segments = {r["segment_id"] for r in store.read("segments").select("segment_id").collect()}
    assert {f"seg-{s}" for s in segments} <= set(page.ids)
    text = index.read_text(encoding="utf-8")
    assert not re.search(r"(src|href)=['\"]https?://", text)  # nothing from the network


def test_report_describes_no_segment_below_the_privacy_floor(spark, planted):
    from datetime import datetime, timezone

    from usersegments.report import gather, render_html

    data = gather(spark, planted.store, planted.cfg)
    sizes = data.segments["size"].sort_values().to_numpy()
    data.min_segment_size = int(sizes[len(sizes) // 2]) + 1  # half the segments too small
    page = _Page()
    images = {name: f"{name}.png" for name in ("map", "sizes", "ingest")}
    page.feed(render_html(data, images, datetime.now(timezone.utc)))
    shown = {i[len("seg-") :] for i in page.ids if i.startswith("seg-")}
    large = set(data.segments.loc[data.segments["size"] >= data.min_segment_size, "segment_id"])
    assert shown == large and 0 < len(large) < len(data.segments)


def test_label_generator_phrases_labels_with_a_local_model(tmp_path):
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from usersegments.embed import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(load_config().embed.model))
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=tokenizer.vocab_size,
            n_positions=256,
            n_embd=32,
            n_layer=1,
            n_head=2,
            bos_token_id=tokenizer.cls_token_id,
            eos_token_id=tokenizer.sep_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    folder = tmp_path / "tiny-generator"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    cfg = load_config(overrides=[f"label.generator={folder}", "label.generator_max_new_tokens=6"])
    segments = pd.DataFrame({"segment_id": ["c00.s00", "c01.s00"], "label": [None, None]})
    keywords = {"c00.s00": ["trail running", "hiking"], "c01.s00": ["baking"]}
    items = {"c00.s00": ["i1"], "c01.s00": []}
    described, generated = label_segments(segments, keywords, items, {"i1": "Trail Kit"}, cfg.label)
    # A random model may write only special tokens for a segment: its label falls back
    # to the keywords. Labels are never empty, and at least one is the model's.
    fallback = {"c00.s00": "trail running · hiking", "c01.s00": "baking"}
    assert generated >= 1
    assert all(isinstance(x, str) and 0 < len(x) <= 120 for x in described["label"])
    phrased = [
        lab
        for seg, lab in zip(described["segment_id"], described["label"], strict=True)
        if lab != fallback[seg]
    ]
    assert len(phrased) == generated
    assert "Keywords: trail running, hiking" in LabelGenerator.prompt(
        ["trail running", "hiking"], []
    )
    with pytest.raises(Exception, match="label.generator"):
        LabelGenerator(str(tmp_path / "absent"), 4)
