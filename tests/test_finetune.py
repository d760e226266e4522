"""``usersegments finetune``: behaviour pairs, the training, versions and promotion."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest

from tests.conftest import make_config, set_args
from usersegments import cli
from usersegments.config import FinetuneConfig, ProfileConfig, load_config
from usersegments.embed import model_id
from usersegments.embed.model import EmbedderSpec
from usersegments.errors import SetupError
from usersegments.finetune import versions
from usersegments.finetune.pairs import training_pairs
from usersegments.store import TableStore
from usersegments.testing.synthetic import GeneratorSettings, generate, write

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)


def _events(spark, rows):
    """Events frame from (user, minutes after T0, text, event_type) rows."""
    pdf = pd.DataFrame(
        [
            {
                "user_id": user,
                "event_time": T0 + timedelta(minutes=minute),
                "event_type": kind,
                "value": None,
                "text_hash": f"h-{text}",
                "text": text,
            }
            for user, minute, text, kind in rows
        ]
    )
    schema = (
        "user_id string, event_time timestamp, event_type string, value double, "
        "text_hash string, text string"
    )
    return spark.createDataFrame(pdf, schema)


def _pairs(frame) -> dict[tuple[str, str], tuple[float, int]]:
    return {(r["text_a"], r["text_b"]): (r["weight"], r["users"]) for r in frame.collect()}


@pytest.mark.slow  # over ~3 s on 2 cores
def test_pairs_join_what_a_user_engages_with_next_within_the_window(spark):
    rows = [("u1", i, text, "view") for i, text in enumerate(["a", "b", "c", "d"])]
    rows += [("u2", 0, "b", "purchase"), ("u2", 1, "a", "view"), ("u2", 2, "a", "view")]
    profile = ProfileConfig(event_weights={"view": 1.0, "purchase": 3.0})
    got = _pairs(
        training_pairs(_events(spark, rows), FinetuneConfig(window=2, popular_share=1.0), profile)
    )
    # u1: a-b, a-c, b-c, b-d, c-d (not a-d: three apart); u2: b-a twice (one pair per
    # offset), a-a never (the same text is no pair).
    assert set(got) == {("a", "b"), ("a", "c"), ("b", "c"), ("b", "d"), ("c", "d")}
    weight, users = got[("a", "b")]
    assert users == 2
    # u1's a-b: 1 + 1; u2's b->a at offsets 1 and 2: (3 + 1) twice.
    assert weight == pytest.approx(2 + 4 + 4)


@pytest.mark.slow  # over ~3 s on 2 cores
def test_pairs_keep_each_users_recent_events_and_thin_popular_texts(spark):
    rows = [("u1", i, f"t{i}", "view") for i in range(6)]
    capped = training_pairs(
        _events(spark, rows),
        FinetuneConfig(window=1, max_events_per_user=3, popular_share=1.0),
        ProfileConfig(),
    )
    assert set(_pairs(capped)) == {("t3", "t4"), ("t4", "t5")}
    # "hit" is every other event of 50 users: a pair with it survives with probability
    # sqrt(0.01 / 0.5) per side, the others (share 1/200 < 0.01) always.
    rows = [
        (f"u{u}", 2 * i + j, "hit" if j == 0 else f"x{u}-{i}", "view")
        for u in range(50)
        for i in range(2)
        for j in range(2)
    ]
    thinned = _pairs(
        training_pairs(
            _events(spark, rows), FinetuneConfig(window=1, popular_share=0.01), ProfileConfig()
        )
    )
    with_hit = sum(1 for a, b in thinned if "hit" in (a, b))
    assert 0 < with_hit < 0.5 * 150  # 150 distinct pairs with "hit" before thinning


def test_versions_resolve_promote_and_name_the_fix(tmp_path):
    cfg = load_config(overrides=["embed.model=finetuned:latest"], output=str(tmp_path))
    folder = versions.models_folder(cfg.embed.models_root)
    with pytest.raises(SetupError, match="run `usersegments finetune --promote` first"):
        versions.resolve_finetuned("finetuned:latest", cfg.embed.models_root)
    folder.mkdir(parents=True)
    assert versions.next_version(folder) == 1
    (folder / "v1").mkdir()
    assert versions.next_version(folder) == 1  # unfinished: resumed, not skipped
    versions.write_metadata(folder / "v1", {"steps": 3})
    assert versions.next_version(folder) == 2
    with pytest.raises(SetupError, match="none was promoted"):
        versions.resolve_finetuned("finetuned:latest", cfg.embed.models_root)
    assert versions.resolve_finetuned("finetuned:v1", cfg.embed.models_root) == folder / "v1"
    with pytest.raises(SetupError, match="v2 .* has not finished"):
        versions.resolve_finetuned("finetuned:v2", cfg.embed.models_root)
    with pytest.raises(SetupError, match="did not finish"):
        versions.promote(folder, 2)
    versions.promote(folder, 1)
    assert versions.resolve_finetuned("finetuned:latest", cfg.embed.models_root) == folder / "v1"
    with pytest.raises(SetupError, match="finetuned:latest or finetuned:vN"):
        versions.resolve_finetuned("finetuned:best", cfg.embed.models_root)


# Two pairs of areas whose texts share every word (only a brand in item titles differs),
# 25 users each: the shipped encoder can hardly tell a pair apart, what the users
# engage with next can. Segments at area size (sub.target_size 25), four coarse clusters.
AMBIGUOUS = GeneratorSettings(
    users=100, seed=11, items_per_style=20, drift_share=0.0, ambiguous_areas=True, areas=4
)
AMBIGUOUS_SETTINGS = (
    "cluster.k=4",
    "privacy.min_segment_size=5",
    "cluster.sub.target_size=25",
    "embed.max_length=48",
    "finetune.max_steps=40",
    "finetune.batch_size=32",
    "finetune.learning_rate=1e-4",
)


@pytest.mark.slow
def test_finetune_trains_a_version_scores_it_and_embed_uses_it_once_promoted(
    spark, tmp_path, capsys
):
    """The issue's acceptance: on ambiguous areas, 40 steps raise NMI(segment, area) by
    0.1 or more over the base encoder; the version is kept, promoted and embedded once."""
    paths = write(generate(AMBIGUOUS), tmp_path / "input")
    root = tmp_path / "store"
    settings = AMBIGUOUS_SETTINGS
    args = [
        "finetune",
        "--output",
        str(root),
        *set_args(*settings),
        "--events",
        paths["events_parquet"],
    ]
    assert cli.main([*args, "--items", paths["items"], "--truth", paths["truth"], "--promote"]) == 0
    out = capsys.readouterr().out
    assert "fine-tuned" in out and "NMI(cluster, area)" in out
    assert "promoted: embed.model finetuned:latest is now" in out

    store = TableStore.from_config(spark, make_config(root, *settings))
    pairs = store.read("finetune_pairs")
    assert pairs.filter("hash_a >= hash_b").isEmpty() and pairs.count() > 8
    v1 = root / "models" / "encoder" / "v1"
    metadata = json.loads((v1 / "finetune.json").read_text())
    assert metadata["steps"] == 40 and len(metadata["loss_curve"]) == 40
    assert metadata["promoted"] is True and metadata["pairs"] == pairs.count()
    for when in ("before", "after"):  # the same trial on both encoders, NMI from the truth
        assert metadata[when]["status"] == "succeeded"
        assert metadata[when]["nmi_cluster_vs_area"] is not None
    before, after = metadata["before"], metadata["after"]
    assert after["nmi_segment_vs_area"] >= before["nmi_segment_vs_area"] + 0.1, (before, after)
    metrics = store.read("run_metrics").filter("stage = 'finetune'").toPandas()
    assert {"score_before", "score_after", "loss_first", "loss_last"} <= set(metrics["metric"])

    tuned = make_config(root, *settings, "embed.model=finetuned:latest").embed
    base = make_config(root, *settings).embed
    assert EmbedderSpec.from_config(tuned).model == str(v1)
    assert model_id(tuned).startswith("finetuned-v1@") and model_id(tuned) != model_id(base)
    # Scoring embedded every text with the new version once, under its own model id.
    cached = store.read("text_embeddings").groupBy("model_id").count().toPandas()
    counts = dict(zip(cached["model_id"], cached["count"], strict=True))
    assert counts[model_id(tuned)] == counts[model_id(base)]


class _Killed(Exception):
    """Stands for the process dying right after a checkpoint was written."""


@pytest.mark.slow
def test_training_killed_after_a_checkpoint_resumes_there(tmp_path, monkeypatch, caplog):
    import pyarrow as pa
    from deltalake import write_deltalake

    from usersegments.config.models import DEFAULT_MODEL
    from usersegments.embed.model import resolve_model_path
    from usersegments.finetune import train

    texts = [f"{word} gear for the trail, size {n}" for n in range(6) for word in ("hiking", "ski")]
    write_deltalake(
        str(tmp_path / "pairs"),
        pa.table(
            {
                "text_a": texts[0::2],
                "text_b": texts[1::2],
                "hash_a": [f"a{i}" for i in range(6)],
                "hash_b": [f"b{i}" for i in range(6)],
                "weight": [1.0] * 6,
            }
        ),
    )
    spec = train.TrainSpec(
        base_model=resolve_model_path(DEFAULT_MODEL),
        output=str(tmp_path / "v1"),
        pairs_table=str(tmp_path / "pairs"),
        max_length=16,
        pooling="mean",
        batch_size=3,
        learning_rate=1e-4,
        warmup_share=0.0,
        temperature=0.05,
        seed=1,
        max_steps=4,
        max_minutes=30,
        checkpoint_every=2,
        use_gpu=False,
    )
    save = train._save_checkpoint

    def save_then_die(*args, **kwargs):
        save(*args, **kwargs)
        raise _Killed

    monkeypatch.setattr(train, "_save_checkpoint", save_then_die)
    with pytest.raises(_Killed):
        train.train_encoder(spec)
    assert (tmp_path / "v1" / "checkpoint" / "state.pt").is_file()
    assert not (tmp_path / "v1" / "config.json").exists()  # no model saved yet

    monkeypatch.setattr(train, "_save_checkpoint", save)
    with caplog.at_level("INFO", logger="usersegments.finetune.train"):
        done = train.train_encoder(spec)
    assert "resumed at step 2" in caplog.text
    # Two steps before the kill (kept in the curve), two after it: four in all.
    assert done["steps"] == 4 and [s for s, _ in done["loss_curve"]] == [1, 2, 3, 4]
    assert (tmp_path / "v1" / "config.json").is_file()
    assert not (tmp_path / "v1" / "checkpoint").exists()
