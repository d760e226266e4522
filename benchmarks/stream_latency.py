"""What ``usersegments stream`` costs: landing-to-update latency and per-batch time.

    .venv/bin/python benchmarks/stream_latency.py [--users 400] [--batches 50]
        [--latency-files 3] [--interval "10 seconds"] [--set KEY=VALUE ...]
        [--write RESULTS.md]

Generates ``--users`` users (real texts, real MiniLM embeddings, local mode,
delta-rs) and holds the events of the last days back as ``--batches`` small files
(each a slice of time). Everything else goes through one full run (the seed, no
report). Then, each on a copy of the seeded store:

1. baseline: the batch command, ``usersegments update`` over one small file, and
   over all of them at once;
2. per-batch time: ``stream`` with ``availableNow`` and one file per micro-batch over
   every file: seconds of each batch, the mean of the first and the last ten and
   their ratio (flat: near 1);
3. latency: ``stream`` with ``processingTime`` (``--interval``) in a subprocess; the
   files land one at a time, each after the previous one's batch committed; the time
   from a file landing to the commit of the batch that took it (its users' segments,
   history and recommendations are written before that commit).

The report stage is left out everywhere (``stream.run_report=false``). Prints every
figure beside the baseline; ``--write`` replaces the "Streaming" section of RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from usersegments.config import load_config
from usersegments.pipeline import finishing, open_context, run_all, update_all
from usersegments.stages import RUN, stages_of
from usersegments.stream import run_stream
from usersegments.testing.synthetic import GeneratorSettings, generate, generated_times

REPO = Path(__file__).resolve().parents[1]
SETTINGS = [
    "stream.run_report=false",
    "spark.ui=off",
    "spark.log_level=ERROR",
    "update.recluster_threshold=1.0",  # every batch the same work: no re-cluster
]
# Settings for a log of a few hundred users (the defaults search k in 6..20).
SMALL = ["cluster.k=4", "privacy.min_segment_size=5", "cluster.sub.target_size=10"]
SECTION = "## Streaming"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=400)
    parser.add_argument("--batches", type=int, default=50)
    parser.add_argument("--latency-files", type=int, default=3)
    parser.add_argument("--interval", default="10 seconds")
    parser.add_argument("--master", default="local[*]")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help=f"settings of every run (default: {' '.join(SMALL)})",
    )
    parser.add_argument("--write", metavar="RESULTS.md")
    return parser.parse_args()


def prepare(users: int, batches: int, workdir: Path) -> tuple[Path, list[Path], Path]:
    """(seed events file, the small batch files, the item catalog)."""
    data = generate(GeneratorSettings(users=users, seed=11))
    events = data.events.drop(columns=["_bad"])
    times = generated_times(data.events)
    start, end = times.min(), times.max()
    cut = start + (end - start) * 0.8
    later = (times >= cut).fillna(False).to_numpy()
    seed = workdir / "seed.jsonl"
    events[~later].to_json(seed, orient="records", lines=True)
    recent = events[later].assign(_t=times[later].to_numpy()).sort_values("_t")
    files = []
    for number, part in enumerate(_slices(recent, batches)):
        path = workdir / "batches" / f"events-{number:03d}.jsonl"
        path.parent.mkdir(exist_ok=True)
        part.drop(columns=["_t"]).to_json(path, orient="records", lines=True)
        files.append(path)
    items = workdir / "items.parquet"
    data.items.to_parquet(items, index=False)
    return seed, files, items


def _slices(frame: pd.DataFrame, parts: int) -> list[pd.DataFrame]:
    size = max(1, len(frame) // parts)
    return [frame.iloc[i * size : (i + 1) * size if i < parts - 1 else None] for i in range(parts)]


EXTRA: list[str] = []


def config(root: Path, master: str, *extra: str):
    overrides = [*SETTINGS, *EXTRA, f"spark.master={master}", *extra]
    return load_config(overrides=overrides, output=str(root))


def seed_store(root: Path, master: str, seed: Path, items: Path) -> float:
    """The full run (no report) over the seed events; its seconds."""
    ctx = open_context(config(root, master), "run")
    t0 = time.perf_counter()
    with finishing(ctx):
        stages = [s for s in stages_of(RUN) if s != "report"]
        run_all(ctx, [str(seed)], str(items), stages=stages)
    return time.perf_counter() - t0


def batch_update(root: Path, master: str, files: list[Path], items: Path) -> float:
    """``usersegments update`` (no report) over ``files`` in one run; its seconds."""
    ctx = open_context(config(root, master), "update")
    t0 = time.perf_counter()
    with finishing(ctx):
        update_all(ctx, [str(f) for f in files], str(items), recluster=False, skip=("report",))
    return time.perf_counter() - t0


def per_batch(root: Path, master: str, files: list[Path], items: Path) -> list[float]:
    """``stream`` (availableNow, one file per batch) over every file; seconds per batch."""
    landing = root.parent / "landing-all"
    land_all(files, landing)
    cfg = config(root, master, "stream.max_files_per_trigger=1")
    summary = run_stream(cfg, str(landing), str(items))
    return [b.seconds for b in summary.batches]


def land_all(files: list[Path], landing: Path) -> None:
    landing.mkdir(parents=True, exist_ok=True)
    now = time.time()
    for number, path in enumerate(files):
        shutil.copy(path, landing / path.name)
        os.utime(landing / path.name, (now - len(files) + number,) * 2)


def latency(root: Path, master: str, files: list[Path], items: Path, interval: str) -> list[float]:
    """Seconds from each file landing to the commit of its batch (processingTime)."""
    landing = root.parent / "landing-live"
    landing.mkdir()
    overrides = [*SETTINGS, *EXTRA, f"spark.master={master}", f"stream.interval={interval}"]
    command = [sys.executable, "-m", "usersegments", "stream", "--output", str(root)]
    command += [a for o in overrides for a in ("--set", o)]
    command += ["--source", str(landing), "--items", str(items), "--trigger", "processingTime"]
    log = open(root.parent / "stream.log", "wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    commits = root / "checkpoints" / "usersegments" / "commits"
    figures = []
    try:
        # The query has started (its checkpoint's metadata is written) before anything lands.
        while not (commits.parent / "metadata").exists():
            if process.poll() is not None:
                raise RuntimeError(f"the stream ended; see {log.name}")
            time.sleep(0.1)
        for number, path in enumerate(files):
            landed = time.monotonic()
            shutil.copy(path, landing / path.name)
            while not (commits / str(number)).exists():
                if process.poll() is not None:
                    raise RuntimeError(f"the stream ended; see {log.name}")
                time.sleep(0.1)
            figures.append(time.monotonic() - landed)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=900)
    return figures


def main() -> None:
    args = parse_args()
    EXTRA[:] = SMALL if args.overrides is None else args.overrides
    workdir = Path(tempfile.mkdtemp(prefix="stream-bench-"))
    seed, files, items = prepare(args.users, args.batches, workdir)
    seeded = workdir / "seeded"
    seed_seconds = seed_store(seeded, args.master, seed, items)

    def fresh(name: str) -> Path:
        target = workdir / name / "store"
        shutil.copytree(seeded, target)
        return target

    one_update = batch_update(fresh("update-one"), args.master, files[:1], items)
    all_update = batch_update(fresh("update-all"), args.master, files, items)
    batches = per_batch(fresh("stream-all"), args.master, files, items)
    waits = latency(
        fresh("stream-live"), args.master, files[: args.latency_files], items, args.interval
    )
    lines = report(args, seed_seconds, one_update, all_update, batches, waits, files)
    print("\n".join(lines))
    if args.write:
        write_section(Path(args.write), lines)
    shutil.rmtree(workdir, ignore_errors=True)


def report(args, seed_seconds, one_update, all_update, batches, waits, files) -> list[str]:
    rows = sum(len(f.read_text().splitlines()) for f in files)
    head = statistics.mean(batches[:10])
    tail = statistics.mean(batches[-10:])
    command = (
        f"`.venv/bin/python benchmarks/stream_latency.py --users {args.users} --batches "
        f"{args.batches} --latency-files {args.latency_files} --interval '{args.interval}' "
        f"--master '{args.master}'" + "".join(f" --set {o}" for o in EXTRA) + "`"
    )
    return [
        SECTION,
        "",
        f"{command} on {platform.machine()} with {os.cpu_count()} cores, local mode, delta-rs, "
        f"no report stage. Seed: a full run in {seed_seconds:.1f}s; then {len(files)} small "
        f"files ({rows} rows, ~{rows // len(files)} per file).",
        "",
        "| figure | seconds |",
        "|---|---|",
        f"| baseline: `update` over one file (one run) | {one_update:.1f} |",
        f"| baseline: `update` over all {len(files)} files (one run) | {all_update:.1f} |",
        f"| stream, availableNow, one file per batch: mean of all {len(batches)} batches "
        f"| {statistics.mean(batches):.1f} |",
        f"| ... first 10 batches / last 10 batches (ratio) | {head:.1f} / {tail:.1f} "
        f"({tail / head:.2f}) |",
        f"| ... slowest / fastest batch | {max(batches):.1f} / {min(batches):.1f} |",
        f"| stream, processingTime {args.interval}: landing -> batch committed "
        f"(mean of {len(waits)}) | {statistics.mean(waits):.1f} |",
        "",
        "Per batch: " + ", ".join(f"{s:.1f}" for s in batches),
        "",
    ]


def write_section(path: Path, lines: list[str]) -> None:
    """Replace (or append) the Streaming section of ``path``."""
    text = path.read_text(encoding="utf-8")
    before, _, after = text.partition(SECTION)
    rest = after.split("\n## ", 1)[1] if "\n## " in after else None
    body = "\n".join(lines).rstrip() + "\n"
    text = before.rstrip() + "\n\n" + body + (f"\n## {rest}" if rest else "")
    path.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
