"""``usersegments stream`` (Structured Streaming into the update) and ``run --resume``.

The stream's fault test is a real crash: the stream runs in a subprocess, which is
killed with SIGKILL (its whole process group: driver, JVM, workers) right after the
first micro-batch's fold committed, and started again on the same checkpoint. The
replayed batch must change nothing twice: ``events`` keeps one row per event (its
merge ignores matched ids), the profiles fold no event twice (``events_through``),
and ``run_metrics`` counts every input row once (a batch's figures are appended
once, under the query's Delta transaction). The data is small on purpose: 30 users.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from deltalake import DeltaTable
from pyspark.sql import functions as F

from tests.conftest import FEW_USERS, make_config, require_delta_spark, set_args
from usersegments import cli
from usersegments.errors import ConfigError, InputError
from usersegments.store import TableStore, Txn
from usersegments.stream.batch import GracefulStop, StopSignal, next_run_id
from usersegments.stream.source import check_landing_folder, raw_batch, read_events
from usersegments.testing.synthetic import GeneratorSettings, generate, generated_times, split_at

REPO = Path(__file__).resolve().parents[1]
SETTINGS = (*FEW_USERS, "stream.run_report=false")
STREAM_SETTINGS = ("stream.max_files_per_trigger=1",)
PROFILE_NUMBERS = ["weight_total", "n_events", "first_event_time", "last_event_time"]
PROFILE_VECTORS = ["weighted_sum", "embedding"]
KILL_TIMEOUT_S = 900


@pytest.fixture(scope="module")
def landed(tmp_path_factory):
    """30 generated users in three time windows as JSON lines: the first for a full run,
    the other two to land one by one (one micro-batch each)."""
    root = tmp_path_factory.mktemp("stream-input")
    data = generate(GeneratorSettings(users=30, seed=3, items_per_style=4, days=30))
    times = generated_times(data.events)
    start, end = times.min(), times.max()
    windows, rest = [], data
    for share in (0.6, 0.8):
        before, rest = split_at(rest, (start + (end - start) * share).to_pydatetime())
        windows.append(before)
    windows.append(rest)
    files = []
    for number, window in enumerate(windows):
        path = root / f"events-{number}.jsonl"
        window.events.drop(columns=["_bad"]).to_json(path, orient="records", lines=True)
        files.append(path)
    items = root / "items.parquet"
    data.items.to_parquet(items, index=False)
    return {"first": files[0], "landing": files[1:], "items": items}


def cli_args(command: str, root: Path, *rest: str) -> list[str]:
    """``usersegments <command>`` into ``root`` with the test settings."""
    return [command, "--output", str(root), *set_args(*SETTINGS), *rest]


@pytest.fixture(scope="module")
def reference(spark, tmp_path_factory, landed):
    """The one-shot path on delta-rs: a full run on the first window (its store, also the
    stream tests' starting point), then one update over the two landing files."""
    base = tmp_path_factory.mktemp("stream-reference")
    seeded = base / "seeded"
    events = ["--events", str(landed["first"]), "--items", str(landed["items"])]
    assert cli.main(cli_args("run", seeded, *events)) == 0
    updated = base / "updated"
    shutil.copytree(seeded, updated)
    landing = ["--events", *map(str, landed["landing"]), "--items", str(landed["items"])]
    assert cli.main(cli_args("update", updated, *landing)) == 0
    store = TableStore.from_config(spark, make_config(updated, *SETTINGS))
    return {"seeded": seeded, "profiles": profiles(store)}


def profiles(store: TableStore) -> pd.DataFrame:
    """The stored profiles' sums and counts, by user (not the run-dependent columns)."""
    pdf = store.read("user_profiles").select("user_id", *PROFILE_NUMBERS, *PROFILE_VECTORS)
    return pdf.toPandas().sort_values("user_id").reset_index(drop=True)


def test_an_idempotent_write_commits_once(store, spark):
    """A write under a transaction the table holds is skipped, on either backend; the next
    version of the application commits."""
    frame = spark.createDataFrame([("a", 1.0)], "key string, value double")
    assert store.write(frame, "txn_probe", txn=Txn("app", 0)) is True
    assert store.write(frame, "txn_probe", txn=Txn("app", 0)) is False
    assert store.write(frame, "txn_probe", txn=Txn("other-app", 0)) is True
    assert store.write(frame, "txn_probe", txn=Txn("app", 1)) is True
    assert store.read("txn_probe").count() == 3


# ---------------------------------------------------------------------------
# sources: one schema from the config, rows as ingest's raw strings


def stream_rows(spark, cfg, source: str, checkpoint: Path) -> list[list[dict]]:
    """Run ``read_events`` over ``source`` with availableNow; each batch's raw rows."""
    batches: list[list[dict]] = []

    def collect(frame, batch_id):
        raw = raw_batch(frame, cfg, source, items_given=False)
        batches.append([row.asDict() for row in raw.orderBy("source", "user_id").collect()])

    query = (
        read_events(spark, cfg, source)
        .writeStream.option("checkpointLocation", str(checkpoint))
        .foreachBatch(collect)
        .trigger(availableNow=True)
        .start()
    )
    query.awaitTermination()
    return batches


def test_landing_files_are_read_with_the_configured_schema(spark, tmp_path):
    landing = tmp_path / "landing"
    landing.mkdir()
    (landing / "a.jsonl").write_text(
        '{"user_id": "u1", "event_time": "2026-01-02T03:04:05Z", "text": "tea", "value": 2}\n'
        "not json at all\n"
    )
    (landing / "b.jsonl").write_text('{"user_id": 7, "event_time": 1767323045, "extra": true}\n')
    os.utime(landing / "b.jsonl", (time.time() + 5,) * 2)
    cfg = make_config(tmp_path / "store", "stream.max_files_per_trigger=1")
    first, second = stream_rows(spark, cfg, str(landing), tmp_path / "checkpoint")
    assert [(r["user_id"], r["value"], r["raw_record"]) for r in first] == [
        (None, None, "not json at all"),
        ("u1", "2", None),
    ]
    # Numbers arrive as text, as the batch reader's primitivesAsString gives them.
    assert [(r["user_id"], r["event_time"], r["text"]) for r in second] == [
        ("7", "1767323045", None)
    ]
    assert second[0]["source"].endswith("b.jsonl")


def test_csv_landing_files_keep_a_row_that_does_not_fit(spark, tmp_path):
    landing = tmp_path / "landing"
    landing.mkdir()
    (landing / "a.csv").write_text(
        "user_id,event_time,event_type,item_id,text,value\n"
        "u1,2026-01-02T03:04:05Z,view,i1,tea,1.5\n"
        'u2,2026-01-02T03:04:05Z,view,i1,"unclosed\n'
    )
    cfg = make_config(tmp_path / "store", "stream.format=csv")
    (rows,) = stream_rows(spark, cfg, str(landing), tmp_path / "checkpoint")
    assert rows[0]["user_id"] == "u1" and rows[0]["value"] == "1.5"
    assert len(rows) == 2


@pytest.mark.slow
def test_a_delta_table_of_events_is_read_as_a_stream(spark, tmp_path):
    require_delta_spark(spark)
    table = str(tmp_path / "events_in")
    frame = spark.createDataFrame(
        [("u1", "2026-01-02T03:04:05Z", "tea", 1.0)],
        "user_id string, event_time string, text string, value double",
    )
    frame.write.format("delta").save(table)
    cfg = make_config(tmp_path / "store", "stream.source=delta")
    (rows,) = stream_rows(spark, cfg, table, tmp_path / "checkpoint")
    assert [(r["user_id"], r["text"], r["value"], r["source"]) for r in rows] == [
        ("u1", "tea", "1.0", table)
    ]


def test_stream_settings_name_the_fix(tmp_path):
    with pytest.raises(ConfigError, match="stream.schema_ddl"):
        make_config(tmp_path, "stream.format=parquet")
    with pytest.raises(ConfigError, match="interval"):
        make_config(tmp_path, "stream.interval=soon")
    with pytest.raises(InputError, match="--source"):
        check_landing_folder(str(tmp_path / "nowhere"))


def test_a_batch_after_a_stop_request_does_nothing_and_run_ids_keep_their_order():
    stop = StopSignal()
    stop.enter_batch()
    assert not stop.idle.is_set()  # a stop asked for now waits for this batch
    stop.leave_batch()
    stop.requested.set()
    with pytest.raises(GracefulStop):
        stop.enter_batch()
    assert stop.idle.is_set()
    first = next_run_id(None)
    assert next_run_id(first) > first


# ---------------------------------------------------------------------------
# the stream, killed and started again


def stream_command(root: Path, landing: Path, items: Path, backend: str) -> list[str]:
    """``usersegments stream`` as a subprocess, one landed file per micro-batch."""
    overrides = set_args(*SETTINGS, *STREAM_SETTINGS, f"store.backend={backend}")
    return [
        sys.executable,
        "-m",
        "usersegments",
        "stream",
        "--output",
        str(root),
        *overrides,
        "--source",
        str(landing),
        "--items",
        str(items),
    ]


def land(files: list[Path], landing: Path) -> None:
    """Copy the files into the landing folder, oldest first (the file source's order)."""
    landing.mkdir(parents=True)
    now = time.time()
    for number, path in enumerate(files):
        target = landing / path.name
        shutil.copy(path, target)
        os.utime(target, (now - 60 + number, now - 60 + number))


def start_stream(command: list[str], log: Path) -> subprocess.Popen:
    """The stream in a process group of its own (so that its JVM dies with it)."""
    environment = {**os.environ, "PYTHONPATH": str(REPO / "lib"), "HF_HUB_OFFLINE": "1"}
    with open(log, "ab") as out:
        return subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=environment, start_new_session=True
        )


