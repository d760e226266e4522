"""The cluster and notebook ways of running: spark-submit jobs, Databricks-format
notebooks executed top to bottom, and the README's generated configuration reference."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from deltalake import DeltaTable

from tests.conftest import REPO, SMALL, SPARK_SUBMIT_JOBS, make_config
from usersegments.config import config_reference
from usersegments.notebook import notebook_cells, run_notebook
from usersegments.schema import tables_reference

NOTEBOOKS = (
    "00_quickstart",
    "01_ingest",
    "02_embed",
    "03_segments",
    "04_dynamic_updates",
    "05_evaluate",
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


@pytest.fixture(scope="module")
def notebook_runs(spark, tmp_path_factory):
    """Every notebook, in order, executed in this process on a small generated log,
    with the test session as the notebook's ``spark`` (as Databricks provides one)."""
    root = tmp_path_factory.mktemp("notebooks")
    config = root / "test.yaml"
    config.write_text(make_config(root / "store", *SMALL).to_yaml(), encoding="utf-8")
    env = {
        "USERSEGMENTS_CONFIG": str(config),
        "USERSEGMENTS_ROOT": str(root / "store"),
        "USERSEGMENTS_USERS": "150",
        "USERSEGMENTS_SEED": "11",
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
    assert history["valid_to"].notna().sum() == churn["users_moved"] > 0
    assert 0.0 <= ns["04_dynamic_updates"]["recovery"]["drifted_in_new_area_share"] <= 1.0
    evaluation = ns["05_evaluate"]["evaluation"]
    k = ns["05_evaluate"]["cfg"].evaluate.k
    assert evaluation["users_tested"] > 0
    assert 0.0 <= evaluation[f"hit_rate@{k}.segment"] <= 1.0


def test_jobs_run_under_spark_submit(request):
    """The three jobs, each its own spark-submit in local mode, on one output root.

    They were started in the background when the session collected this test (see
    ``conftest.pytest_collection_finish``), so their JVMs overlap other tests."""
    jobs = request.config.stash.get(SPARK_SUBMIT_JOBS, None)
    assert jobs is not None, "the spark-submit jobs were not started at collection"
    outputs = jobs.result()
    assert "report:" in outputs["run_pipeline.py"]
    assert "events folded" in outputs["update_segments.py"]
    assert "hit rate@" in outputs["evaluate.py"]
    output = Path(outputs["output"])
    runs = table(output, "runs")
    assert set(runs["command"]) >= {"run", "update", "evaluate"}
    assert (runs["status"] == "succeeded").all()
    stages = set(table(output, "run_metrics")["stage"])
    assert {"ingest", "embed", "cluster", "update", "evaluate"} <= stages
    assert table(output, "segment_history")["valid_to"].notna().any()
