"""End-to-end cost per stage as the events grow, against a single-machine baseline.

    .venv/bin/python benchmarks/scale.py [--events 100000 1000000 3000000]
        [--baseline-timeout 900] [--baseline-memory-gb 16] [--write benchmarks/RESULTS.md]

For each size, generated events (``usersegments.testing.synthetic``, about 21 per user, the
planted interest areas, 2% bad rows) are written as Parquet. Then:

- **usersegments**: ``usersegments run --config conf/local.yaml`` in a fresh process
  (local mode on every core, delta-rs), exactly what a user runs. Stage seconds come
  from its ``run_metrics`` table; peak memory is sampled from /proc every 0.25 s over
  the whole process tree (Python driver, Spark's JVM, Python workers), with the JVM's
  own peak beside it.
- **baseline**: the fair single-machine way, on the same file: pandas reads and
  cleans, sentence-transformers embeds each distinct text once (batch 128, the same
  MiniLM weights), user means come from one sparse product, scikit-learn
  MiniBatchKMeans makes usersegments' number of coarse clusters and
  AgglomerativeClustering (ward) the fine segments inside each, at usersegments'
  ``cluster.sub.target_size``.
  It runs in its own process under a wall-clock limit and an address-space limit, and
  reports how far it got when it runs out of either.

Prints one table and, with ``--write``, writes it to a Markdown file with the command,
the machine and the date. The growth column is the time ratio per 10x events implied
by consecutive sizes: ``(t2 / t1) ** (1 / log10(n2 / n1))``, 10 being linear.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from usersegments.config import load_config
from usersegments.stages import RUN, stages_of

REPO = Path(__file__).resolve().parents[1]
EVENTS_PER_USER = 21.3  # what the generator's defaults make on average
# The stages of `usersegments run`, each its own column, from the registry (a new stage,
# e.g. interests, is measured without touching this file).
STAGES = stages_of(RUN)
# The stages whose work grows with the number of events or users; embed is bounded by
# the number of distinct texts, which a catalog caps (see the notes under the table).
# interests runs Ward once per user over at most interests.max_events_per_user events.
LINEAR_STAGES = ("ingest", "profile", "cluster", "interests", "label", "recommend")


# ---------------------------------------------------------------------------
# Measuring a process tree's memory


class TreeMemory(threading.Thread):
    """Samples the resident memory of a process and all its descendants."""

    def __init__(self, pid: int, every_s: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.pid, self.every_s = pid, every_s
        self.peak_total = 0
        self.peak_jvm = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            total = jvm = 0
            for pid in _descendants(self.pid):
                rss = _rss_bytes(pid)
                total += rss
                if _is_java(pid):
                    jvm += rss
            self.peak_total = max(self.peak_total, total)
            self.peak_jvm = max(self.peak_jvm, jvm)
            self._halt.wait(self.every_s)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def _rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _is_java(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].endswith(b"java")
    except OSError:
        return False


# ---------------------------------------------------------------------------
# usersegments end to end


def run_usersegments(paths: dict[str, str], root: Path, overrides: list[str]) -> dict:
    """``usersegments run`` in a fresh process; stage seconds, wall time, peak memory,
    and the coarse k and fine-segment target size it ran with (the baseline's too)."""
    command = [
        sys.executable,
        "-m",
        "usersegments",
        "run",
        "--config",
        str(REPO / "conf" / "local.yaml"),
        "--output",
        str(root),
        "--events",
        paths["events_parquet"],
        "--items",
        paths["items"],
        *[arg for o in ["spark.ui=off", *overrides] for arg in ("--set", o)],
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    started = time.perf_counter()
    with open(root.parent / "usersegments.log", "w") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        memory = TreeMemory(process.pid)
        memory.start()
        code = process.wait()
        memory.stop()
    wall = time.perf_counter() - started
    if code != 0:
        tail = (root.parent / "usersegments.log").read_text()[-3000:]
        raise SystemExit(f"usersegments run exited {code}:\n{tail}")
    from deltalake import DeltaTable

    metrics = DeltaTable(str(root / "run_metrics")).to_pandas()
    seconds = metrics[metrics["metric"] == "seconds"].set_index("stage")["value"].to_dict()
    ingest = metrics[metrics["stage"] == "ingest"].set_index("metric")["value"].to_dict()
    embed = metrics[metrics["stage"] == "embed"].set_index("metric")["value"].to_dict()
    cluster = metrics[metrics["stage"] == "cluster"].set_index("metric")["value"].to_dict()
    cfg = load_config(REPO / "conf" / "local.yaml", ["spark.ui=off", *overrides])
    backend = re.search(r"\(backend ([\w-]+)\)", (root.parent / "usersegments.log").read_text())
    return {
        "backend": backend.group(1) if backend else "?",
        "k": int(cluster["k"]),
        "target_size": int(cfg.cluster.sub.target_size or 50),
        "stages": {s: float(seconds.get(s, 0.0)) for s in STAGES},
        "wall_s": wall,
        "peak_tree_gb": memory.peak_total / 2**30,
        "peak_jvm_gb": memory.peak_jvm / 2**30,
        "rows_read": int(ingest["rows_read"]),
        "accepted": int(ingest["accepted"]),
        "distinct_texts": int(embed["distinct_texts"]),
        "users": int(DeltaTable(str(root / "user_profiles")).to_pyarrow_table().num_rows),
    }


# ---------------------------------------------------------------------------
# The single-machine baseline (runs in a child process: --baseline-child)


def baseline_child(events_path: str, items_path: str, k: int, target_size: int) -> None:
    """The fair single-machine way, step by step; one JSON line per finished step."""

    def done(step: str, t0: float, **extra) -> float:
        print(json.dumps({"step": step, "seconds": time.perf_counter() - t0, **extra}), flush=True)
        return time.perf_counter()

    t = time.perf_counter()
    import numpy as np
    import pandas as pd

    frame = pd.read_parquet(events_path, columns=["user_id", "event_time", "item_id", "text"])
    # The text usersegments embeds (input.text_source: item_then_event): the catalog's item
    # text, then " | " and the event's own text unless empty or the same; so both sides
    # embed the same distinct texts.
    items = pd.read_parquet(items_path, columns=["item_id", "text"])
    frame = frame.merge(items.rename(columns={"text": "item_text"}), on="item_id", how="left")
    item_text = frame["item_text"].str.strip().replace("", None)
    own_text = frame["text"].str.strip().replace("", None)
    both = item_text.notna() & own_text.notna() & (item_text.str.lower() != own_text.str.lower())
    frame["text"] = item_text.fillna(own_text).where(~both, item_text + " | " + own_text)
    frame = frame.drop(columns=["item_id", "item_text"])
    frame["event_time"] = pd.to_datetime(
        frame["event_time"], utc=True, errors="coerce", format="mixed"
    )
    frame["text"] = frame["text"].str.strip()
    frame = frame.dropna(subset=["user_id", "event_time", "text"])
    frame = frame[frame["text"] != ""].drop_duplicates()
    t = done("ingest", t, rows=len(frame))

    from scipy import sparse
    from sentence_transformers import SentenceTransformer

    from usersegments.embed import DEFAULT_MODEL, resolve_model_path

    # Each distinct text once, as any engineer would write it.
    text_codes, texts = pd.factorize(frame["text"])
    model = SentenceTransformer(resolve_model_path(DEFAULT_MODEL), device="cpu")
    vectors = model.encode(
        list(texts), batch_size=128, normalize_embeddings=True, convert_to_numpy=True
    )
    t = done("embed", t, texts=len(texts))

    # User means: a sparse users x texts count matrix times the text vectors.
    user_codes, users = pd.factorize(frame["user_id"])
    counts = sparse.csr_matrix(
        (np.ones(len(frame), dtype=np.float32), (user_codes, text_codes)),
        shape=(len(users), len(texts)),
    )
    profiles = np.asarray(counts @ vectors, dtype=np.float64)
    profiles /= np.maximum(np.linalg.norm(profiles, axis=1, keepdims=True), 1e-12)
    t = done("profile", t, users=len(users))

    from sklearn.cluster import AgglomerativeClustering, MiniBatchKMeans

    coarse = MiniBatchKMeans(n_clusters=k, n_init=3, batch_size=4096, random_state=0)
    labels = coarse.fit_predict(profiles)
    segments = 0
    for cluster in range(k):
        members = profiles[labels == cluster]
        n = max(1, min(len(members), round(len(members) / target_size)))
        if len(members) > 1 and n > 1:
            AgglomerativeClustering(n_clusters=n, linkage="ward").fit(members)
        segments += n
    done("cluster", t, segments=segments)


def run_baseline(
    events_path: str, items_path: str, timeout_s: float, memory_gb: float, k: int, target: int
) -> dict:
    """The baseline under a wall-clock and an address-space limit: seconds per step and
    where it stopped (``finished``, ``out of time in <step>``, ``out of memory in <step>``)."""
    command = [
        sys.executable,
        __file__,
        "--baseline-child",
        events_path,
        "--baseline-items",
        items_path,
        "--k",
        str(k),
        "--baseline-target-size",
        str(target),
    ]
    limit = int(memory_gb * 2**30)

    def cap_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=cap_memory,
    )
    steps: dict[str, float] = {}
    reader = threading.Thread(target=lambda: _read_steps(process, steps), daemon=True)
    reader.start()
    memory = TreeMemory(process.pid)
    memory.start()
    started = time.perf_counter()
    try:
        process.wait(timeout=timeout_s)
        outcome = "finished" if process.returncode == 0 else None
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        outcome = f"out of time in {_next_step(steps)} (limit {timeout_s:.0f} s)"
    memory.stop()
    reader.join(timeout=5)
    if outcome is None:
        err = process.stderr.read() if process.stderr else ""
        kind = "out of memory" if "MemoryError" in err or "alloc" in err.lower() else "failed"
        outcome = f"{kind} in {_next_step(steps)} (limit {memory_gb:g} GB address space)"
        if kind == "failed":
            outcome += ": " + err.strip().splitlines()[-1][:200] if err.strip() else ""
    return {
        "k": k,
        "steps": steps,
        "outcome": outcome,
        "wall_s": time.perf_counter() - started,
        "peak_tree_gb": memory.peak_total / 2**30,
    }


def _read_steps(process: subprocess.Popen, steps: dict[str, float]) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("{"):
            record = json.loads(line)
            steps[record["step"]] = record["seconds"]


def _next_step(steps: dict[str, float]) -> str:
    order = ("ingest", "embed", "profile", "cluster")
    return next((s for s in order if s not in steps), "cluster")


# ---------------------------------------------------------------------------
# Reporting


def growth_per_10x(n1: int, t1: float, n2: int, t2: float) -> float:
    """The time ratio per 10x events implied by two sizes (10 = linear)."""
    if t1 <= 0 or n2 <= n1:
        return float("nan")
    return (t2 / t1) ** (1.0 / math.log10(n2 / n1))


def machine() -> str:
    """The machine in one line: CPU model, cores, memory, OS, Python, Java."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    java = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr
    java_line = java.splitlines()[0] if java else "java not found"
    return (
        f"{model}, {os.cpu_count()} cores, {memory_gb:.0f} GiB RAM, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}, {java_line}"
    )


def heading(title: str, command: str) -> list[str]:
    """A results section's first lines: its title, the command, the machine and the date."""
    return [
        title,
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {machine()}",
        "",
        f"Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        "",
    ]


def render(results: list[dict], command: str) -> str:
    """The Markdown report: one row per size for each system, then the growth rows."""
    lines = [
        *heading("# Scale: usersegments end to end against a single-machine baseline", command),
        "## usersegments (`usersegments run --config conf/local.yaml`, local mode, "
        + "/".join(sorted({r["usersegments"]["backend"] for r in results}))
        + ")",
        "",
        "| events | users | distinct texts | "
        + " | ".join(STAGES)
        + " | total (stages) | wall (process) | peak memory (tree / JVM) |",
        "|---:|---:|---:|" + "---:|" * len(STAGES) + "---:|---:|---:|",
    ]
    for r in results:
        u = r["usersegments"]
        stages = " | ".join(f"{u['stages'][s]:.1f} s" for s in STAGES)
        lines.append(
            f"| {u['rows_read']:,} | {u['users']:,} | {u['distinct_texts']:,} | {stages} "
            f"| {sum(u['stages'].values()):.1f} s"
            f" | {u['wall_s']:.1f} s | {u['peak_tree_gb']:.1f} / {u['peak_jvm_gb']:.1f} GB |"
        )
    lines += [
        "",
        "Time ratio per 10x events between consecutive sizes (10 = linear; the target for "
        "the linear stages is at most 12):",
        "",
        "| from -> to | " + " | ".join(STAGES) + " | linear stages | total | wall |",
        "|---|" + "---:|" * (len(STAGES) + 3),
    ]
    for a, b in zip(results, results[1:], strict=False):
        ua, ub = a["usersegments"], b["usersegments"]
        na, nb = ua["rows_read"], ub["rows_read"]
        cells = [growth_per_10x(na, ua["stages"][s], nb, ub["stages"][s]) for s in STAGES]
        linear_a = sum(ua["stages"][s] for s in LINEAR_STAGES)
        linear_b = sum(ub["stages"][s] for s in LINEAR_STAGES)
        cells += [
            growth_per_10x(na, linear_a, nb, linear_b),
            growth_per_10x(na, sum(ua["stages"].values()), nb, sum(ub["stages"].values())),
            growth_per_10x(na, ua["wall_s"], nb, ub["wall_s"]),
        ]
        lines.append(f"| {na:,} -> {nb:,} | " + " | ".join(f"{c:.1f}x" for c in cells) + " |")
    lines += [
        "",
        "## Baseline (pandas + sentence-transformers + scikit-learn, one process)",
        "",
        "| events | k | ingest | embed | profile | cluster | outcome | wall | peak memory "
        "| usersegments / baseline (wall) |",
        "|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for r in results:
        b = r["baseline"]
        if b is None:
            lines.append(
                f"| {r['usersegments']['rows_read']:,} | | | | | | not run: a smaller size "
                "already ran out of time or memory | | | |"
            )
            continue
        cells = [
            f"{b['steps'][s]:.1f} s" if s in b["steps"] else "-"
            for s in ("ingest", "embed", "profile", "cluster")
        ]
        u = r["usersegments"]
        ratio = f"{u['wall_s'] / b['wall_s']:.2f}" if b["outcome"] == "finished" else "-"
        lines.append(
            f"| {u['rows_read']:,} | {b['k']} | "
            + " | ".join(cells)
            + f" | {b['outcome']} | {b['wall_s']:.1f} s | {b['peak_tree_gb']:.1f} GB | {ratio} |"
        )
    lines += ["", *NOTES]
    return "\n".join(lines) + "\n"


NOTES = [
    "## Reading the figures",
    "",
    "- Stage seconds are the `seconds` metric of each stage in `run_metrics`; the wall "
    "time adds process start, Spark's JVM and the model's load.",
    "- **embed follows distinct texts, not events**: it embeds each distinct text once "
    "(cached by hash). The generator draws item texts from a fixed catalog and search "
    "phrases from a combinatorial vocabulary, so distinct texts grow slower than events "
    "(the embed stage logs how many), and embed time grows "
    "with them: almost all of it is the model running on the CPU.",
    "- **interests** runs Ward per user (`frames.apply_per_key`: one `mapInPandas` over "
    "user-sorted partitions) over each user's most recent "
    "`interests.max_events_per_user` events: linear in users, each group bounded.",
    "- **report** grows little: its map samples `report.map_sample` users; it still "
    "reads the tables for counts and item texts.",
    "- **maintain** (compaction, checkpoint, vacuum) costs little on a fresh store; "
    "`update_load.py` below shows it over many updates.",
    "- The smallest size carries fixed costs (Spark jobs of small data, the clustering's k "
    "selection on a bounded sample), so growth from it reads below 10.",
    "- The baseline is the fair single-machine way: each distinct text embedded once "
    "(sentence-transformers, batch 128, the same MiniLM weights), user means (a sparse "
    "users x texts product), scikit-learn MiniBatchKMeans with usersegments' coarse k and "
    "Ward agglomerative clustering inside each cluster at usersegments' "
    "`cluster.sub.target_size`. It holds every vector in one process's memory. Its "
    "outcome column says where it stopped under this run's limits (`--baseline-timeout`, "
    "`--baseline-memory-gb`); a size after one it could not finish is not tried. (Tables "
    "before 2026-12-03 embedded every event's text in the baseline.)",
]


def main(argv: list[str] | None = None) -> int:
    """Run every size, print the table, write it with --write."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, nargs="+", default=[100_000, 1_000_000, 3_000_000])
    parser.add_argument("--baseline-timeout", type=float, default=900.0, metavar="S")
    parser.add_argument("--baseline-memory-gb", type=float, default=16.0, metavar="GB")
    parser.add_argument(
        "--k", type=int, help="coarse clusters of the baseline (default: usersegments' k)"
    )
    parser.add_argument("--baseline-target-size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V")
    parser.add_argument("--write", metavar="PATH", help="write the Markdown table here")
    parser.add_argument("--workdir", metavar="DIR", help="keep data and stores here")
    parser.add_argument("--baseline-child", metavar="EVENTS", help=argparse.SUPPRESS)
    parser.add_argument("--baseline-items", metavar="ITEMS", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.baseline_child:
        baseline_child(args.baseline_child, args.baseline_items, args.k, args.baseline_target_size)
        return 0

    from usersegments.testing.synthetic import GeneratorSettings, generate, write

    command = "python benchmarks/scale.py " + " ".join(argv if argv is not None else sys.argv[1:])
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="usersegments-scale-"))
    results: list[dict] = []
    baseline_gave_up = False
    for events in sorted(args.events):
        folder = workdir / f"events-{events}"
        shutil.rmtree(folder, ignore_errors=True)
        t0 = time.perf_counter()
        users = max(50, round(events / EVENTS_PER_USER))
        paths = write(generate(GeneratorSettings(users=users, seed=17)), folder / "input")
        print(f"[{events:,}] generated {users:,} users in {time.perf_counter() - t0:.0f} s")
        ours = run_usersegments(paths, folder / "store", args.overrides)
        print(
            f"[{events:,}] usersegments: {sum(ours['stages'].values()):.1f} s in stages, "
            f"{ours['wall_s']:.1f} s wall, peak {ours['peak_tree_gb']:.1f} GB"
        )
        theirs = None
        if not baseline_gave_up:
            theirs = run_baseline(
                paths["events_parquet"],
                paths["items"],
                args.baseline_timeout,
                args.baseline_memory_gb,
                args.k or ours["k"],
                ours["target_size"],
            )
            baseline_gave_up = theirs["outcome"] != "finished"
            print(f"[{events:,}] baseline: {theirs['outcome']}, {theirs['wall_s']:.1f} s wall")
        results.append({"usersegments": ours, "baseline": theirs})
        shutil.rmtree(folder / "store", ignore_errors=True)
    (workdir / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    text = render(results, command)
    print(text)
    if args.write:
        Path(args.write).write_text(text, encoding="utf-8")
        print(f"written to {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
