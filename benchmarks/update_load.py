"""The update job run many times in a row with small batches: does its time stay flat?

    .venv/bin/python benchmarks/update_load.py [--users 1000] [--updates 20]
        [--maintenance on off] [--write PATH]

Generates ``--users`` users over 60 days; a full ``usersegments run`` takes the first
40 days, then the last 20 days arrive as ``--updates`` consecutive small batches, each
through ``usersegments update`` (ingest, embed, fold, reassign, history, recommend,
report, maintain), in one process and session, as a scheduled job would run them.
For each maintenance setting (``store.maintenance``) it prints, per update: seconds,
rows in the batch, data files in the current versions of all tables, files on disk,
and the flatness figure: mean seconds of the last five updates / the first five.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from scale import machine  # noqa: E402  (benchmarks/ is the script's folder)

from usersegments.config import load_config
from usersegments.pipeline import finishing, open_context, run_all, update_all
from usersegments.testing.synthetic import DEFAULT_END, GeneratorSettings, generate, split_at, write

DAYS, HISTORY_DAYS = 60, 40


def table_files(root: Path) -> tuple[int, int]:
    """(data files in the current versions of every table, data files on disk)."""
    from deltalake import DeltaTable

    current = on_disk = 0
    for log in root.glob("*/_delta_log"):
        current += len(DeltaTable(str(log.parent)).file_uris())
        on_disk += sum(1 for p in log.parent.rglob("*.parquet") if "_delta_log" not in p.parts)
    return current, on_disk


def run_load(users: int, updates: int, maintenance: bool, work: Path) -> list[dict]:
    """One full run, then ``updates`` update runs; a row of figures per update."""
    data = generate(GeneratorSettings(users=users, seed=23, days=DAYS, drift_share=0.1))
    start = DEFAULT_END - timedelta(days=DAYS - HISTORY_DAYS)
    history, rest = split_at(data, start)
    root = work / f"store-maintenance-{'on' if maintenance else 'off'}"
    cfg = load_config(
        str(Path(__file__).resolve().parents[1] / "conf" / "local.yaml"),
        [
            "spark.ui=off",
            "spark.log_level=ERROR",
            f"store.maintenance={str(maintenance).lower()}",
            "update.recluster_threshold=1.0",  # incremental updates only: the load itself
        ],
        str(root),
    )
    paths = write(history, work / "history")
    with finishing(open_context(cfg, "run")) as ctx:
        run_all(ctx, [paths["events_parquet"]], paths["items"])
    rows = []
    step = timedelta(days=DAYS - HISTORY_DAYS) / updates
    for n in range(1, updates + 1):
        batch, rest = split_at(rest, start + step * n) if n < updates else (rest, None)
        batch_paths = write(batch, work / f"batch-{n:02d}")
        t0 = time.perf_counter()
        with finishing(open_context(cfg, "update")) as ctx:
            update_all(ctx, [batch_paths["events_parquet"]], batch_paths["items"], False)
        seconds = time.perf_counter() - t0
        current, on_disk = table_files(root)
        rows.append(
            {
                "update": n,
                "seconds": seconds,
                "rows": len(batch.events),
                "files": current,
                "on_disk": on_disk,
            }
        )
        print(
            f"maintenance {'on' if maintenance else 'off'}: update {n:2d}: {seconds:6.1f} s, "
            f"{len(batch.events):5d} rows, {current:4d} files current, {on_disk:4d} on disk",
            flush=True,
        )
        if rest is None:
            break
    return rows


def flatness(rows: list[dict]) -> float:
    """Mean seconds of the last five updates / mean of the first five."""
    first = [r["seconds"] for r in rows[:5]]
    last = [r["seconds"] for r in rows[-5:]]
    return (sum(last) / len(last)) / (sum(first) / len(first))


def render(results: dict[str, list[dict]], command: str) -> str:
    """The Markdown table of every update under each maintenance setting."""
    settings = list(results)
    header = "| update | " + " | ".join(
        f"seconds ({s}) | files current / on disk ({s})" for s in settings
    )
    lines = [
        "## Load: the update job run many times in a row",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {machine()}",
        "",
        header + " |",
        "|---:|" + "---:|---:|" * len(settings),
    ]
    for i in range(max(len(r) for r in results.values())):
        cells = []
        for s in settings:
            r = results[s][i]
            cells += [f"{r['seconds']:.1f}", f"{r['files']} / {r['on_disk']}"]
        lines.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Flatness (mean of the last five updates / the first five): "
        + ", ".join(f"maintenance {s}: {flatness(results[s]):.2f}" for s in settings),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    """Run the load under each maintenance setting and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--updates", type=int, default=20)
    parser.add_argument("--maintenance", nargs="+", choices=["on", "off"], default=["on", "off"])
    parser.add_argument("--write", metavar="PATH", help="append the Markdown table to PATH")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(tempfile.mkdtemp(prefix="usersegments-update-load-"))
    try:
        results = {
            setting: run_load(args.users, args.updates, setting == "on", work / setting)
            for setting in args.maintenance
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = render(results, "python benchmarks/update_load.py " + " ".join(sys.argv[1:]))
    print(text)
    if args.write:
        with open(args.write, "a", encoding="utf-8") as out:
            out.write("\n" + text)
        print(f"appended to {args.write}")


if __name__ == "__main__":
    main()
