"""Ingest on real files through real Spark and real Delta tables."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyspark.sql import functions as F

from tests.conftest import make_config
from tests.helpers import metrics_of, new_run
from usersegments.errors import InputError, InvariantViolation
from usersegments.ingest import (
    check_invariant,
    classify_events,
    deduplicate,
    finish_accepted,
    normalize_texts,
    parse_event_time,
    read_raw_events,
    resolve_inputs,
    run_ingest,
)
from usersegments.store import TableStore
from usersegments.testing.synthetic import GeneratorSettings, generate, write
from usersegments.times import collected_utc

NOW = datetime(2026, 10, 1, tzinfo=timezone.utc)


@pytest.fixture
def ingest(spark, tmp_path):
    """Run the ingest stage into a fresh store; returns (store, metrics)."""

    def _run(*events, items=None, overrides=(), store_root=None):
        cfg = make_config(store_root or tmp_path / "store", *overrides)
        store = TableStore.from_config(spark, cfg)
        run = new_run(spark, store, cfg)
        run_ingest(spark, store, cfg, run, events=[str(e) for e in events], items=items)
        run.flush()
        return store, metrics_of(store, run, "ingest")

    return _run


def write_text(path, text, encoding="utf-8"):
    path.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
    return path


NASTY_CSV = (
    "user_id,event_time,event_type,item_id,text,value\n"
    'u1,2026-01-05T10:00:00Z,view,i1,"Trail shoes, size 42 ""wide""",\n'
    'u1,2026-01-05T10:00:00Z,view,i1,"Trail shoes, size 42 ""wide""",\n'  # exact duplicate
    'u2,1767607200,search,,"multi\nline query",\n'  # epoch seconds, newline in quotes
    "u3,1767607200000,purchase,i2,sourdough starter,\n"  # epoch milliseconds
    ",2026-01-05T10:00:00Z,view,i1,no user,\n"  # missing user
    "   ,2026-01-05T10:00:00Z,view,i1,blank user,\n"  # blank user
    "u4,not a time,view,i1,bad time,\n"
    "u5,1990-01-01T00:00:00Z,view,i1,too old,\n"
    "u6,2099-01-01T00:00:00Z,view,i1,from the future,\n"
    "u7,2026-01-05 12:00:00,view,i1,   ,\n"  # empty text
    "u8,2026-01-05T10:00:00+02:00,rate,i3,rated it,five\n"  # unparseable value
    "u9,2026-01-05T10:00:00Z,view,i1,too,many,fields,here\n"  # malformed
    "u10,2026-01-05T10:00:00Z,,i4,  Caf\u00e9\u200b  \u0007 au   lait ,4\n"  # normalised
)
# 8 of its 13 rows are rejected (u5 only under a year-2000 lower bound), more than the
# default input.max_rejected_share: the rejection report is tested in test_real_logs.py.
NASTY = ("input.min_time=2000-01-01", "input.on_rejections=warn")


@pytest.mark.slow
def test_every_reject_reason_comes_from_its_row(spark, ingest, tmp_path):
    csv = write_text(tmp_path / "nasty.csv", NASTY_CSV)
    store, m = ingest(csv, overrides=NASTY)
    assert m["rows_read"] == 13
    assert m["accepted"] == 4 and m["duplicates"] == 1 and m["rejected"] == 8
    rejected = {(r["user_id"], r["reject_reason"]) for r in store.read("events_rejected").collect()}
    assert rejected == {
        (None, "missing_user_id"),
        ("   ", "missing_user_id"),
        ("u4", "bad_event_time"),
        ("u5", "bad_event_time"),
        ("u6", "bad_event_time"),
        ("u7", "empty_text"),
        ("u8", "bad_value"),
        ("u9", "malformed_row"),
    }
    malformed = store.read("events_rejected").filter("reject_reason = 'malformed_row'").first()
    assert malformed["raw_record"] == "u9,2026-01-05T10:00:00Z,view,i1,too,many,fields,here"
    assert malformed["source"].endswith("nasty.csv")
    events = {r["user_id"]: r for r in store.read("events").collect()}
    assert events["u1"]["text"] == 'Trail shoes, size 42 "wide"'
    assert events["u2"]["text"] == "multi line query"
    assert events["u2"]["event_time"] == events["u3"]["event_time"]  # s and ms agree
    assert collected_utc(events["u2"]["event_time"]) == datetime(
        2026, 1, 5, 10, 0, tzinfo=timezone.utc
    )
    assert events["u10"]["text"] == "Caf\u00e9 au lait"
    assert events["u10"]["event_type"] == "view"  # the default type
    assert events["u10"]["value"] == 4.0