def commits(table: Path) -> int:
    """How many commits a Delta table's log holds (read without Spark, while it runs)."""
    log = table / "_delta_log"
    return len(list(log.glob("*.json"))) if log.is_dir() else 0


def wait_for(condition, process: subprocess.Popen, log: Path, what: str) -> None:
    """Poll ``condition`` until it holds; fail with the stream's log if it ends first."""
    deadline = time.monotonic() + KILL_TIMEOUT_S
    while not condition():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the stream ended before {what}:\n{log.read_text()[-4000:]}")
        time.sleep(0.1)


def kill_in_first_batch(command: list[str], root: Path, log: Path) -> None:
    """Run the stream until the first batch's fold is committed, then SIGKILL it."""
    checkpoint = root / "checkpoints" / "usersegments"
    folded = commits(root / "user_profiles")  # the full run's commits
    process = start_stream(command, log)
    wait_for(lambda: commits(root / "user_profiles") > folded, process, log, "batch 0's fold")
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    # Killed in the middle: the batch's offsets are logged, its commit is not.
    assert (checkpoint / "offsets" / "0").exists()
    assert not (checkpoint / "commits" / "0").exists()


@pytest.mark.slow
# Two stream processes, each a cold Spark, and three update batches: on 2 busy cores the
# delta-spark case has run past the suite's 1200 s hang guard.
@pytest.mark.timeout(2400)
@pytest.mark.parametrize(
    "backend", ["delta-rs", pytest.param("delta-spark", marks=pytest.mark.delta_spark)]
)
def test_a_stream_killed_mid_batch_resumes_exactly_once(
    spark, tmp_path, landed, reference, backend
):
    if backend == "delta-spark":
        require_delta_spark(spark)
    root = tmp_path / "store"
    shutil.copytree(reference["seeded"], root)
    land(landed["landing"], tmp_path / "landing")
    command = stream_command(root, tmp_path / "landing", landed["items"], backend)
    log = tmp_path / "stream.log"
    kill_in_first_batch(command, root, log)

    if backend == "delta-rs":
        stop_with_sigterm_in_last_batch(command, root, log)
    else:
        restarted = start_stream(command, log)
        assert restarted.wait(timeout=KILL_TIMEOUT_S) == 0, log.read_text()[-4000:]
    assert (root / "checkpoints" / "usersegments" / "commits" / "1").exists()

    store = TableStore.from_config(spark, make_config(root, *SETTINGS))
    statuses = store.read("runs").filter("command = 'stream'").groupBy("status").count()
    # The killed attempt of batch 0 is marked failed by the restart; its replay succeeded.
    assert {r["status"]: r["count"] for r in statuses.collect()} == {"succeeded": 2, "failed": 1}
    events = store.read("events")
    assert events.count() == events.select("event_id").distinct().count()
    assert_profiles_equal(profiles(store), reference["profiles"])
    assert_one_open_history_row_per_user(store)
    assert_rows_counted_once(store, landed["landing"])


