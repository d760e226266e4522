"""Bad inputs tried on the real readers: corrupt, half-written and empty files, inputs
with only bad rows, schemas that drift between files, and fuzzed adversarial rows.
Each has one clear outcome, and no row is ever lost: rows read = accepted + rejected
+ duplicates."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.conftest import make_config, set_args
from tests.helpers import metrics_of, new_run
from usersegments import cli
from usersegments.errors import InputError
from usersegments.ingest import (
    REJECT_REASONS,
    classify_events,
    deduplicate,
    finish_accepted,
    read_raw_events,
    resolve_inputs,
    run_ingest,
)
from usersegments.store import TableStore
from usersegments.times import collected_utc, setting_utc

GOOD = pd.DataFrame(
    {
        "user_id": ["u1", "u2"],
        "event_time": pd.to_datetime(["2026-01-01", "2026-01-02"], utc=True),
        "text": ["trail shoes", "sourdough"],
        "value": [1.0, 2.0],
    }
)


def ingest(spark, root, *events):
    """Ingest ``events`` into a fresh store at ``root``; returns (store, metrics)."""
    cfg = make_config(root)
    store = TableStore.from_config(spark, cfg)
    run = new_run(spark, store, cfg)
    run_ingest(spark, store, cfg, run, events=[str(e) for e in events])
    run.flush()
    metrics = metrics_of(store, run, "ingest")
    assert metrics["rows_read"] == metrics["accepted"] + metrics["rejected"] + metrics["duplicates"]
    return store, metrics


@pytest.mark.slow
def test_a_corrupt_parquet_file_stops_ingest_naming_it(spark, tmp_path):
    folder = tmp_path / "events"
    folder.mkdir()
    GOOD.to_parquet(folder / "a.parquet")
    whole = (folder / "a.parquet").read_bytes()
    (folder / "b.parquet").write_bytes(whole[: len(whole) // 2])  # a writer died half-way
    with pytest.raises(InputError) as err:
        ingest(spark, tmp_path / "store", folder)
    message = str(err.value)
    assert str(folder / "b.parquet") in message and "half-written" in message
    assert "rerun; nothing was written" in message
    store = TableStore.from_config(spark, make_config(tmp_path / "store"))
    assert not store.exists("events") and not store.exists("events_rejected")


@pytest.mark.slow
def test_empty_and_half_written_files(spark, tmp_path):
    (tmp_path / "zero.csv").write_bytes(b"")  # created, never written
    (tmp_path / "header.csv").write_text("user_id,event_time,text\n")
    GOOD.iloc[:0].to_parquet(tmp_path / "none.parquet")
    _, empty = ingest(
        spark,
        tmp_path / "empty-store",
        *(tmp_path / n for n in ("zero.csv", "header.csv", "none.parquet")),
    )
    assert empty["rows_read"] == 0 and empty["accepted"] == 0

    (tmp_path / "cut.jsonl").write_text(
        '{"user_id": "u1", "event_time": "2026-01-01", "text": "kept"}\n{"user_id": "u2", "event_ti'
    )
    (tmp_path / "cut.csv").write_text("user_id,event_time,text\nu3,2026-01-01,kept too\nu4,2026-0")
    store, cut = ingest(spark, tmp_path / "cut-store", tmp_path / "cut.jsonl", tmp_path / "cut.csv")
    assert (cut["rows_read"], cut["accepted"], cut["rejected"]) == (4, 2, 2)
    assert cut["rejected.malformed_row"] == 2  # each row cut short by the dead writer
    assert sorted(r["text"] for r in store.read("events").collect()) == ["kept", "kept too"]

    # No line parses (a lone surrogate's bytes, a pretty-printed object): each is quarantined.
    (tmp_path / "unreadable.jsonl").write_bytes(
        '{"user_id": "u5", "text": "\ud800"}\n{\n"user_id": "u6"\n}\n'.encode(
            "utf-8", "surrogatepass"
        )
    )
    with pytest.raises(InputError) as err:
        ingest(spark, tmp_path / "none-store", tmp_path / "unreadable.jsonl", tmp_path / "cut.csv")
    assert "ingest rejected 5 of the 6 rows read" in str(err.value)
    assert "malformed_row: 5 rows" in str(err.value) and "not a JSON array" in str(err.value)


@pytest.mark.slow
def test_only_bad_rows_are_quarantined_and_the_run_stops_clearly(spark, tmp_path, capsys):
    events = tmp_path / "bad.csv"
    events.write_text("user_id,event_time,text\n,2026-01-01,no user\nu1,yesterday,bad time\n")
    root = tmp_path / "store"
    code = cli.main(["run", "--output", str(root), *set_args(), "--events", str(events)])
    assert code == 2
    err = capsys.readouterr().err
    assert "ingest rejected 2 of the 2 rows read (100.0%)" in err
    assert "  - bad_event_time: 1 row, e.g. user_id='u1', event_time='yesterday'" in err
    assert "  - missing_user_id: 1 row" in err and "input.columns.user_id" in err
    assert "Traceback" not in err and "java" not in err.lower()
    store = TableStore.from_config(spark, make_config(root))
    reasons = sorted(r["reject_reason"] for r in store.read("events_rejected").collect())
    assert reasons == ["bad_event_time", "missing_user_id"]
    assert not store.exists("events")  # a failed ingest writes no event
    assert store.read("runs").first()["status"] == "failed"
    # Told only to warn, ingest keeps nothing; the next stage stops, naming the reasons.
    warn = set_args("input.on_rejections=warn")
    code = cli.main(["run", "--output", str(root), *warn, "--events", str(events)])
    assert code == 2
    err = capsys.readouterr().err
    assert "holds no event: ingest accepted none of the rows" in err
    assert "  - bad_event_time: 1 row" in err and "unparseable" in err


@pytest.mark.slow
def test_columns_spark_refuses_are_input_errors_naming_the_file(spark, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    # Two keys that differ only in case, which Spark takes for one column name.
    cased = tmp_path / "cased.jsonl"
    cased.write_text('{"user_id": "a", "USER_ID": "b", "event_time": "2026-01-01", "text": "x"}\n')
    # A TIME column, a type Spark has no counterpart for.
    clock = tmp_path / "clock.parquet"
    pq.write_table(
        pa.table(
            {
                "user_id": ["a"],
                "event_time": ["2026-01-01"],
                "text": ["x"],
                "at": pa.array([10], pa.time64("us")),
            }
        ),
        clock,
    )
    for path, fix in ((cased, "differ only in case"), (clock, "a type Spark cannot read")):
        with pytest.raises(InputError) as err:
            ingest(spark, tmp_path / "store", path)
        message = str(err.value)
        assert str(path) in message and fix in message and "nothing was written" in message
    # A UTF-16 CSV: its header cannot match, and the message says why.
    utf16 = tmp_path / "utf16.csv"
    utf16.write_bytes("user_id,event_time,text\na,2026-01-01,x\n".encode("utf-16"))
    with pytest.raises(InputError, match="looks UTF-16, save it as UTF-8"):
        ingest(spark, tmp_path / "store", utf16)
    store = TableStore.from_config(spark, make_config(tmp_path / "store"))
    assert not store.exists("events") and not store.exists("events_rejected")


@pytest.mark.slow
def test_binary_text_and_odd_column_names_are_read(spark, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    # Text as Parquet bytes (no UTF-8 annotation), one value not UTF-8; a backtick and a
    # dot in the mapped column names.
    path = tmp_path / "binary.parquet"
    pq.write_table(
        pa.table(
            {
                "user`id": ["a", "b"],
                "event.time": ["2026-01-01", "2026-01-02"],
                "text": pa.array([b"trail shoes", b"\xff\xfe broken"], pa.binary()),
            }
        ),
        path,
    )
    cfg = make_config(
        tmp_path / "store", "input.columns.user_id=user`id", "input.columns.event_time=event.time"
    )
    store = TableStore.from_config(spark, cfg)
    run = new_run(spark, store, cfg)
    run_ingest(spark, store, cfg, run, events=[str(path)])
    assert [(r["user_id"], r["text"]) for r in store.read("events").collect()] == [
        ("a", "trail shoes")
    ]
    assert store.read("events_rejected").first()["reject_reason"] == "invalid_encoding"


@pytest.mark.slow
def test_schema_drift_between_parquet_files(spark, tmp_path):
    folder = tmp_path / "events"
    folder.mkdir()
    GOOD.to_parquet(folder / "a.parquet")
    # Types change (ids as numbers, times as epoch seconds, values as text), an extra
    # column appears, and optional columns go missing.
    pd.DataFrame(
        {
            "user_id": [3],
            "event_time": [1767225600],
            "text": ["camping stove"],
            "value": ["4.5"],
            "campaign": ["x"],
        }
    ).to_parquet(folder / "b.parquet")
    pd.DataFrame(
        {"user_id": ["u5"], "event_time": ["2026-01-03T00:00:00Z"], "text": ["tea"]}
    ).to_parquet(folder / "c.parquet")
    store, metrics = ingest(spark, tmp_path / "store", folder)
    assert metrics["accepted"] == 4
    rows = {r["user_id"]: r for r in store.read("events").collect()}
    assert sorted(rows) == ["3", "u1", "u2", "u5"]
    assert rows["3"]["value"] == 4.5 and rows["u5"]["value"] is None
    assert collected_utc(rows["3"]["event_time"]) == datetime(2026, 1, 1, tzinfo=timezone.utc)


# ---------------------------------------------------------------------------
# Fuzzing: adversarial rows written to a real JSON-lines file and read back by Spark

NOW = datetime(2026, 10, 1, tzinfo=timezone.utc)
HUGE = ("x" * 1_000_000, "é" * 600_000, "😀" * 300_000)  # about 1 MB and more in UTF-8
NASTY_TEXT = st.one_of(
    st.none(),
    st.text(max_size=40),
    st.sampled_from(
        [
            "",
            "\x00\x07\x1b[31m",
            "\u200f\u202eevil\u202c",
            "\u0645\u0631\u062d\u0628\u0627 \u200f",
            "😀👍🏽‍🔥",
            "\ud800 lone high",
            "lone low \udc00",
            "\ufeff\ufffd",
            "a\r\nb\u2028c",
            *HUGE,
        ]
    ),
)
NASTY_TIME = st.one_of(
    st.none(),
    st.sampled_from(
        [
            "2026-01-01T00:00:00Z",
            1767225600,
            1767225600000,
            -1e20,
            1e20,
            253402300800,  # year 10000
            float("nan"),
            float("inf"),
            "-inf",
            "0000-00-00",
        ]
    ),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
)
NASTY_VALUE = st.one_of(
    st.none(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["NaN", "Infinity", "-inf", "1e999", "", "4"]),
)


@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    rows=st.lists(
        st.fixed_dictionaries(
            {
                "user_id": NASTY_TEXT,
                "event_time": NASTY_TIME,
                "event_type": NASTY_TEXT,
                "text": NASTY_TEXT,
                "value": NASTY_VALUE,
            }
        ),
        min_size=1,
        max_size=12,
    )
)
@example(  # the worst of each kind, tried on every run
    rows=[
        {"user_id": "u1", "event_time": 1767225600, "event_type": None, "text": text, "value": v}
        for text, v in zip(
            (*HUGE, "\ud800 lone high", "\u200f\u202eevil\u202c", "\x00\x07\x1b[31m"),
            (None, "4", 2.5, "1e999", float("nan"), float("-inf")),
            strict=True,
        )
    ]
    + [
        {"user_id": "u2", "event_time": t, "event_type": "view", "text": "ok", "value": None}
        for t in (-1e20, 1e20, 253402300800, float("nan"), "-inf", 2**63 - 1)
    ]
)
@pytest.mark.slow
def test_fuzzed_rows_are_each_accepted_clean_or_rejected_with_a_reason(spark, tmp_path, rows):
    path = tmp_path / f"fuzz-{abs(hash(json.dumps(rows, default=str))) % 10**9}.jsonl"
    # Lone surrogates go out as invalid UTF-8 bytes, what a broken producer writes.
    lines = [json.dumps(row, ensure_ascii=False, allow_nan=True) for row in rows]
    path.write_bytes("\n".join(lines).encode("utf-8", "surrogatepass") + b"\n")
    cfg = make_config(tmp_path / "unused")
    raw = read_raw_events(spark, resolve_inputs([str(path)]), cfg.input, items_given=False)
    classified = classify_events(raw, None, cfg.input, NOW).cache()
    try:
        reasons = [r["reject_reason"] for r in classified.select("reject_reason").collect()]
        assert len(reasons) == len(rows)  # every line is one row, read or rejected
        assert {r for r in reasons if r is not None} <= set(REJECT_REASONS)
        accepted = deduplicate(finish_accepted(classified, cfg.input.max_text_chars)).collect()
    finally:
        classified.unpersist()
    assert len(accepted) <= reasons.count(None)
    earliest = setting_utc(cfg.input.min_time)
    latest = NOW + timedelta(hours=cfg.input.future_tolerance_hours)
    for row in accepted:
        text = row["text"]
        assert 0 < len(text) <= cfg.input.max_text_chars
        text.encode("utf-8")  # valid: no lone surrogate reaches a table
        assert not any(ord(c) < 32 or 0x7F <= ord(c) <= 0x9F for c in text)
        assert "\u202e" not in text and "\ufffd" not in text
        assert row["user_id"].strip() == row["user_id"] != ""
        assert earliest <= collected_utc(row["event_time"]) <= latest
        value = row["value"]
        assert value is None or abs(value) < float("inf")
