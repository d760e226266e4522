"""The embedding stage with the real MiniLM, through Spark and on its own."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
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
    resolve_runtime,
    run_embed,
)
from usersegments.embed.parts import text_parts
from usersegments.errors import SetupError
from usersegments.ingest import run_ingest
from usersegments.store import TableStore

TORCH_FP32 = load_config(overrides=["embed.runtime=torch"]).embed

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
    fp32 = make_config(cfg.store.root, "embed.runtime=torch")
    m = embed(fp32)
    assert m["texts_embedded"] == len(TEXTS) and m["cached_hits"] == 0
    assert m["texts_truncated"] == 1
    assert (m["runtime_onnx"], m["quantized_int8"]) == (0, 0)
    got = vectors_by_text(store, model_id(fp32.embed))
    want = reference_vectors(list(got))
    for (text, vector), expected in zip(got.items(), want, strict=True):
        assert vector.shape == (384,) and vector.dtype == np.float32
        assert abs(np.linalg.norm(vector) - 1.0) < 1e-5
        assert float(vector @ expected) > 0.999, text
    # The default on a CPU: ONNX Runtime int8 through the same UDF, its own model id.
    m = embed()
    assert (m["runtime_onnx"], m["quantized_int8"]) == (1, 1) and m["texts_embedded"] == 7
    int8 = vectors_by_text(store, model_id(cfg.embed))
    assert min(float(int8[text] @ got[text]) for text in got) > 0.98
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


ITEMS = {"i1": "Trail running shoes with a rock plate", "i2": "sourdough starter culture"}


def write_log(folder, rows, name):
    """``rows`` of (user, item, event text) as an events CSV in ``folder``; its path."""
    path = folder / name
    lines = "".join(
        f"{user},2026-01-02T10:00:00Z,view,{item},{text}\n" for user, item, text in rows
    )
    path.write_text("user_id,event_time,event_type,item_id,text\n" + lines)
    return str(path)


@pytest.mark.slow
def test_split_parts_embeds_each_part_once_and_composes_each_text(spark, tmp_path):
    """``embed.parts: split``: the model sees each distinct part of the "item | event"
    texts once; a text's stored vector is its parts' word-weighted mean, close to the
    vector of the text embedded whole; a later event embeds only its new part."""
    cfg = make_config(tmp_path / "store", "embed.parts=split")
    store = TableStore.from_config(spark, cfg)
    items = tmp_path / "items.csv"
    items.write_text("item_id,text\n" + "".join(f"{k},{v}\n" for k, v in ITEMS.items()))
    grip, loaf = "great grip on wet rock and mud", "my loaf rose beautifully"
    rows = [("u0", "i1", grip), ("u1", "i2", loaf), ("u2", "i1", loaf), ("u0", "i2", grip)]
    # A review that holds the separator itself stays one part: ingest split nothing there.
    rows += [("u1", "i2", ""), ("u2", "", "ultralight tent"), ("u3", "i1", "light | warm")]

    def ingest_and_embed(name, log_rows):
        run = new_run(spark, store, cfg)
        run_ingest(spark, store, cfg, run, [write_log(tmp_path, log_rows, name)], str(items))
        run_embed(spark, store, cfg, run)
        run.flush()
        return metrics_of(store, run, "embed")

    first = ingest_and_embed("first.csv", rows)
    # 7 distinct texts, 5 of them "item | review"; 6 distinct parts (2 items, 3 reviews,
    # the search), each through the model once.
    assert (first["distinct_texts"], first["texts_to_embed"]) == (7, 7)
    assert (first["distinct_parts"], first["texts_embedded"], first["texts_composed"]) == (6, 6, 5)
    assert first["embedded_by_parts"] == 1
    vectors = vectors_by_text(store, model_id(cfg.embed))
    assert len(vectors) == 7 and model_id(cfg.embed).endswith("+parts")
    stored = {
        r["text_hash"]: np.asarray(r["embedding"]) for r in store.read("text_embeddings").collect()
    }
    whole = TextEmbedder(EmbedderSpec.from_config(cfg.embed, 2)).load()
    composites = [text for text in vectors if " | " in text]
    whole_vectors = whole.embed(composites)
    cosines = []
    for text, embedded_whole in zip(composites, whole_vectors, strict=True):
        parts = text.split(" | ", 1)
        weights = [len(part.split()) for part in parts]
        mean = sum(w * stored[sha256(part)] for w, part in zip(weights, parts, strict=True))
        np.testing.assert_allclose(vectors[text], mean / np.linalg.norm(mean), atol=1e-5)
        cosines.append(float(vectors[text] @ embedded_whole))
    # Measured 0.94-0.96, and 0.79 where the item and the review speak of unrelated things
    # (the whole text's tokens then attend across both); unrelated texts lie near 0.
    assert min(cosines) > 0.75 and float(np.median(cosines)) > 0.9, cosines

    second = ingest_and_embed("second.csv", [("u3", "i1", "too narrow for wide feet")])
    assert (second["cached_hits"], second["texts_to_embed"]) == (7, 1)
    assert (second["parts_cached"], second["texts_embedded"], second["texts_composed"]) == (1, 1, 1)


@pytest.mark.parametrize(
    ("source", "want"),
    [
        ("item_then_event", [["fits | runs small", "shoe"], ["plain"]]),
        ("event_then_item", [["runs small", "shoe | fits"], ["plain"]]),
        ("item", [["shoe | fits | runs small"], ["plain"]]),
    ],
)
def test_a_text_is_split_where_ingest_joined_it(spark, source, want):
    texts = spark.createDataFrame(
        [("a", "shoe | fits | runs small"), ("b", "plain")], "text_hash string, text string"
    )
    parts = text_parts(texts, 128, source).orderBy("text_hash").collect()
    got = [sorted(r["part_text"] for r in parts if r["text_hash"] == h) for h in ("a", "b")]
    assert got == want
    assert all(r["part_hash"] == sha256(r["part_text"]) for r in parts)
    assert [r["part_weight"] for r in parts if r["text_hash"] == "b"] == [1.0]


def sha256(text):
    """Ingest's ``text_hash`` of ``text``."""
    return hashlib.sha256(text.encode()).hexdigest()


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
        "embed.quantize=none",
        "embed.runtime=torch",
        "embed.max_length=64",
        "embed.parts=split",
    ):
        ids.add(model_id(load_config(overrides=[change]).embed))
    ids.add(model_id(load_config(overrides=["embed.runtime=torch", "embed.quantize=int8"]).embed))
    assert len(ids) == 8
    assert model_id(load_config(overrides=["embed.batch_size=8"]).embed) == model_id(base)
    # Texts composed from parts share the encoder (and its ONNX export), not the vectors.
    split = load_config(overrides=["embed.parts=split"]).embed
    assert EmbedderSpec.from_config(split).encoder_id == EmbedderSpec.from_config(base).encoder_id