def stop_with_sigterm_in_last_batch(command: list[str], root: Path, log: Path) -> None:
    """Restart the stream on processingTime (it would keep running) and send SIGTERM once
    the last landed file's batch (batch 1) began: the stream stops once that batch is
    committed, with exit status 0."""
    checkpoint = root / "checkpoints" / "usersegments"
    process = start_stream(
        [*command, "--trigger", "processingTime", "--set", "stream.interval=2 seconds"], log
    )
    # Batch 1's offsets are logged once batch 0's replay committed; its run is recorded
    # (status running) first thing in the batch.
    wait_for(
        lambda: (checkpoint / "offsets" / "1").exists() and running_runs(root / "runs") > 0,
        process,
        log,
        "batch 1 began",
    )
    assert not (checkpoint / "commits" / "1").exists()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=KILL_TIMEOUT_S) == 0, log.read_text()[-4000:]
    assert "stopped by SIGTERM" in log.read_text()


def running_runs(runs: Path) -> int:
    """Runs with status ``running`` in the ``runs`` table (read with delta-rs, no Spark)."""
    return int((DeltaTable(str(runs)).to_pandas(columns=["status"])["status"] == "running").sum())


def assert_profiles_equal(got: pd.DataFrame, want: pd.DataFrame) -> None:
    """The same users with the same sums and counts (vectors within 1e-6)."""
    assert got["user_id"].tolist() == want["user_id"].tolist()
    pd.testing.assert_frame_equal(
        got[["user_id", *PROFILE_NUMBERS]], want[["user_id", *PROFILE_NUMBERS]], atol=1e-6
    )
    for column in PROFILE_VECTORS:
        np.testing.assert_allclose(
            np.stack(got[column].to_numpy()), np.stack(want[column].to_numpy()), atol=1e-6
        )


