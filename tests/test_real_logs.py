"""Real logs with the defaults, through the real command line and real Spark: logs of
any year are accepted, and a log the defaults mostly refuse stops with the reasons,
their counts, an example row each and the setting that changes each."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from pyspark.sql import functions as F

from tests.conftest import make_config, set_args
from tests.helpers import metrics_of
from usersegments import cli
from usersegments.store import TableStore
from usersegments.times import collected_utc

WORDS = ("trail shoes", "sourdough starter", "tent stakes", "espresso beans", "road bike")


def write_log(path, times):
    """A CSV log of one event per time, users and texts drawn from a fixed seed."""
    rng = np.random.default_rng(7)
    rows = [
        f"u{int(rng.integers(40)):03d},{t},view,{WORDS[int(rng.integers(len(WORDS)))]} {i}\n"
        for i, t in enumerate(times)
    ]
    path.write_text("user_id,event_time,event_type,text\n" + "".join(rows), encoding="utf-8")
    return path


def ingest(root, path, *overrides):
    """``usersegments ingest`` in this process; returns its exit code."""
    return cli.main(["ingest", "--output", str(root), *set_args(*overrides), "--events", str(path)])


def last_ingest_metrics(spark, root):
    """The ingest figures of the latest succeeded run under ``root``."""
    store = TableStore.from_config(spark, make_config(root))
    runs = store.read("runs").filter("status = 'succeeded'").orderBy(F.desc("started_at"))
    return metrics_of(store, runs.first()["run_id"], "ingest")


def ingest_all_accepted(spark, tmp_path, name: str, times: list[str]) -> TableStore:
    """Ingest a log of ``times`` with the defaults, check every row was accepted; the store."""
    root = tmp_path / "store"
    assert ingest(root, write_log(tmp_path / name, times)) == 0
    m = last_ingest_metrics(spark, root)
    assert (m["rows_read"], m["accepted"], m["rejected"]) == (len(times), len(times), 0)
    return TableStore.from_config(spark, make_config(root))


@pytest.mark.slow
def test_a_log_from_1995_is_accepted_with_the_defaults(spark, tmp_path):
    start = datetime(1995, 3, 1, tzinfo=timezone.utc)
    times = [start + timedelta(hours=7 * i) for i in range(240)]
    # The formats old exports mix: zone-less, ISO with a zone, epoch seconds.
    texts = [
        t.strftime("%Y-%m-%d %H:%M:%S")
        if i % 3 == 0
        else t.strftime("%Y-%m-%dT%H:%M:%SZ")
        if i % 3 == 1
        else str(int(t.timestamp()))
        for i, t in enumerate(times)
    ]
    store = ingest_all_accepted(spark, tmp_path, "1995.csv", texts)
    first = store.read("events").agg(F.min("event_time")).first()[0]
    assert collected_utc(first) == start


@pytest.mark.slow
def test_a_log_spanning_20_years_is_accepted_with_the_defaults(spark, tmp_path):
    start, end = (
        datetime(1999, 1, 1, tzinfo=timezone.utc),
        datetime(2019, 12, 31, tzinfo=timezone.utc),
    )
    step = (end - start) / 299
    times = [start + step * i for i in range(300)]
    texts = [
        str(int(t.timestamp() * 1000)) if i % 2 else t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        for i, t in enumerate(times)
    ]
    store = ingest_all_accepted(spark, tmp_path, "20y.csv", texts)
    years = store.read("events").select(F.year("event_date").alias("y")).distinct().count()
    assert years == 21


@pytest.mark.slow
def test_a_log_mostly_refused_fails_with_reasons_then_warns_when_told(
    spark, tmp_path, capsys, caplog
):
    start = datetime(2021, 6, 1, tzinfo=timezone.utc)
    times = [start + timedelta(hours=i) for i in range(250)]
    # 4 of 5 rows have day-first times, a format no setting parses.
    texts = [
        t.strftime("%Y-%m-%dT%H:%M:%SZ") if i % 5 == 0 else t.strftime("%d/%m/%Y %H:%M")
        for i, t in enumerate(times)
    ]
    path = write_log(tmp_path / "dayfirst.csv", texts)
    root = tmp_path / "store"
    code = ingest(root, path)
    assert code == 2
    err = capsys.readouterr().err
    assert "ingest rejected 200 of the 250 rows read (80.0%)" in err
    assert "input.max_rejected_share=0.5" in err and "input.on_rejections=warn" in err
    reasons = [line for line in err.splitlines() if line.startswith("  - ")]
    assert len(reasons) == 1, err  # one line per reason
    assert reasons[0].startswith("  - bad_event_time: 200 rows, e.g. user_id='u")
    assert "event_time='" in reasons[0] and "/2021 " in reasons[0]  # the example row
    assert "200 unparseable" in reasons[0] and "input.columns.event_time" in reasons[0]
    assert "Traceback" not in err and "org.apache" not in err
    store = TableStore.from_config(spark, make_config(root))
    assert not store.exists("events")  # nothing accepted is written by a failed ingest
    quarantine = store.read("events_rejected")
    assert quarantine.agg(F.sum("occurrences")).first()[0] == 200  # every rejected row
    assert {r["reject_reason"] for r in quarantine.collect()} == {"bad_event_time"}

    with caplog.at_level(logging.WARNING, logger="usersegments.ingest.rejections"):
        code = ingest(root, path, "input.on_rejections=warn")
    assert code == 0
    assert any("200 unparseable" in r.getMessage() for r in caplog.records)
    m = last_ingest_metrics(spark, root)
    assert (m["accepted"], m["rejected"], m["rejects_inserted"]) == (50, 200, 0)
    assert store.read("events").count() == 50
    assert store.read("events_rejected").agg(F.sum("occurrences")).first()[0] == 200