@pytest.mark.slow
def test_rejected_rows_are_counted_not_lost(spark, ingest, tmp_path):
    csv = write_text(tmp_path / "nasty.csv", NASTY_CSV)
    store, m = ingest(csv, overrides=NASTY)
    total = store.read("events_rejected").agg(F.sum("occurrences")).first()[0]
    assert total == m["rejected"] == 8
    assert m["rows_read"] == m["accepted"] + m["rejected"] + m["duplicates"]


@pytest.mark.slow
def test_reingest_adds_nothing(spark, ingest, tmp_path):
    csv = write_text(tmp_path / "nasty.csv", NASTY_CSV)
    root = tmp_path / "same-store"
    store, first = ingest(csv, store_root=root, overrides=NASTY)
    events_before = store.read("events").count()
    rejects_before = store.read("events_rejected").count()
    store, again = ingest(csv, store_root=root, overrides=NASTY)
    assert again["accepted"] == 0
    assert again["already_present"] == first["accepted"]
    assert again["rejects_inserted"] == 0
    assert store.read("events").count() == events_before
    assert store.read("events_rejected").count() == rejects_before


@pytest.mark.slow
def test_generated_data_reconciles_with_its_manifest(spark, ingest, tmp_path):
    data = generate(GeneratorSettings(users=300, seed=11))
    paths = write(data, tmp_path / "gen")
    manifest = json.loads((tmp_path / "gen" / "manifest.json").read_text())
    store, m = ingest(paths["events_csv"], items=paths["items"])
    bad = manifest["bad_rows"]
    assert m["rows_read"] == manifest["rows"] + manifest["malformed_csv_lines"]
    assert m["rejected.missing_user_id"] == bad["null_user"]
    assert m["rejected.bad_event_time"] == bad["garbage_time"]
    assert m["rejected.empty_text"] == bad["empty_text"]
    assert m["rejected.invalid_encoding"] == bad["invalid_utf8"]
    assert m["rejected.malformed_row"] == manifest["malformed_csv_lines"]
    assert m["duplicates"] == manifest["duplicates"]
    # The same events from Parquet land on the same event ids: nothing new.
    _, again = ingest(paths["events_parquet"], items=paths["items"], store_root=store.root)
    assert again["accepted"] == 0
    assert again["rows_read"] == manifest["rows"]
    events = store.read("events")
    assert (
        events.filter(F.col("category").isNull()).count()
        == events.filter("item_id is null").count()
    )
    assert events.select("event_date").distinct().count() > 30
    # Partitioned by month: a few folders for two months of events, not one per day.
    months = events.select("event_month").distinct().count()
    assert months == events.select(F.trunc("event_date", "month")).distinct().count() <= 4
    assert store.history("events")[-1].parameters.get("partitionBy") == '["event_month"]'