def assert_one_open_history_row_per_user(store: TableStore) -> None:
    """Every user with a segment has exactly one open ``segment_history`` row."""
    open_rows = store.read("segment_history").filter(F.col("valid_to").isNull())
    per_user = open_rows.groupBy("user_id").count()
    assert per_user.filter("count > 1").isEmpty()
    assert per_user.count() == store.read("user_segments").count()


def assert_rows_counted_once(store: TableStore, files: list[Path]) -> None:
    """The stream's runs read every landed row once, and each is accounted for."""
    stream_runs = store.read("runs").filter("command = 'stream'").select("run_id")
    ingest = (
        store.read("run_metrics")
        .join(stream_runs, "run_id")
        .filter("stage = 'ingest'")
        .groupBy("metric")
        .agg(F.sum("value").alias("value"))
    )
    totals = {row["metric"]: row["value"] for row in ingest.collect()}
    landed_rows = sum(len(path.read_text().splitlines()) for path in files)
    assert totals["rows_read"] == landed_rows
    assert totals["accepted"] + totals["rejected"] + totals["duplicates"] == landed_rows


# ---------------------------------------------------------------------------
# run --resume (a resume in every stage: tests/test_faults.py)


@pytest.mark.slow
def test_resume_refuses_a_run_that_succeeded(spark, tmp_path, landed, reference, capsys):
    root = tmp_path / "store"
    shutil.copytree(reference["seeded"], root)
    run_id = TableStore.from_config(spark, make_config(root)).read("runs").first()["run_id"]
    assert cli.main(cli_args("run", root, "--resume", run_id)) == 2
    assert "succeeded; there is nothing to resume" in capsys.readouterr().err
