"""Labels, recommendations, evaluation and the report, on the planted `usersegments run`."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
from pyspark.sql import functions as F

from tests.conftest import PLANTED_OVERRIDES, run_job, set_args
from tests.helpers import metrics_of
from usersegments.config import load_config
from usersegments.errors import ConfigError
from usersegments.evaluate import holdout_split
from usersegments.label import (
    LabelGenerator,
    class_tfidf,
    distinct_keywords,
    event_terms,
    label_from_keywords,
    label_segments,
    segment_keywords,
)
from usersegments.label.keywords import MEMBER_BOUNDS
from usersegments.recommend import top_overall, top_per_group, without_seen
from usersegments.schema import SEGMENT_RECOMMENDATIONS, SEGMENTS
from usersegments.testing.synthetic import (
    GeneratorSettings,
    area_names,
    distinctive_words,
    generate,
)


def test_label_from_keywords_prefers_phrases_and_skips_repeats():
    keywords = ["trail", "trail running", "running", "ultramarathon", "lugged outsole"]
    assert label_from_keywords(keywords, 2, " · ") == "trail running · ultramarathon"
    assert label_from_keywords(["a b", "b", "c"], 1, "/") == "a b"
    assert label_from_keywords([], 2, " · ") == ""


@pytest.mark.slow  # over ~3 s on 2 cores
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


@pytest.mark.slow
def test_class_tfidf_ranks_the_distinctive_term_first(spark):
    overrides = ["label.min_df=1", "label.min_members=1", "label.keyword_candidates=2"]
    cfg = load_config(overrides=overrides).label
    rows = [("a", "shared", 1.0), ("b", "shared", 1.0)] + [("a", "alpha", 1.0)] * 2
    rows += [("b", "beta", 1.0)] * 3 + [("a", "apple", 1.0), ("a", "avocado", 1.0)]
    rows += [("b", "banana", 1.0)]
    scored = class_tfidf(
        spark.createDataFrame(rows, "segment_id string, term string, weight double"), cfg
    ).collect()
    first = {r["segment_id"]: r["term"] for r in scored if r["rank"] == 1}
    assert first == {"a": "alpha", "b": "beta"}
    assert max(r["rank"] for r in scored) == 2


def test_a_row_standing_for_several_events_scores_as_those_events(spark):
    """Label tokenizes each distinct text once, so a member's events of one text arrive as
    one row with their summed weight and their count (``events``): ``label.min_df`` and
    the scores must see the events, as if each came as its own row."""
    cfg = load_config(overrides=["label.min_df=3", "label.min_members=1"]).label
    events = [("a", "u1", "alpha", 0.5)] * 3 + [("a", "u2", "alpha", 0.25)]
    events += [("a", "u1", "rare", 1.0)] * 2 + [("b", "u3", "beta", 0.2)] * 4
    events += [("b", "u3", "shared", 0.1)] * 3 + [("a", "u2", "shared", 0.1)]
    schema = "segment_id string, user_id string, term string, weight double"
    one_per_event = spark.createDataFrame(events, schema)
    aggregated = one_per_event.groupBy("segment_id", "user_id", "term").agg(
        F.sum("weight").alias("weight"), F.count(F.lit(1)).alias("events")
    )
    assert aggregated.count() < len(events)

    def ranked(frame):
        rows = class_tfidf(frame, cfg).collect()
        return sorted((r["segment_id"], r["rank"], r["term"], round(r["score"], 9)) for r in rows)

    scored = ranked(aggregated)
    assert scored == ranked(one_per_event)
    terms = {term for _, _, term, _ in scored}
    assert "alpha" in terms and "rare" not in terms  # 4 events pass min_df 3; 2 do not


@pytest.mark.slow  # over ~3 s on 2 cores
def test_terms_are_contiguous_n_grams_without_addresses(spark):
    cfg = load_config(overrides=["label.ngram_max=3"]).label
    text = (
        "Re: Buy the watery gel! Mail joe.smith@cs.cmu.edu or see http://www.example.com/a?b "
        "and www.shop.org/x - don't miss the bill of rights, 5 stars"
    )
    events = spark.createDataFrame([("e1", text)], "event_id string, text string")
    terms = set(event_terms(events, cfg).first()["terms"])
    assert {"buy", "watery gel", "buy the watery", "bill of rights", "stars"} <= terms
    # "buy watery" is not in the text; n-grams do not begin or end with stop words,
    # numbers or 1-letter tokens; addresses leave no tokens.
    assert not terms & {"buy watery", "the watery", "rights 5", "5 stars", "don", "t"}
    address_parts = {"joe", "smith", "cs", "cmu", "edu", "http", "www", "example", "com", "shop"}
    assert not {w for t in terms for w in t.split()} & address_parts


@pytest.mark.slow
def test_class_tfidf_leaves_out_boilerplate_and_terms_commoner_elsewhere(spark):
    cfg = load_config(overrides=["label.min_df=1", "label.min_members=1"]).label
    rows = []
    for seg, own in [("a", "alpha"), ("b", "beta"), ("c", "gamma")]:
        rows += [(seg, "re", 1.0)] * 10 + [(seg, own, 1.0)] * 6  # "re" in every event
    rows += [("a", "shared", 1.0)] * 2 + [("b", "shared", 1.0)] * 6  # commoner in b
    schema = "segment_id string, term string, weight double"
    scored = class_tfidf(spark.createDataFrame(rows, schema), cfg).collect()
    by_segment = {}
    for r in scored:
        by_segment.setdefault(r["segment_id"], set()).add(r["term"])
    assert by_segment == {"a": {"alpha"}, "b": {"beta", "shared"}, "c": {"gamma"}}
    # With only 2 segments a distinctive term is kept, an evenly shared one is not.
    two = [r for r in rows if r[0] != "c"]
    scored = class_tfidf(spark.createDataFrame(two, schema), cfg).collect()
    kept = {(r["segment_id"], r["term"]) for r in scored}
    assert kept == {("a", "alpha"), ("b", "beta")}


@pytest.mark.slow
@pytest.mark.parametrize("rows_of", ["member", "text"])
def test_class_tfidf_needs_several_members_using_a_keyword(spark, rows_of):
    """Rows per member carry the user id; rows per text (what the label stage makes for
    label.min_members <= 2) the least and greatest id of the members that wrote it."""
    cfg = load_config(overrides=["label.min_df=1"]).label  # min_members 2
    rows = [("a", "u1", "banks", "t1", 1.0)] * 9 + [("a", "u1", "clinic", "t2", 1.0)] * 3
    rows += [("a", f"u{i}", "medicine", f"t{i + 3}", 1.0) for i in range(3)]
    rows += [("a", "u2", "clinic", "t2", 1.0)]  # a second member of t2's text
    rows += [("b", "u9", "other", "t9", 1.0), ("b", "u8", "other", "t9", 1.0)]
    schema = "segment_id string, user_id string, term string, text string, weight double"
    frame = spark.createDataFrame(rows, schema)
    if rows_of == "text":
        frame = frame.groupBy("segment_id", "text", "term").agg(
            F.sum("weight").alias("weight"),
            F.count(F.lit(1)).alias("events"),
            F.min("user_id").alias(MEMBER_BOUNDS[0]),
            F.max("user_id").alias(MEMBER_BOUNDS[1]),
        )
    scored = class_tfidf(frame.drop("text"), cfg).collect()
    assert {(r["segment_id"], r["term"]) for r in scored} == {
        ("a", "medicine"),
        ("a", "clinic"),
        ("b", "other"),
    }
    # A third member is needed from label.min_members 3 on: per member rows only.
    cfg3 = cfg.model_copy(update={"min_members": 3})
    if rows_of == "member":
        scored = class_tfidf(frame.drop("text"), cfg3).collect()
        assert {(r["segment_id"], r["term"]) for r in scored} == {("a", "medicine")}
    else:
        with pytest.raises(ValueError, match="min_members"):
            class_tfidf(frame.drop("text"), cfg3)


def test_distinct_keywords_merges_near_duplicates():
    cfg = load_config(overrides=["label.n_keywords=3"]).label
    ranked = [("five", 1.0), ("five stars", 0.9), ("stars five", 0.8), ("stars", 0.7)]
    ranked += [("great gift", 0.5), ("gifts", 0.45), ("watch", 0.4), ("strap", 0.3)]
    assert distinct_keywords(ranked, cfg) == ["five stars", "great gift", "watch"]
    assert distinct_keywords([("gun", 1.0), ("guns", 0.9), ("law", 0.5)], cfg) == ["gun", "law"]
    # An n-gram far below its part does not replace it.
    assert distinct_keywords([("clipper", 1.0), ("clipper chip", 0.2)], cfg) == ["clipper"]
    assert distinct_keywords([("clipper", 1.0), ("clipper chip", 0.6)], cfg) == ["clipper chip"]


@pytest.mark.slow
def test_keywords_on_generated_events_are_real_distinctive_and_not_boilerplate(spark):
    data = generate(GeneratorSettings(users=160, seed=5, bad_row_share=0.0, duplicate_share=0.0))
    events = data.events.merge(
        data.items[["item_id", "text"]].rename(columns={"text": "item_text"}), "left", "item_id"
    )
    events["text"] = events["text"].fillna(events["item_text"])
    events = events.merge(data.truth[["user_id", "area"]], on="user_id")
    events = events[events["text"].notna()].reset_index(drop=True)
    # Boilerplate every segment carries, as a reply prefix and a signature would.
    events["text"] = "Re: " + events["text"] + " -- sent from my phone"
    frame = spark.createDataFrame(
        events[["user_id", "area", "event_type", "text", "value"]].rename(
            columns={"area": "segment_id"}
        )
    ).withColumns({"event_time": F.lit(data.settings.end), "text_hash": F.sha2("text", 256)})
    cfg = load_config(overrides=["profile.half_life_days=30"])
    keywords = segment_keywords(frame, cfg, data.settings.end)
    assert set(keywords) == set(events["area"]) and all(keywords.values())
    tokens = events["text"].str.lower().str.findall(r"[^\W_]+").str.join(" ")
    texts = " " + tokens + " "
    boilerplate = {"re", "sent", "phone", "sent from", "my phone"}
    for seg, terms in keywords.items():
        mine = (events["area"] == seg).to_numpy()
        assert not set(terms) & boilerplate, (seg, terms)
        for term in terms:
            has = texts.str.contains(f" {term} ", regex=False).to_numpy()
            assert has[mine].any(), (seg, term)  # occurs, contiguously, in its texts
            assert has[mine].mean() > has[~mine].mean(), (seg, term)  # commoner here
        words = [set(t.split()) for t in terms]
        assert not any(a <= b for i, a in enumerate(words) for j, b in enumerate(words) if i != j)


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


@pytest.mark.slow  # over ~3 s on 2 cores
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


def test_top_items_of_one_group_are_ranked_as_per_group_ranking_ranks_them(spark):
    """The popularity baseline's top-n (no window over one partition) gives the rows,
    ranks and ties (by item id) that the per-group window gives."""
    scores = spark.createDataFrame(
        [("all", f"i{i}", float(i % 4), i) for i in range(10)],
        "everyone string, item_id string, score double, users long",
    )
    overall = top_overall(scores, "everyone", 5).toPandas()
    windowed = top_per_group(scores, "everyone", 5).toPandas().sort_values("rank")
    assert overall.to_dict("records") == windowed.reset_index(drop=True).to_dict("records")
    assert list(overall["item_id"]) == ["i3", "i7", "i2", "i6", "i1"]
    assert top_overall(scores.limit(0), "everyone", 5).count() == 0


@pytest.mark.slow
def test_per_user_lists_blend_interests_by_weight(spark):
    from usersegments.recommend import user_lists

    # Segment a's list is peaked; b is a broad segment: its best items are each a tenth
    # of its members' engagement.
    recs = spark.createDataFrame(
        [
            ("a", "a1", 1, 10.0, 0.5),
            ("a", "a2", 2, 8.0, 0.4),
            ("a", "a3", 3, 2.0, 0.1),
            ("b", "b1", 1, 1.0, 0.1),
            ("b", "b2", 2, 1.0, 0.1),
        ],
        "segment_id string, item_id string, rank int, score double, share double",
    )
    groups = spark.createDataFrame(
        [("u", "a"), ("v", "a"), ("w", "b")], "user_id string, segment_id string"
    )
    # u: 60% a, 40% b; v has no interests (its segment's list); w's only interest is in
    # a segment without recommendations ("c"): its own segment's list.
    interests = spark.createDataFrame(
        [("u", "a", 0.6), ("u", "b", 0.4), ("w", "c", 1.0)],
        "user_id string, segment_id string, weight double",
    )
    seen = spark.createDataFrame([("u", "a1")], "user_id string, item_id string")
    out = user_lists(recs, groups, interests, seen, 3).toPandas()
    got = {u: list(g.sort_values("rank")["item_id"]) for u, g in out.groupby("user_id")}
    # u: a2 0.6 x 0.4 = 0.24, a3 0.6 x 0.1 = 0.06, b1 = b2 = 0.4 x 0.1 = 0.04 (tie by id).
    # Scaled to each list's best item instead, b's flat list would take two of u's three
    # places (0.4 each) from a3.
    assert got == {"u": ["a2", "a3", "b1"], "v": ["a1", "a2", "a3"], "w": ["b1", "b2"]}
    u = out[out["user_id"] == "u"].set_index("item_id")
    assert u["score"].to_dict() == pytest.approx({"a2": 0.24, "a3": 0.06, "b1": 0.04})
    assert u["segment_id"].to_dict() == {"a2": "a", "a3": "a", "b1": "b"}


@pytest.mark.slow
def test_per_user_recommendations_of_a_run_blend_each_users_interests(spark, planted, tmp_path):
    """``recommend.per_user`` on a copy of the planted store: every placed user gets a
    ranked list without what they touched, whose items come from their interests'
    segments; users with several interests get items of more than one of them."""
    import shutil

    from tests.conftest import make_config
    from tests.helpers import new_run
    from usersegments.recommend import run_recommend
    from usersegments.store import TableStore

    shutil.copytree(planted.store.root, tmp_path / "store")
    cfg = make_config(tmp_path / "store", *PLANTED_OVERRIDES, "recommend.per_user=true")
    store = TableStore.from_config(spark, cfg)
    run = new_run(spark, store, cfg, "recommend")
    result = run_recommend(spark, store, cfg, run)
    run.flush()

    lists = store.read("user_recommendations").toPandas()
    placed = store.read("user_segments").select("user_id", "segment_id").toPandas()
    interests = store.read("user_interests").select("user_id", "segment_id").toPandas()
    seen = (
        store.read("events")
        .filter(F.col("item_id").isNotNull())
        .select("user_id", "item_id")
        .distinct()
        .toPandas()
    )
    assert result.metrics["user_recommendations"] == len(lists)
    assert set(lists["user_id"]) == set(placed["user_id"])
    assert lists.merge(seen, on=["user_id", "item_id"]).empty
    for _, group in lists.groupby("user_id"):
        ordered = group.sort_values("rank")
        assert list(ordered["rank"]) == list(range(1, len(group) + 1))
        assert len(group) <= cfg.recommend.top_n
        assert ordered["score"].is_monotonic_decreasing
    # Each item names the interest it owes most to: one of the user's interests' segments.
    with_interests = lists[lists["user_id"].isin(set(interests["user_id"]))]
    owed = with_interests.merge(interests, on=["user_id", "segment_id"], how="left", indicator=True)
    assert (owed["_merge"] == "both").all()
    several = interests.groupby("user_id").size()
    several = set(several[several >= 2].index)
    sources = lists[lists["user_id"].isin(several)].groupby("user_id")["segment_id"].nunique()
    assert len(sources) >= 50 and (sources >= 2).mean() > 0.25, sources.describe()


def test_holdout_keeps_min_events_for_training(spark):
    from datetime import datetime, timedelta

    t0 = datetime(2026, 1, 1)
    rows = [(f"a{i}", "a", t0 + timedelta(days=i)) for i in range(6)]
    rows += [(f"b{i}", "b", t0 + timedelta(days=i)) for i in range(4)]
    events = spark.createDataFrame(rows, "event_id string, user_id string, event_time timestamp")
    held = {r["event_id"] for r in holdout_split(events, 2, 3).filter("held_out").collect()}
    assert held == {"a5", "a4"}  # b would keep only 2 < 3 events


@pytest.fixture(scope="module")
def planted_evaluation(planted):
    """``jobs/evaluate.py`` on the planted run: its printed output, run id and metrics."""
    import contextlib
    import io

    store = planted.store
    # k as the planted run chose it: the job re-clusters without trying every candidate.
    k_chosen = int(metrics_of(store, planted.run_id, "cluster")["k"])
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = run_job(
            "evaluate.py",
            "--output",
            store.root,
            *set_args(*PLANTED_OVERRIDES, f"cluster.k={k_chosen}"),
            "--truth",
            planted.paths["truth"],
        )
    out = printed.getvalue()
    assert code == 0, out
    run_id = store.read("runs").filter("command = 'evaluate'").first()["run_id"]
    return {"out": out, "run_id": run_id, "metrics": metrics_of(store, run_id, "evaluate")}


def test_segments_beat_popularity_offline(planted, planted_evaluation):
    store, cfg = planted.store, planted.cfg
    out, run_id, m = (planted_evaluation[key] for key in ("out", "run_id", "metrics"))
    k = cfg.evaluate.k
    assert f"hit rate@{k}" in out
    assert m["users_tested"] > 500 and m["holdout_last"] == cfg.evaluate.holdout_last
    assert m[f"hit_rate@{k}.segment"] > m[f"hit_rate@{k}.popularity"], m
    assert m[f"recall@{k}.segment"] > m[f"recall@{k}.popularity"], m
    assert m["ari_cluster_vs_area"] > 0.7, m
    # The stored tables are untouched by the evaluation's re-clustering.
    assert store.read("user_segments").filter(F.col("run_id") == run_id).count() == 0


def test_blended_interest_lists_beat_the_primary_segment(planted, planted_evaluation):
    """Users with several interests: their interests' segment lists blended by weight
    find more held-out items than their primary segment's list alone."""
    k = planted.cfg.evaluate.k
    m = planted_evaluation["metrics"]
    blended, primary = m[f"hit_rate@{k}.blended_multi"], m[f"hit_rate@{k}.segment_multi"]
    print(
        f"\nusers with several interests: {m['users_tested_multi']:.0f}; hit rate@{k} blended "
        f"{blended:.3f} vs primary segment {primary:.3f}; recall@{k} "
        f"{m[f'recall@{k}.blended_multi']:.3f} vs {m[f'recall@{k}.segment_multi']:.3f}"
    )
    assert m["users_tested_multi"] >= 50
    assert "interests blended" in planted_evaluation["out"]
    assert blended > primary, m


