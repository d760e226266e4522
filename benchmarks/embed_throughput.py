"""Embedding throughput: baselines, our embedder, and the Spark stage, on the same texts.

    .venv/bin/python benchmarks/embed_throughput.py [--texts 3000] [--threads 2]

Prints texts/s for
  (a) a seed-style baseline: every text padded to 128 tokens, batch 8, [CLS] vector;
  (b) sentence_transformers.SentenceTransformer.encode (what a user would pick);
  (c) our TextEmbedder called directly, torch fp32 (length-sorted micro-batches, mean
      pooling);
  (d) the Spark ``embed`` stage end to end with the default ``embed.runtime: auto``
      (local mode; ONNX Runtime int8 on a CPU), against the direct loop of the runtime
      it resolved to ((g) on a CPU, (c) otherwise): the job that runs the model (on a
      first run it also stages the vectors for the Delta commit) and the whole stage;
  (e) (c) with embed.quantize=int8 (torch dynamic quantization);
  (f) (c) with embed.runtime=onnxruntime (the model exported to ONNX, fp32);
  (g) (f) with embed.quantize=int8 (ONNX Runtime dynamic quantization);
  each of (e)-(g) with its cosine to the fp32 vectors of (c);
plus the machine's measured fp32 matmul GFLOP/s and (c) as a share of that FLOP
limit (non-embedding parameters x 2 x real tokens per second).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from usersegments.config import load_config  # noqa: E402
from usersegments.embed import (  # noqa: E402
    EmbedderSpec,
    TextEmbedder,
    resolve_model_path,
    resolve_runtime,
)
from usersegments.testing.synthetic import GeneratorSettings, generate  # noqa: E402


def realistic_texts(n: int, seed: int = 5) -> list[str]:
    """Distinct texts as events carry them: item descriptions, queries, reviews."""
    data = generate(GeneratorSettings(users=max(200, n // 4), seed=seed))
    texts = list(dict.fromkeys(data.items["text"].tolist() + data.events["text"].dropna().tolist()))
    rng = np.random.default_rng(seed)
    rng.shuffle(texts)
    return [t for t in texts if t.strip()][:n]


def timed(fn, repeats: int) -> float:
    """Best wall time of ``repeats`` calls (the machine is shared and noisy)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def matmul_gflops(threads: int, size: int = 1536, repeats: int = 10) -> float:
    """Measured fp32 matrix-multiply GFLOP/s of this machine with ``threads`` threads."""
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    seconds = timed(lambda: torch.mm(a, b), repeats)
    return 2 * size**3 / seconds / 1e9