def test_auto_runtime_is_onnx_int8_on_cpu_and_torch_on_cuda():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: auto picks torch")
    auto = resolve_runtime(load_config().embed)
    assert (auto.runtime, auto.quantize, auto.device) == ("onnxruntime", "int8", "cpu")
    explicit = load_config(overrides=["embed.runtime=onnxruntime", "embed.quantize=int8"]).embed
    assert model_id(explicit) == model_id(load_config().embed)  # the same vectors, one cache
    cuda = resolve_runtime(load_config(overrides=["embed.device=cuda"]).embed)
    assert (cuda.runtime, cuda.quantize, cuda.device) == ("torch", "none", "cuda")
    torch_cpu = EmbedderSpec.from_config(load_config(overrides=["embed.runtime=torch"]).embed)
    assert (torch_cpu.runtime, torch_cpu.quantize) == ("torch", "none")


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
    overrides = ["embed.batch_size=2", "embed.runtime=torch"]  # int8 scales follow the batch
    spec = EmbedderSpec.from_config(load_config(overrides=overrides).embed, 1)
    embedder = TextEmbedder(spec).load()
    vectors = embedder.embed(TEXTS)
    single = np.vstack([embedder.embed([t]) for t in TEXTS])
    assert np.allclose(vectors, single, atol=1e-5)  # padding and order do not change vectors
    assert embedder.embed([]).shape == (0, 384)


@pytest.mark.slow
def test_int8_vectors_do_not_depend_on_their_batch_mates():
    """int8 quantizes activations per forward pass: the default (ONNX Runtime int8 on a
    CPU) runs one text per pass, so a stream's replay or an update reproduces vectors."""
    embedder = TextEmbedder(EmbedderSpec.from_config(load_config().embed, 1)).load()
    together = embedder.embed(TEXTS)
    alone = np.vstack([embedder.embed([t]) for t in TEXTS])
    reversed_order = embedder.embed(TEXTS[::-1])[::-1]
    assert np.array_equal(together, alone) and np.array_equal(together, reversed_order)


