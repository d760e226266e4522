"""The cluster and notebook ways of running: the jobs/ scripts (spark-submit's entry
points), Databricks-format notebooks executed top to bottom, and the README's generated
configuration reference."""

from __future__ import annotations

import os
import re
from datetime import timedelta
from pathlib import Path

import pytest
from deltalake import DeltaTable

from tests.conftest import REPO, SMALL, make_config, run_job
from usersegments.config import config_reference
from usersegments.notebook import notebook_cells, run_notebook
from usersegments.schema import tables_reference
from usersegments.testing.synthetic import DEFAULT_END, GeneratorSettings, generate, write

NOTEBOOKS = (
    "00_quickstart",
    "01_ingest",
    "02_embed",
    "03_segments",
    "04_dynamic_updates",
    "05_evaluate",
    "06_streaming",
)


def table(root: Path, name: str):
    """A Delta table read straight from disk with delta-rs (no Spark involved)."""
    return DeltaTable(str(root / name)).to_pandas()


def readme_section(name: str) -> str:
    """The README text between ``<!-- name:begin -->`` and ``<!-- name:end -->``."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    assert begin in readme and end in readme, f"README lacks the {name} markers"
    return readme.split(begin, 1)[1].split(end, 1)[0].strip()


def test_readme_references_are_generated_from_the_code():
    assert readme_section("config-reference") == config_reference().strip(), (
        "README's configuration reference is stale: paste `usersegments config --reference`"
    )
    assert readme_section("tables-reference") == tables_reference().strip(), (
        "README's Tables section is stale: paste `usersegments tables --contracts`"
    )
    keys = [
        line.split("`")[1] for line in config_reference().splitlines() if line.startswith("| `")
    ]
    assert "update.min_new_events" in keys and len(keys) == len(set(keys)) > 60


def test_notebooks_are_databricks_source_files():
    for name in NOTEBOOKS:
        text = (REPO / "notebooks" / f"{name}.py").read_text(encoding="utf-8")
        assert text.startswith("# Databricks notebook source\n"), name
        assert "# MAGIC %md" in text, name
        cells = notebook_cells(text)
        assert 2 <= len(cells) <= 10, (name, len(cells))  # a handful of cells over the library


PSEUDONYM_KEY = {"USERSEGMENTS_PSEUDONYM_KEY": "notebook-test-key-0123456789abcdef"}


@pytest.fixture(scope="module")
def notebook_runs(spark, tmp_path_factory):
    """Every notebook, in order, executed in this process on a small generated log,
    with the test session as the notebook's ``spark`` (as Databricks provides one).
    User ids are pseudonymized and texts leave the events once embedded, so the store
    also proves that no raw id and no text is kept in the behaviour log."""
    root = tmp_path_factory.mktemp("notebooks")
    config = root / "test.yaml"
    cfg = make_config(
        root / "store",
        *SMALL,
        "privacy.pseudonymize_user_ids=true",
        "privacy.drop_text_after_embedding=true",
        "stream.run_report=false",  # 06's batches: the report is built and tested by 00
    )
    config.write_text(cfg.to_yaml(), encoding="utf-8")
    env = {
        "USERSEGMENTS_CONFIG": str(config),
        "USERSEGMENTS_ROOT": str(root / "store"),
        "USERSEGMENTS_USERS": "120",
        "USERSEGMENTS_SEED": "11",
        **PSEUDONYM_KEY,
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        spaces = {
            name: run_notebook(REPO / "notebooks" / f"{name}.py", {"spark": spark})
            for name in NOTEBOOKS
        }
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return root / "store", spaces


def test_quickstart_notebook_builds_labelled_segments_and_a_report(notebook_runs):
    root, ns = notebook_runs
    segments = ns["00_quickstart"]["segments"].toPandas()
    assert len(segments) >= 2 and segments["label"].str.len().min() > 0
    assert (root / "report" / "index.html").is_file()
    assert table(root, "user_segments")["user_id"].is_unique


def test_ingest_and_embed_notebooks_add_nothing_the_second_time(notebook_runs):
    _, ns = notebook_runs
    ingest = ns["01_ingest"]["ingest"].metrics
    assert ingest["accepted"] == 0 and ingest["already_present"] > 0
    assert ingest["rows_read"] == ingest["accepted"] + ingest["rejected"] + ingest["duplicates"]
    assert len(ns["01_ingest"]["rejected_by_reason"]) > 0
    assert ns["02_embed"]["embed"].metrics["texts_embedded"] == 0
    assert ns["02_embed"]["vectors"].shape == (3, 384)


def test_segments_notebook_draws_and_describes_every_segment(notebook_runs):
    _, ns = notebook_runs
    cards = ns["03_segments"]["cards"]
    assert len(cards) >= 2 and cards["label"].str.len().min() > 0
    assert cards["recommended"].str.len().min() > 0


def test_update_and_evaluate_notebooks(notebook_runs):
    root, ns = notebook_runs
    churn = ns["04_dynamic_updates"]["churn"]
    assert churn["events_folded"] > 0 and churn["users_reassigned"] > 0
    history = table(root, "segment_history")
    # Rows closed by 04's update; the later stream (06) closes rows at its own, later times.
    closed_by_update = history["valid_to"].notna() & (history["valid_to"] <= DEFAULT_END)
    assert closed_by_update.sum() == churn["users_moved"] > 0
    assert ns["04_dynamic_updates"]["recovery"]["drifted_in_new_area_share"] > 0
    evaluation = ns["05_evaluate"]["evaluation"]
    k = ns["05_evaluate"]["cfg"].evaluate.k
    assert evaluation["users_tested"] > 0
    assert evaluation[f"hit_rate@{k}.segment"] > evaluation[f"hit_rate@{k}.popularity"]


def test_streaming_notebook_folds_each_landed_file_once(notebook_runs):
    root, ns = notebook_runs
    summary = ns["06_streaming"]["summary"]
    landed = ns["06_streaming"]["events"]
    assert len(summary.batches) == 2 and summary.rows == len(landed)
    assert [b.command for b in summary.batches] == ["update", "update"]
    figures = ns["06_streaming"]["figures"].toPandas()
    assert figures["rows_read"].sum() == len(landed)
    assert figures["events_folded"].sum() > 0
    assert (root / "checkpoints" / "usersegments" / "commits" / "1").is_file()


def test_update_job_folds_a_new_window(notebook_runs, monkeypatch, capsys):
    """``jobs/update_segments.py`` on the notebooks' store, with a later window of the
    same users."""
    root, _ = notebook_runs
    later = generate(
        GeneratorSettings(users=120, seed=11, days=14, end=DEFAULT_END + timedelta(days=14))
    )
    window3 = write(later, root / "input" / "window3")
    for name, value in PSEUDONYM_KEY.items():
        monkeypatch.setenv(name, value)
    code = run_job(
        "update_segments.py",
        "--config",
        str(root.parent / "test.yaml"),
        "--output",
        str(root),
        "--events",
        window3["events_csv"],
        "--items",
        window3["items"],
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "events folded" in out and "report:" in out
    runs = table(root, "runs")
    update = runs[runs["command"] == "update"].sort_values("started_at").iloc[-1]
    assert update["status"] == "succeeded"
    metrics = table(root, "run_metrics")
    folded = metrics.query("run_id == @update.run_id and metric == 'events_folded'")
    assert folded["value"].iloc[0] > 500


def test_pseudonymized_store_keeps_no_raw_user_id_and_no_event_text(notebook_runs):
    """Every table and the report, after the notebooks and the update job."""
    root, ns = notebook_runs
    raw_ids = set(ns["00_quickstart"]["data"].truth["user_id"])
    pattern = re.compile("|".join(map(re.escape, sorted(raw_ids))))
    tables = [p.parent for p in root.glob("*/_delta_log")]
    assert {"events", "events_rejected", "user_profiles", "segment_history"} <= {
        t.name for t in tables
    }
    for folder in tables:
        frame = table(root, folder.name)
        for column in frame.columns:
            text = "\n".join(frame[column].astype(str))
            assert not pattern.search(text), f"raw user id in {folder.name}.{column}"
    assert not pattern.search((root / "report" / "index.html").read_text(encoding="utf-8"))
    # Events link users to text hashes only; labels still read every text from `texts`.
    events, texts = table(root, "events"), table(root, "texts")
    assert events["text"].isna().all() and set(events["text_hash"]) <= set(texts["text_hash"])
    segments = table(root, "segments")
    described = segments[segments["size"] >= 10]
    assert len(described) and described["keywords"].map(len).min() > 0
    # The truth is pseudonymized with the same key, so the planted areas still score.
    evaluation = ns["05_evaluate"]["evaluation"]
    assert evaluation["truth_users"] > 50