@pytest.mark.slow
def test_jsonl_with_mapping_and_catalog(spark, ingest, tmp_path):
    lines = [
        {"customer": "c1", "ts": "2026-03-01T08:00:00", "kind": "purchase", "sku": "s1"},
        {
            "customer": "c1",
            "ts": "2026-03-01T09:00:00",
            "kind": "review",
            "sku": "s1",
            "body": "works great",
        },
        {"customer": "c2", "ts": 1772352000000, "kind": "view", "sku": "s-unknown"},
        # The event repeats its item's text (case apart): the text says it once.
        {
            "customer": "c3",
            "ts": "2026-03-01T10:00:00",
            "kind": "question",
            "sku": "s1",
            "body": " carbon plate  MARATHON shoes",
        },
    ]
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n{not json at all\n")
    items = tmp_path / "items.csv"
    items.write_text("sku,title,dept\ns1,Carbon Plate Marathon Shoes,running\n")
    overrides = [
        "input.columns.user_id=customer",
        "input.columns.event_time=ts",
        "input.columns.event_type=kind",
        "input.columns.item_id=sku",
        "input.columns.text=body",
        "input.item_columns.item_id=sku",
        "input.item_columns.text=title",
        "input.item_columns.category=dept",
        "input.timezone=Europe/Paris",
    ]
    store, m = ingest(path, items=str(items), overrides=overrides)
    assert (m["accepted"], m["rejected.empty_text"], m["rejected.malformed_row"]) == (3, 1, 1)
    rows = {r["event_type"]: r for r in store.read("events").collect()}
    assert rows["purchase"]["text"] == "Carbon Plate Marathon Shoes"
    assert rows["review"]["text"] == "Carbon Plate Marathon Shoes | works great"
    assert rows["question"]["text"] == "Carbon Plate Marathon Shoes"
    assert rows["purchase"]["category"] == "running"
    # zone-less times are Paris time: 08:00 in March is 07:00 UTC
    assert collected_utc(rows["purchase"]["event_time"]).hour == 7


@pytest.mark.slow
def test_parquet_typed_columns_and_delta_input(spark, ingest, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    typed = pa.table(
        {
            "user_id": ["a", "b"],
            "event_time": pa.array(
                [datetime(2026, 2, 1, 10), datetime(2026, 2, 2, 11)], pa.timestamp("ns", "UTC")
            ),
            "text": ["hiking boots", "trail map"],
            "value": pa.array([1.5, float("nan")]),  # a real NaN, not a null
        }
    )
    pq.write_table(typed, tmp_path / "typed.parquet")
    store, m = ingest(tmp_path / "typed.parquet")
    assert m["accepted"] == 1 and m["rejected.bad_value"] == 1  # NaN is not a value
    got = store.read("events").first()
    assert collected_utc(got["event_time"]) == datetime(2026, 2, 1, 10, 0, tzinfo=timezone.utc)
    # A Delta table is an input too: the events table itself re-ingests to nothing new.
    source = tmp_path / "delta-in"
    source_store = TableStore.from_config(spark, make_config(source))
    source_store.write(
        spark.createDataFrame(
            [("z", "2026-02-03T00:00:00Z", "camp stove")],
            "user_id string, event_time string, text string",
        ),
        "raw",
    )
    _, d = ingest(source / "raw", store_root=store.root)
    assert d["accepted"] == 1


def test_missing_required_column_fails_before_any_write(spark, ingest, tmp_path):
    path = write_text(tmp_path / "e.csv", "customer,event_time,text\nc1,2026-01-01T00:00:00Z,x\n")
    with pytest.raises(InputError) as err:
        ingest(path)
    msg = str(err.value)
    assert "no column 'user_id' for user_id" in msg
    assert "input.columns.user_id" in msg and "customer" in msg
    cfg = make_config(tmp_path / "store")
    assert not TableStore.from_config(spark, cfg).exists("events")


def test_no_text_and_no_catalog_is_a_config_error(spark, ingest, tmp_path):
    path = write_text(tmp_path / "e.csv", "user_id,event_time,item_id\nu,2026-01-01,i\n")
    with pytest.raises(InputError, match="no text column 'text' and no item catalog"):
        ingest(path)


def test_inputs_resolution(tmp_path):
    with pytest.raises(InputError, match="matches no file"):
        resolve_inputs([str(tmp_path / "nope*.csv")])
    (tmp_path / "x.txt").write_text("a")
    with pytest.raises(InputError, match="set input.format"):
        resolve_inputs([str(tmp_path / "x.txt")])
    write_text(tmp_path / "a.csv", "user_id,event_time,text\n")
    write_text(tmp_path / "b.csv", "user_id,event_time,text\n")
    write_text(tmp_path / "c.csv", "user_id,text,event_time,extra\n")
    groups = resolve_inputs([str(tmp_path / "*.csv")])
    assert sorted(len(g.paths) for g in groups) == [1, 2]  # headers differ: read apart


@pytest.mark.slow
def test_schema_drift_between_csv_files(spark, ingest, tmp_path):
    write_text(tmp_path / "a.csv", "user_id,event_time,text\nu1,2026-01-01T00:00:00Z,one\n")
    write_text(
        tmp_path / "b.csv",
        "text,event_time,user_id,extra\ntwo,2026-01-02T00:00:00Z,u2,ignored\n",
    )
    store, m = ingest(tmp_path / "*.csv")
    assert m["accepted"] == 2
    assert {(r.user_id, r.text) for r in store.read("events").collect()} == {
        ("u1", "one"),
        ("u2", "two"),
    }


@pytest.mark.slow
def test_heavy_users_are_flagged_and_capped(spark, ingest, tmp_path):
    rows = "".join(f"bot,2026-01-01T00:{i:02d}:00Z,view,,page {i:02d}\n" for i in range(12))
    rows += "human,2026-01-01T00:00:00Z,view,,hello\n"
    path = write_text(tmp_path / "e.csv", "user_id,event_time,event_type,item_id,text\n" + rows)
    # 7 of 13 rows capped: past input.max_rejected_share, so warn to keep the rest.
    overrides = [
        "input.max_events_per_user=5",
        "input.cap_heavy_users=true",
        "input.on_rejections=warn",
    ]
    store, m = ingest(path, overrides=overrides)
    assert m["heavy_users"] == 1 and m["capped_events"] == 7
    bot = store.read("events").filter("user_id = 'bot'")
    assert bot.count() == 5
    assert bot.agg(F.min("text")).first()[0] == "page 07"  # the most recent five kept
    capped = store.read("events_rejected").filter("reject_reason = 'user_event_cap'")
    assert capped.agg(F.sum("occurrences")).first()[0] == 7


@pytest.mark.slow
def test_truncation_is_counted(spark, ingest, tmp_path):
    path = write_text(
        tmp_path / "e.csv", "user_id,event_time,text\nu,2026-01-01," + "x" * 50 + "\n"
    )
    store, m = ingest(path, overrides=["input.max_text_chars=20"])
    assert m["texts_truncated"] == 1 and m["accepted"] == 1
    assert store.read("events").first()["text"] == "x" * 20


def test_normalize_texts():
    got = normalize_texts(
        pd.Series(
            ["  a\u00a0\u00a0b ", "\uff21\uff22", "x\u200fy\u202e", "tab\there\x00", None, "  "]
        ),
        lowercase=False,
    )
    assert got.tolist() == ["a b", "AB", "xy", "tab here", None, ""]
    assert normalize_texts(pd.Series(["ÀB"]), lowercase=True).tolist() == ["àb"]


def test_parse_event_time(spark):
    cases = {
        "2026-01-05T10:00:00Z": datetime(2026, 1, 5, 10),
        "2026-01-05T12:00:00+02:00": datetime(2026, 1, 5, 10),
        "2026-01-05 10:00:00": datetime(2026, 1, 5, 10),
        "2026-01-05T10:00:00.123456": datetime(2026, 1, 5, 10, 0, 0, 123456),
        "2026-01-05": datetime(2026, 1, 5),
        "1767607200": datetime(2026, 1, 5, 10),
        "1767607200000": datetime(2026, 1, 5, 10),
        "1767607200000000000": datetime(2026, 1, 5, 10),
        "1767607200.5": datetime(2026, 1, 5, 10, 0, 0, 500000),
        "1.7676072E9": datetime(2026, 1, 5, 10),
        "2026-02-30T00:00:00": None,
        "2026-13-01": None,
        "yesterday": None,
        "NaN": None,
        "1e400": None,
        "": None,
    }
    df = spark.createDataFrame([(k,) for k in cases], "s string")
    got = {
        r["s"]: r["t"]
        for r in df.select("s", parse_event_time(F.col("s"), "UTC").alias("t")).collect()
    }
    for text, expected in cases.items():
        actual = got[text]
        if actual is not None:
            actual = collected_utc(actual).replace(tzinfo=None)
        assert actual == expected, text


def test_invariant_check_fails_loudly():
    with pytest.raises(InvariantViolation, match="read 10 but accepted 5"):
        check_invariant({"rows_read": 10, "accepted": 5, "rejected": 2, "duplicates": 1})


ADVERSARIAL = st.one_of(
    st.none(),
    st.text(max_size=30),
    st.sampled_from(["", " ", "\u200f\u202e", "\x00\x07", "😀" * 5, "a,b", '"q"', "\n", "\ufffd"]),
)
TIMES = st.one_of(
    st.none(),
    st.sampled_from(
        [
            "2026-01-01T00:00:00Z",
            "1767225600",
            "1767225600000",
            "nan",
            "-1",
            "99999999999999999999",
            "2026-02-30",
            "0",
            "1e308",
        ]
    ),
    st.text(max_size=12),
)


@settings(
    max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rows=st.lists(
        st.tuples(
            ADVERSARIAL,
            TIMES,
            ADVERSARIAL,
            ADVERSARIAL,
            ADVERSARIAL,
            st.one_of(st.none(), st.sampled_from(["1", "x", "NaN", "inf", "-0.5"])),
        ),
        min_size=1,
        max_size=25,
    )
)
@pytest.mark.slow
def test_property_ingest_never_loses_a_row(spark, rows):
    cfg = make_config("/tmp/unused")
    raw = spark.createDataFrame(
        [(*r, None, "hypothesis") for r in rows],
        "user_id string, event_time string, event_type string, item_id string, text string, "
        "value string, raw_record string, source string",
    )
    classified = classify_events(raw, None, cfg.input, NOW).cache()
    accepted = classified.filter("reject_reason is null").count()
    rejected = classified.filter("reject_reason is not null").count()
    unique = deduplicate(finish_accepted(classified, cfg.input.max_text_chars)).count()
    assert len(rows) == accepted + rejected
    assert unique <= accepted
    classified.unpersist()


def test_read_raw_events_strings_only(spark, tmp_path):
    cfg = make_config(tmp_path)
    write_text(tmp_path / "a.csv", "user_id,event_time,text,value\nu,1,t,2\n")
    raw = read_raw_events(spark, resolve_inputs([str(tmp_path / "a.csv")]), cfg.input, False)
    assert all(dtype == "string" for _, dtype in raw.dtypes)


@pytest.mark.slow
def test_an_events_table_from_before_event_month_keeps_its_columns_and_partitions(
    spark, ingest, tmp_path
):
    # A store from before the month partitioning: events partitioned by event_date, no
    # event_month column, no change data feed. Ingest appends to it as it is.
    from deltalake import DeltaTable

    from usersegments.schema import EVENTS

    root = tmp_path / "old"
    old_columns = [f.name for f in EVENTS.fields if f.name != "event_month"]
    old = spark.createDataFrame([], EVENTS).select(*old_columns)
    rs = TableStore.from_config(spark, make_config(root, "store.backend=delta-rs"))
    rs._backend.write(old, rs.path("events"), "append", ["event_date"], {})
    csv = write_text(
        tmp_path / "e.csv",
        "user_id,event_time,event_type,text\n"
        "u1,2026-01-05T10:00:00Z,view,trail shoes\n"
        "u1,2026-02-07T10:00:00Z,view,road shoes\n",
    )
    store, m = ingest(csv, store_root=root)
    assert m["accepted"] == 2
    assert store.read("events").columns == old_columns
    assert DeltaTable(store.path("events")).metadata().partition_columns == ["event_date"]