@pytest.mark.slow  # over ~3 s on 2 cores
def test_int8_quantization_stays_close():
    overrides = ["embed.runtime=torch", "embed.quantize=int8", "embed.device=cpu"]
    int8 = TextEmbedder(EmbedderSpec.from_config(load_config(overrides=overrides).embed, 1))
    int8 = int8.load().embed(TEXTS)
    fp32 = TextEmbedder(EmbedderSpec.from_config(TORCH_FP32, 1)).load().embed(TEXTS)
    cosine = (int8 * fp32).sum(axis=1)
    assert cosine.min() > 0.95 and cosine.mean() > 0.97


@pytest.mark.slow
def test_onnx_runtime_matches_torch_and_is_exported_once(tmp_path, monkeypatch):
    monkeypatch.setenv("USERSEGMENTS_CACHE", str(tmp_path))
    fp32 = TextEmbedder(EmbedderSpec.from_config(TORCH_FP32, 1)).load().embed(TEXTS)
    vectors, ids = {}, set()
    for quantize in ("none", "int8"):
        overrides = ["embed.runtime=onnxruntime", f"embed.quantize={quantize}", "embed.device=cpu"]
        cfg = load_config(overrides=overrides).embed
        vectors[quantize] = TextEmbedder(EmbedderSpec.from_config(cfg, 1)).load().embed(TEXTS)
        ids.add(model_id(cfg))
    assert len(ids | {model_id(TORCH_FP32)}) == 3  # every runtime/precision its own id
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


def test_int8_default_segments_planted_users_as_well_as_fp32(planted):
    """``embed.runtime: auto`` runs ONNX Runtime int8 on a CPU because its segments of the
    planted users are as good as fp32's: the int8 vectors the run's Spark UDF wrote, and
    fp32 vectors of the same texts, through the same user means and clusterings. The
    planted scores the runs report (ARI of areas, NMI of sub-styles) stay within 0.01;
    the sub-styles' ARI, the most sensitive, measured 0.004-0.015 below fp32's."""
    from sklearn.cluster import AgglomerativeClustering, KMeans
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    if resolve_runtime(planted.cfg.embed).runtime != "onnxruntime":
        pytest.skip("auto picks torch here (a GPU, or no onnxruntime)")
    store = planted.store
    events = store.read("events").select("user_id", "text_hash", "text").toPandas()
    texts = events.drop_duplicates("text_hash").set_index("text_hash")["text"]
    default = vectors_of_hashes(store, model_id(planted.cfg.embed), texts.index)
    fp32 = TextEmbedder(EmbedderSpec.from_config(TORCH_FP32, 2)).load().embed(list(texts))
    truth = planted.data.truth.set_index("user_id")
    scores = {}
    for name, vectors in (("default", default), ("fp32", fp32)):
        rows = pd.DataFrame(vectors, index=texts.index).loc[events["text_hash"]]
        users = rows.groupby(events["user_id"].to_numpy()).mean()
        x = users.to_numpy() / np.linalg.norm(users.to_numpy(), axis=1, keepdims=True)
        area = truth.loc[users.index, "area"]
        style = area + "/" + truth.loc[users.index, "sub_style"]
        coarse = KMeans(area.nunique(), n_init=25, random_state=0).fit_predict(x)
        fine = AgglomerativeClustering(style.nunique(), linkage="ward").fit_predict(x)
        scores[name] = {
            "ari_area": adjusted_rand_score(area, coarse),
            "nmi_area": normalized_mutual_info_score(area, coarse),
            "ari_style": adjusted_rand_score(style, fine),
            "nmi_style": normalized_mutual_info_score(style, fine),
        }
    for score, value in scores["fp32"].items():
        assert scores["default"][score] >= value - (0.02 if score == "ari_style" else 0.01), scores
    assert scores["fp32"]["ari_area"] > 0.8, scores  # the comparison is of good segments


def vectors_of_hashes(store, mid, hashes):
    """The cached vectors of ``hashes`` for model id ``mid``, in that order."""
    rows = store.read("text_embeddings").filter(F.col("model_id") == mid).toPandas()
    by_hash = dict(zip(rows["text_hash"], rows["embedding"], strict=True))
    return np.vstack([np.asarray(by_hash[h], dtype=np.float32) for h in hashes])
