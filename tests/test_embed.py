"""The embedding stage with the real MiniLM, through Spark and on its own."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pyspark.sql import functions as F
from transformers import AutoModel, AutoTokenizer

from tests.conftest import make_config
from tests.helpers import metrics_of, new_run
from usersegments.config import load_config
from usersegments.embed import (
    EmbedderSpec,
    TextEmbedder,
    model_id,
    resolve_model_path,
    run_embed,
)
from usersegments.errors import SetupError
from usersegments.ingest import run_ingest
from usersegments.store import TableStore

TEXTS = [
    "Trail running shoes with a rock plate for technical singletrack",
    "sourdough starter culture and a proofing basket",
    "best budget envelope method for debt payoff",
    "vampire romance with fated mates under a moonlit sky",
    "ultralight tent",
    "hiking boots " * 200,  # far longer than max_length tokens
    "Café au lait ☕ — naïve résumé",
]


def reference_vectors(texts):
    """A plain transformers call: mean pooling over the mask, L2-normalised."""
    path = resolve_model_path(load_config().embed.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    batch = tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    mean = (hidden * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(mean, dim=1).numpy()


@pytest.fixture
def pipeline(spark, tmp_path):
    """Ingest a CSV of TEXTS into a fresh store and embed it; returns helpers."""
    cfg = make_config(tmp_path / "store")
    store = TableStore.from_config(spark, cfg)
    csv = tmp_path / "events.csv"

    def ingest(texts, config=cfg):
        rows = "".join(
            f'u{i % 3},2026-01-0{1 + i % 5}T10:00:00Z,view,,"{t}"\n' for i, t in enumerate(texts)
        )
        csv.write_text("user_id,event_time,event_type,item_id,text\n" + rows)
        run = new_run(spark, store, config)
        run_ingest(spark, store, config, run, events=[str(csv)])

    def embed(config=cfg):
        run = new_run(spark, store, config)
        run_embed(spark, store, config, run)
        run.flush()
        return metrics_of(store, run, "embed")

    return store, cfg, ingest, embed


def vectors_by_text(store, mid):
    events = store.read("events").select("text_hash", "text").distinct()
    rows = (
        store.read("text_embeddings")
        .filter(F.col("model_id") == mid)
        .join(events, "text_hash")
        .collect()
    )
    return {r["text"]: np.asarray(r["embedding"], dtype=np.float32) for r in rows}


@pytest.mark.slow
def test_spark_vectors_equal_a_direct_transformers_call(pipeline):
    store, cfg, ingest, embed = pipeline
    ingest(TEXTS)
    m = embed()
    assert m["texts_embedded"] == len(TEXTS) and m["cached_hits"] == 0
    assert m["texts_truncated"] == 1
    got = vectors_by_text(store, model_id(cfg.embed))
    want = reference_vectors(list(got))
    for (text, vector), expected in zip(got.items(), want, strict=True):
        assert vector.shape == (384,) and vector.dtype == np.float32
        assert abs(np.linalg.norm(vector) - 1.0) < 1e-5
        assert float(vector @ expected) > 0.999, text
    schema = store.schema("text_embeddings")
    assert schema["embedding"].dataType.simpleString() == "array<float>"


@pytest.mark.slow
def test_cache_embeds_only_new_texts(pipeline):
    store, cfg, ingest, embed = pipeline
    ingest(TEXTS[:4])
    assert embed()["texts_embedded"] == 4
    again = embed()
    assert (again["texts_embedded"], again["cached_hits"]) == (0, 4)
    ingest(TEXTS[:4] + ["one brand new text about compost and raised beds"])
    third = embed()
    assert (third["texts_embedded"], third["cached_hits"]) == (1, 4)
    assert store.read("text_embeddings").count() == 5


@pytest.mark.slow
def test_changing_max_length_is_a_new_model_id(pipeline):
    store, cfg, ingest, embed = pipeline
    ingest(TEXTS[:3])
    embed()
    shorter = make_config(cfg.store.root, "embed.max_length=16")
    assert model_id(shorter.embed) != model_id(cfg.embed)
    assert embed(shorter)["texts_embedded"] == 3
    assert store.read("text_embeddings").select("model_id").distinct().count() == 2


def test_model_id_tracks_every_vector_setting():
    base = load_config().embed
    ids = {model_id(base)}
    for change in (
        "embed.pooling=cls",
        "embed.normalize=false",
        "embed.quantize=int8",
        "embed.max_length=64",
    ):
        ids.add(model_id(load_config(overrides=[change]).embed))
    assert len(ids) == 5
    assert model_id(load_config(overrides=["embed.batch_size=8"]).embed) == model_id(base)


def test_missing_model_fails_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SetupError, match="not a folder"):
        resolve_model_path(str(tmp_path / "no" / "such" / "model"))
    empty = tmp_path / "empty-model"
    empty.mkdir()
    with pytest.raises(SetupError, match="has no weights"):
        model_id(load_config(overrides=[f"embed.model={empty}"]).embed)
    spec = EmbedderSpec.from_config(load_config().embed)
    hub = EmbedderSpec(**{**spec.__dict__, "model": "some-org/not-a-real-model"})
    with pytest.raises(SetupError, match="HF_HUB_OFFLINE=1.*Set embed.model to a local"):
        TextEmbedder(hub).load()


@pytest.mark.slow
def test_direct_embedder_sorts_and_restores_order():
    spec = EmbedderSpec.from_config(load_config(overrides=["embed.batch_size=2"]).embed, 1)
    embedder = TextEmbedder(spec).load()
    vectors = embedder.embed(TEXTS)
    single = np.vstack([embedder.embed([t]) for t in TEXTS])
    assert np.allclose(vectors, single, atol=1e-5)  # padding and order do not change vectors
    assert embedder.embed([]).shape == (0, 384)


@pytest.mark.slow  # over ~3 s on 2 cores
def test_int8_quantization_stays_close():
    cfg = load_config(overrides=["embed.quantize=int8", "embed.device=cpu"]).embed
    int8 = TextEmbedder(EmbedderSpec.from_config(cfg, 1)).load().embed(TEXTS)
    fp32 = TextEmbedder(EmbedderSpec.from_config(load_config().embed, 1)).load().embed(TEXTS)
    cosine = (int8 * fp32).sum(axis=1)
    assert cosine.min() > 0.95 and cosine.mean() > 0.97


@pytest.mark.slow
def test_onnx_runtime_matches_torch_and_is_exported_once(tmp_path, monkeypatch):
    monkeypatch.setenv("USERSEGMENTS_CACHE", str(tmp_path))
    fp32 = TextEmbedder(EmbedderSpec.from_config(load_config().embed, 1)).load().embed(TEXTS)
    vectors, ids = {}, set()
    for quantize in ("none", "int8"):
        overrides = ["embed.runtime=onnxruntime", f"embed.quantize={quantize}", "embed.device=cpu"]
        cfg = load_config(overrides=overrides).embed
        vectors[quantize] = TextEmbedder(EmbedderSpec.from_config(cfg, 1)).load().embed(TEXTS)
        ids.add(model_id(cfg))
    assert len(ids | {model_id(load_config().embed)}) == 3  # every runtime/precision its own id
    assert vectors["none"].dtype == np.float32 and vectors["none"].shape == fp32.shape
    assert (vectors["none"] * fp32).sum(axis=1).min() > 0.999
    assert (vectors["int8"] * fp32).sum(axis=1).min() > 0.98
    assert np.allclose(np.linalg.norm(vectors["int8"], axis=1), 1.0, atol=1e-5)
    files = sorted(tmp_path.glob("onnx/*/*.onnx"))
    assert sorted(f.name for f in files) == ["model.int8.onnx", "model.onnx"]
    stamps = [f.stat().st_mtime_ns for f in files]
    cfg = load_config(overrides=["embed.runtime=onnxruntime", "embed.device=cpu"]).embed
    TextEmbedder(EmbedderSpec.from_config(cfg, 1)).load()
    assert [f.stat().st_mtime_ns for f in files] == stamps  # reused, not exported again


def test_cuda_requested_without_gpu_is_clear():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    spec = EmbedderSpec.from_config(load_config(overrides=["embed.device=cuda"]).embed)
    with pytest.raises(SetupError, match="torch sees no GPU"):
        TextEmbedder(spec).load()


def test_truncation_is_counted_without_the_tokenizer_warning():
    import logging

    class Grab(logging.Handler):
        def __init__(self):
            super().__init__()
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    spec = EmbedderSpec.from_config(load_config().embed, 1)
    embedder = TextEmbedder(spec).load()
    grab = Grab()
    hf = logging.getLogger("transformers")  # its loggers do not propagate to the root
    hf.addHandler(grab)
    try:
        # "the" is one token; [CLS] and [SEP] make 128 tokens (fits) and 129 (cut);
        # 700 tokens pass the model's 512 positions, where the tokenizer used to warn.
        vectors = embedder.embed(["the " * 126, "the " * 127, "the " * 700, "short"])
    finally:
        hf.removeHandler(grab)
    assert embedder.truncated_ == 2 and vectors.shape == (4, 384)
    assert not [m for m in grab.messages if "sequence length is longer" in m], grab.messages