class _Page(HTMLParser):
    """The ids, script sources, links, representative items and JSON payload of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: list[str] = []
        self.scripts: list[str] = []
        self.links: list[str] = []
        self.items: list[str] = []
        self.payload: dict | None = None
        self._in: str | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "script" and attrs.get("src"):
            self.scripts.append(attrs["src"])
        if tag == "script" and attrs.get("id") == "report-data":
            self._in = "payload"
        if tag == "li" and self._in is None:
            self._in, self._text = "li", ""
        if tag == "a" and "href" in attrs:
            self.links.append(attrs["href"])
        if "id" in attrs:
            self.ids.append(attrs["id"])

    def handle_data(self, data):
        if self._in == "payload":
            self.payload = json.loads(data)
        elif self._in == "li":
            self._text += data

    def handle_endtag(self, tag):
        if tag == "script" and self._in == "payload":
            self._in = None
        if tag == "li" and self._in == "li":
            self.items.append(self._text.strip())
            self._in = None


def _render(data):
    from datetime import datetime, timezone

    from usersegments.report import render_html

    page = _Page()
    page.feed(render_html(data, datetime.now(timezone.utc), "assets/plotly.min.js").html)
    return page


def test_report_is_an_offline_explorer_with_a_page_per_segment(planted):
    store = planted.store
    folder = Path(store.root) / "report"
    html = (folder / "index.html").read_text(encoding="utf-8")
    page = _Page()
    page.feed(html)
    # plotly.js bundled once beside the page, and nothing else left in the folder.
    assert len(page.scripts) == 1 and re.fullmatch(
        r"assets/plotly-[\w.]+-\w{12}\.min\.js", page.scripts[0]
    )
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert files == sorted(["index.html", page.scripts[0]])
    assert not re.search(r"(src|href)=['\"]https?://", html)  # nothing from the network
    assert {"map", "hierarchy", "ingest", "k_selection", "co_interest"} <= set(
        page.payload["figures"]
    )
    # The co-interest heat map: symmetric, the diagonal the segments' reach.
    heat = page.payload["figures"]["co_interest"]["data"][0]
    z = heat["z"]
    assert heat["type"] == "heatmap" and len(z) == len(heat["x"]) >= 2
    assert all(z[i][j] == z[j][i] for i in range(len(z)) for j in range(len(z)))
    reach = {r["segment_id"]: r["reach"] for r in store.read("segments").collect()}
    shown = [x.split(" ")[0] for x in heat["x"]]
    assert [z[i][i] for i in range(len(z))] == [reach[s] for s in shown]
    assert sum(z[i][j] for i in range(len(z)) for j in range(i + 1, len(z))) > 0
    assert {f"page-{p}" for p in ("overview", "map", "hierarchy", "segments", "movement")} <= set(
        page.ids
    )
    segments = {r["segment_id"] for r in store.read("segments").select("segment_id").collect()}
    assert {f"seg-{s}" for s in segments} <= set(page.ids)
    assert {f"#segment/{s}" for s in segments} <= set(page.links)
    # Each item's text once (never "X | X"), and no unmeasured figure shown as "nan".
    assert page.items and all(len(set(i.split(" | "))) == len(i.split(" | ")) for i in page.items)
    assert not re.search(r"\bnan\b", html, re.IGNORECASE)
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert size < 15 * 2**20, size


def test_report_describes_no_segment_below_the_privacy_floor(spark, planted):
    from usersegments.report import gather

    data = gather(spark, planted.store, planted.cfg)
    sizes = data.segments["size"].sort_values().to_numpy()
    data.min_segment_size = int(sizes[len(sizes) // 2]) + 1  # half the segments too small
    page = _render(data)
    shown = {i[len("seg-") :] for i in page.ids if i.startswith("seg-")}
    large = set(data.segments.loc[data.segments["size"] >= data.min_segment_size, "segment_id"])
    assert shown == large and 0 < len(large) < len(data.segments)
    assert set(page.payload["segments"]) == large


def _tiny_report_data(label: str, keyword: str, item: str, rec: str):
    from usersegments.report import ReportData

    segments = pd.DataFrame(
        {
            "segment_id": ["c0_s0"],
            "label": [label],
            "cluster_id": [0],
            "size": [12],
            "cohesion": [0.5],
            "keywords": [[keyword]],
            "top_items": [["i1", "i2"]],
        }
    )
    return ReportData(
        segments=segments,
        map_points=pd.DataFrame(),
        item_text={"i1": item, "i2": "Trail Kit | Trail Kit"},
        recommendations={"c0_s0": [(rec, 0.5)]},
        cluster_metrics={"silhouette_cosine": 0.31, "ari_cluster_vs_area": float("nan")},
        ingest_metrics={},
        rejected_by_reason={},
        evaluate_metrics={},
        run_row={"config_json": '{"a": "</pre><script>"}'},
        model="m",
    )


def test_report_escapes_markup_in_labels_keywords_and_item_texts():
    data = _tiny_report_data(
        "<script>alert(1)</script>", "<b>bold</b>", "<img src=x onerror=alert(1)>", "<i>rec</i>"
    )
    from datetime import datetime, timezone

    from usersegments.report import render_html

    html = render_html(data, datetime.now(timezone.utc), "assets/plotly.min.js").html
    for markup in ("<script>alert", "<b>bold", "<img src=x", "<i>rec", "</pre><script>"):
        assert markup not in html, markup
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    page = _Page()
    page.feed(html)
    assert page.scripts == ["assets/plotly.min.js"] and "seg-c0_s0" in page.ids
    assert "Trail Kit" in page.items  # "A | A" shown once
    assert not re.search(r"\bnan\b", html, re.IGNORECASE)


def test_item_titles_show_each_text_once():
    from usersegments.report import item_title

    assert item_title("Trail Kit | Trail Kit") == "Trail Kit"
    assert item_title("Trail Kit | trail kit | Great shoes") == "Trail Kit | Great shoes"
    assert item_title("First sentence. Second one") == "First sentence"
    assert item_title("x" * 200, 10) == "x" * 9 + "…"


def test_changes_name_big_growth_new_and_ended_segments_and_moves():
    from datetime import datetime, timezone

    from usersegments.report import History, RunPoint, changes

    at = datetime(2026, 1, 1, tzinfo=timezone.utc)
    runs = [RunPoint(f"r{i}", "run", at, {}) for i in range(2)]
    rows = [
        (0, "a", 100, "trail running"),
        (0, "b", 100, "baking"),
        (0, "c", 50, "chess"),
        (1, "a", 118, "trail running"),
        (1, "b", 101, "baking"),
        (1, "d", 31, "kayak"),
    ]
    snapshots = pd.DataFrame(rows, columns=["run", "segment_id", "size", "label"])
    paths = [(("a", "a"), 100), (("b", "b"), 100), (("c", "a"), 18), (("c", "d"), 31)]
    paths += [(("c", "b"), 1), ((None, "d"), 0)]
    history = History(runs=runs, snapshots=snapshots, paths=paths, path_runs=[0, 1])
    found = [c.text for c in changes(history, {"a", "b", "c", "d"}, 0.1)]
    assert "segment a 'trail running' grew 18% (100 → 118 users)" in found
    assert "segment c 'chess' ended (50 users before)" in found
    assert "new segment d 'kayak' with 31 users" in found
    assert "50 users (20.0%) changed segment" in found
    assert not any("baking" in text for text in found)  # +1% is no news
    assert changes(History(runs=runs[:1], snapshots=snapshots), set(), 0.1) == []


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
    with pytest.raises(ConfigError, match="label.generator"):
        LabelGenerator(str(tmp_path / "absent"), 4)