def seed_baseline(texts: list[str], path: str) -> None:
    """The way first attempts look: fixed padding to 128, batch 8, [CLS] token."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    with torch.no_grad():
        for i in range(0, len(texts), 8):
            batch = tokenizer(
                texts[i : i + 8],
                padding="max_length",
                truncation=True,
                max_length=128,
                return_tensors="pt",
            )
            model(**batch).last_hidden_state[:, 0].numpy()


def spark_stage(texts: list[str]) -> tuple[float, float]:
    """(texts/s of the model's job, seconds of the whole stage) with the default config, run
    as the pipeline runs it: the texts are ingested from a CSV first, then embedded in
    the same local session."""
    import csv

    from usersegments.embed import run_embed
    from usersegments.ingest import run_ingest
    from usersegments.runlog import RunLog
    from usersegments.session import build_session
    from usersegments.store import TableStore

    root = tempfile.mkdtemp(prefix="embed-bench-")
    events = os.path.join(root, "events.csv")
    with open(events, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["user_id", "event_time", "text"])
        writer.writerows((f"u{i % 100}", "2026-01-01T00:00:00Z", t) for i, t in enumerate(texts))
    cfg = load_config(
        overrides=[
            "spark.master=local[2]",
            "spark.ui=off",
            "spark.shuffle_partitions=2",
            "spark.log_level=ERROR",
        ],
        output=os.path.join(root, "store"),
    )
    spark = build_session(cfg)
    store = TableStore.from_config(spark, cfg)
    run = RunLog(spark, store, cfg, "bench")
    run_ingest(spark, store, cfg, run, events=[events])
    t0 = time.perf_counter()
    result = run_embed(spark, store, cfg, run)
    stage_seconds = time.perf_counter() - t0
    spark.stop()
    if result.metrics["texts_embedded"] != len(texts):
        raise RuntimeError(f"embedded {result.metrics['texts_embedded']} of {len(texts)} texts")
    return result.metrics["texts_per_second"], stage_seconds


def main(argv: list[str] | None = None) -> int:
    """Run every measurement and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", type=int, default=3000)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip-spark", action="store_true")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    texts = realistic_texts(args.texts)
    cfg = load_config(overrides=["embed.runtime=torch"])
    default = resolve_runtime(load_config().embed)
    path = resolve_model_path(cfg.embed.model)
    ours = TextEmbedder(EmbedderSpec.from_config(cfg.embed, args.threads)).load()
    ours.embed(texts[:64])
    tokens = sum(
        len(ids)
        for ids in ours.tokenizer_(texts, truncation=True, max_length=cfg.embed.max_length)[
            "input_ids"
        ]
    )
    params = sum(
        p.numel() for n, p in ours.model_.named_parameters() if not n.startswith("embeddings.")
    )
    results: list[tuple[str, float]] = []

    a_s = timed(lambda: seed_baseline(texts, path), 1)
    results.append(("(a) seed baseline: pad 128, batch 8, CLS", len(texts) / a_s))

    from sentence_transformers import SentenceTransformer

    st_model = SentenceTransformer(path, device="cpu")
    st_model.encode(texts[:64])
    b_s = timed(lambda: st_model.encode(texts, normalize_embeddings=True), args.repeats)
    reference = st_model.encode(texts, normalize_embeddings=True)
    results.append(("(b) sentence-transformers encode", len(texts) / b_s))

    c_s = timed(lambda: ours.embed(texts), args.repeats)
    vectors = ours.embed(texts)
    agreement = float((vectors * reference).sum(axis=1).min())
    results.append(("(c) usersegments TextEmbedder, direct", len(texts) / c_s))

    if not args.skip_spark:
        d_rate, d_stage = spark_stage(texts)
        label = f"(d) embed stage in Spark, {default.runtime} {default.quantize} (model's job)"
        results.append((label, d_rate))
        results.append(("    whole stage incl. Delta merge", len(texts) / d_stage))

    variants = {
        "(e) usersegments TextEmbedder, int8 (torch)": [
            "embed.runtime=torch",
            "embed.quantize=int8",
        ],
        "(f) usersegments TextEmbedder, ONNX Runtime fp32": [
            "embed.runtime=onnxruntime",
            "embed.quantize=none",
        ],
        "(g) usersegments TextEmbedder, ONNX Runtime int8": [
            "embed.runtime=onnxruntime",
            "embed.quantize=int8",
        ],
    }
    cosines: dict[str, np.ndarray] = {}
    for name, overrides in variants.items():
        variant_cfg = load_config(overrides=[*overrides, "embed.device=cpu"]).embed
        variant = TextEmbedder(EmbedderSpec.from_config(variant_cfg, args.threads)).load()
        variant.embed(texts[:64])
        seconds = timed(lambda variant=variant: variant.embed(texts), args.repeats)
        cosines[name] = (variant.embed(texts) * vectors).sum(axis=1)
        results.append((name, len(texts) / seconds))

    gflops = matmul_gflops(args.threads)
    achieved = 2 * params * tokens / c_s / 1e9

    print(
        f"# embed throughput on {len(texts)} texts ({tokens / len(texts):.1f} tokens/text), "
        f"{args.threads} threads, {platform.processor() or platform.machine()}, "
        f"torch {torch.__version__}, python {sys.version.split()[0]}"
    )
    print(f"# command: {' '.join([os.path.basename(sys.executable), *sys.argv])}")
    print(f"{'variant':52} {'texts/s':>10} {'vs (b)':>8}")
    b_rate = len(texts) / b_s
    for name, rate in results:
        print(f"{name:52} {rate:10.1f} {rate / b_rate:7.2f}x")
    c_rate = len(texts) / c_s
    print()
    print(
        f"machine fp32 matmul: {gflops:.1f} GFLOP/s; (c) achieves {achieved:.1f} GFLOP/s "
        f"= {100 * achieved / gflops:.0f}% of it ({params / 1e6:.1f}M non-embedding params)"
    )
    print(f"(c) vs (b): {c_rate / b_rate:.2f}x   min cosine (c) vs (b): {agreement:.6f}")
    rates = dict(results)
    if not args.skip_spark:
        onnx = default.runtime == "onnxruntime"
        direct = rates[list(variants)[2]] if onnx else c_rate
        print(
            f"(d) vs the direct loop of its runtime ({'(g)' if onnx else '(c)'}): model's job "
            f"{results[3][1] / direct:.2f}x, whole stage {results[4][1] / direct:.2f}x"
        )
    for name, cos in cosines.items():
        print(
            f"{name[:3]} vs (c): {rates[name] / c_rate:.2f}x   cosine to (c): "
            f"mean {cos.mean():.4f}, min {cos.min():.4f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
