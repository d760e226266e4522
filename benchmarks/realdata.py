"""usersegments on real text (20 Newsgroups) against a single-machine reference.

    .venv/bin/python benchmarks/realdata.py [--data ../shared/data/20news]
        [--tuned-config FILE] [--workdir DIR] [--keep] [--write benchmarks/RESULTS.md]

The data (``../shared/data/20news``, see its README.md) is real Usenet posts: each post is
one event and its own item; ``truth.parquet`` gives each poster's main ``group`` (20
newsgroups) and ``area`` (6 areas). The posts are split by time: the earlier period
(``event_time`` before ``--cut``, 1993-04-16) is the log both methods see; the later
period is held out.

- **usersegments**: ``usersegments run`` with the defaults in a fresh process on the
  earlier posts and their catalog rows. If the defaults cannot run on this data (for
  instance ``input.min_time`` rejecting every 1993 row), the script stops, printing the
  error or the reject reasons: no figure from hand-picked settings. The result tables are
  read with delta-rs.
- **reference**: the single-machine way on the same vectors: each user's unit mean of
  their earlier posts' MiniLM vectors (read from usersegments' ``text_embeddings`` through
  the ``events`` table's ``text_hash``: nothing is embedded twice; every event counts
  once, no decay, no event weights, every user with ``--reference-min-events`` posts),
  then scikit-learn ``KMeans`` twice: with k = usersegments' number of coarse clusters
  (its "cluster") and with k = its number of segments (its "segment").

Scores, over the scored users of the data's README (``posts >= 3`` and
``area_share >= 0.8`` in ``truth.parquet``):

- **coverage**: the share of scored users the method puts in a segment (usersegments
  leaves out users with fewer than ``profile.min_events`` earlier events).
- **NMI(cluster, area)**, **NMI(segment, group)** (scikit-learn's arithmetic NMI) and
  **purity** (segment -> group: each segment's most common group, share of users in it),
  all over the scored users that *every* method covers, so the figures compare one
  population.
- **held-out interest fit**: for each user that every method covers and that posts in
  the later period, with ``v`` the unit MiniLM vector of a later post, ``c`` the unit
  centroid of the user's segment, ``g`` the unit mean of the reference's user vectors
  over every user of the earlier period (one ``g`` for all methods)::

      fit(user) = mean over the user's later posts of  cos(v, c) - cos(v, g)
      fit       = mean over users of fit(user)

  i.e. how much closer a user's later posts lie to their segment's centroid than to the
  average user. 0 means the segment says nothing about what the user writes next. Each
  post is its own item, so a recommendation hit rate would mean nothing here. The later
  posts are embedded with usersegments' own embedder and settings, from their text built
  as ingest builds it (the script checks that rebuilding reproduces the stored
  ``text_hash`` of the earlier posts and prints the share that matches). usersegments'
  ``c`` is the stored segment centroid (or the mean of its members' profile vectors when
  a config reduces dimensions); the reference's is its KMeans centre.

Seconds: usersegments' process wall time (stage seconds beside it); the reference's user
means and both KMeans fits (its vectors come from usersegments, so no embedding time).

``--tune`` runs ``usersegments tune`` (defaults, the same earlier posts) and then
usersegments with the ``tuned.yaml`` it writes; ``--tuned-config FILE`` takes an existing
YAML instead. Either adds columns for the tuned run and for the reference at its k, so
the table shows the figures before and after tuning (with tune's seconds in the notes).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scale import heading  # noqa: E402  (benchmarks/ is the script's folder)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "20news"
SECTION = "## Real data: 20news"
MAX_DEFAULT_REJECTED = 0.01  # more rejected rows than this: the defaults did not take the log


@dataclass
class Assignment:
    """One method's result: coarse cluster and segment per user, unit segment centroids."""

    name: str
    users: pd.DataFrame  # user_id, cluster, segment
    centroids: dict[str, np.ndarray]  # segment -> unit vector
    seconds: float
    detail: str = ""
    k: tuple[int, int] = (0, 0)
    settings: list[str] = field(default_factory=list)


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` scaled to unit length (zero rows stay zero)."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


# ---------------------------------------------------------------------------
# The data, split by time


def split(data: Path, cut: str, workdir: Path) -> dict:
    """The earlier events and their catalog rows written as Parquet; the later events."""
    events = pd.read_parquet(data / "events.parquet")
    items = pd.read_parquet(data / "items.parquet")
    # ISO-8601 strings of one zone: string order is time order.
    early = events["event_time"].astype(str) < cut
    train, later = events[early], events[~early]
    paths = {"events": workdir / "train_events.parquet", "items": workdir / "train_items.parquet"}
    train.to_parquet(paths["events"], index=False)
    items[items["item_id"].isin(train["item_id"])].to_parquet(paths["items"], index=False)
    print(
        f"data: {len(events):,} posts by {events['user_id'].nunique():,} users; earlier "
        f"period (< {cut}): {len(train):,} posts by {train['user_id'].nunique():,} users; "
        f"held out: {len(later):,} posts by {later['user_id'].nunique():,} users",
        flush=True,
    )
    return {"paths": paths, "later": later, "items": items, "train": train}


# ---------------------------------------------------------------------------
# usersegments


def run_usersegments(
    paths: dict,
    store: Path,
    config: str | None,
    sets: list[str],
    reuse: bool = False,
    subcommand: str = "run",
) -> dict:
    """``usersegments <subcommand>`` (``run`` or ``tune``) in a fresh process on a fresh
    store: exit code, wall seconds, log tail. With ``reuse``, a finished run of the same
    command in ``store`` is kept."""
    command = [sys.executable, "-m", "usersegments", subcommand, "--output", str(store)]
    command += ["--events", str(paths["events"]), "--items", str(paths["items"])]
    command += ["--config", config] if config else []
    command += [arg for s in sets for arg in ("--set", s)]
    log, record = store.parent / f"{store.name}.log", store.parent / f"{store.name}.json"
    if reuse and record.exists():
        done = json.loads(record.read_text())
        # The interpreter's path may be spelt differently from one call to the next.
        if done["command"][1:] == command[1:]:
            print(f"reusing the finished run in {store}", flush=True)
            return {**done, "store": store}
    cache = store.parent / EMBEDDING_CACHE
    if reuse:
        keep_embeddings(store, cache)
    shutil.rmtree(store, ignore_errors=True)
    if reuse and cache.exists():
        # The run's own cache lookup (by model id and text hash) then embeds nothing
        # it embedded before: a rerun measures the stages after embedding.
        shutil.copytree(cache, store / "text_embeddings")
        print(f"text_embeddings seeded from {cache}", flush=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    print(f"running: {' '.join(command[1:])}  (log: {log})", flush=True)
    started = time.perf_counter()
    with open(log, "w") as out:
        code = subprocess.run(command, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - started
    lines = log.read_text(errors="replace").strip().splitlines()
    done = {"command": command, "code": code, "wall_s": wall, "tail": "\n".join(lines[-15:])}
    record.write_text(json.dumps(done), encoding="utf-8")
    if reuse:
        keep_embeddings(store, cache)
    return {**done, "store": store}


# Under --workdir: the text_embeddings table of the latest run, kept for the next one.
EMBEDDING_CACHE = "text_embeddings-cache"


def keep_embeddings(store: Path, cache: Path) -> None:
    """Keep ``store``'s text_embeddings table in ``cache`` (replacing an older copy)."""
    table = store / "text_embeddings"
    if not (table / "_delta_log").exists():
        return
    staged = cache.with_name(cache.name + ".tmp")
    shutil.rmtree(staged, ignore_errors=True)
    shutil.copytree(table, staged)
    shutil.rmtree(cache, ignore_errors=True)
    staged.rename(cache)


def read_table(store: Path, name: str, columns: list[str] | None = None) -> pd.DataFrame:
    """Table ``name`` of a local store (delta-rs, the local default backend)."""
    from deltalake import DeltaTable

    return DeltaTable(str(store / name)).to_pandas(columns=columns)


def defaults_refusal(run: dict) -> str | None:
    """Why a run did not take the log (its error and reject reasons), else None."""
    store = run["store"]
    rejected = ""
    if (store / "events_rejected" / "_delta_log").exists():
        reasons = read_table(store, "events_rejected", ["reject_reason"])["reject_reason"]
        rejected = ", ".join(f"{r}: {n:,}" for r, n in reasons.value_counts().items())
    if not has_segments(run):
        return f"`usersegments run` exited {run['code']} ({last_line(run)})" + (
            f"; rows rejected: {rejected}" if rejected else ""
        )
    metrics = read_table(store, "run_metrics")
    ingest = metrics[metrics["stage"] == "ingest"].set_index("metric")["value"]
    read, accepted = float(ingest.get("rows_read", 0)), float(ingest.get("accepted", 0))
    if read and (read - accepted) / read <= MAX_DEFAULT_REJECTED:
        return None
    return f"ingest accepted {accepted:,.0f} of {read:,.0f} rows (rejected: {rejected})"


def usersegments_with_defaults(
    paths: dict, workdir: Path, sets: list[str], reuse: bool = False
) -> dict:
    """Run with the defaults (+ ``sets``); stop loudly when they refuse the log, since
    figures from hand-picked settings would say nothing about the defaults."""
    run = run_usersegments(paths, workdir / "store-defaults", None, sets, reuse)
    refusal = defaults_refusal(run)
    if refusal is not None:
        raise SystemExit(f"THE DEFAULTS DO NOT RUN ON THIS DATA: {refusal}\n{run['tail']}")
    return {**run, "settings": list(sets)}


def has_segments(run: dict) -> bool:
    """Whether a run got as far as writing ``user_segments`` (what the scores read)."""
    return (run["store"] / "user_segments" / "_delta_log").exists()


def last_line(run: dict) -> str:
    """The last line of a run's log (its error, when it failed)."""
    return run["tail"].splitlines()[-1].strip() if run["tail"].strip() else "no output"


def check_finished(run: dict, what: str) -> str | None:
    """Stop when ``run`` wrote no segments; when it failed after writing them, say so
    loudly and return a note (the segments are scored all the same), else None."""
    if not has_segments(run):
        raise SystemExit(f"{what} failed before writing segments:\n{run['tail']}")
    if run["code"] == 0:
        return None
    bar = "!" * 78
    print(
        f"\n{bar}\n{what} FAILED AFTER WRITING ITS SEGMENTS (exit {run['code']}); scoring "
        f"the tables it wrote. The log ends:\n{run['tail']}\n{bar}\n",
        flush=True,
    )
    return f"{what} exited {run['code']} after writing its segments: {last_line(run)}"


def usersegments_assignment(run: dict, name: str) -> Assignment:
    """Users' cluster and segment and the unit segment centroids of a finished run."""
    store = run["store"]
    members = read_table(store, "user_segments", ["user_id", "cluster_id", "segment_id"])
    users = members.rename(columns={"cluster_id": "cluster", "segment_id": "segment"})
    segments = read_table(store, "segments", ["segment_id", "centroid"])
    profiles = read_table(store, "user_profiles", ["user_id", "embedding"])
    dims = len(profiles["embedding"].iloc[0])
    centroids = {s: np.asarray(c, dtype=np.float64) for s, c in segments.values}
    if any(len(c) != dims for c in centroids.values()):
        # Centroids in a reduced space (profile.pca_dims): members' mean profile instead.
        vectors = dict(zip(profiles["user_id"], profiles["embedding"], strict=True))
        centroids = {
            s: np.mean([vectors[u] for u in group["user_id"]], axis=0)
            for s, group in users.groupby("segment")
        }
    centroids = {s: unit_rows(c[None, :])[0] for s, c in centroids.items()}
    metrics = read_table(store, "run_metrics")
    stages = metrics[metrics["metric"] == "seconds"]["value"].sum()
    k = (users["cluster"].nunique(), users["segment"].nunique())
    detail = f"{run['wall_s']:.0f} s wall ({stages:.0f} s in stages)"
    return Assignment(name, users, centroids, run["wall_s"], detail, k, run["settings"])


# ---------------------------------------------------------------------------
# The reference: unit mean vectors + scikit-learn KMeans


def training_vectors(store: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """The accepted earlier events (user_id, row into the matrix) and the MiniLM matrix."""
    vectors = read_table(store, "text_embeddings", ["text_hash", "embedding"])
    matrix = np.vstack(vectors["embedding"].to_numpy()).astype(np.float64)
    row = pd.Series(np.arange(len(vectors)), index=vectors["text_hash"])
    events = read_table(store, "events", ["user_id", "text_hash"])
    events = events[events["text_hash"].isin(row.index)]
    return events.assign(row=row.reindex(events["text_hash"]).to_numpy()), matrix


def user_means(events: pd.DataFrame, matrix: np.ndarray) -> tuple[pd.Index, np.ndarray]:
    """Each user's unit mean of their events' vectors (every event counts once)."""
    codes, users = pd.factorize(events["user_id"])
    sums = np.zeros((len(users), matrix.shape[1]))
    np.add.at(sums, codes, matrix[events["row"].to_numpy()])
    return pd.Index(users), unit_rows(sums)


def reference_means(
    events: pd.DataFrame, matrix: np.ndarray, min_events: int
) -> tuple[pd.Index, np.ndarray]:
    """The reference's users (at least ``min_events`` earlier posts) and their unit means."""
    counts = events["user_id"].value_counts()
    kept = events[events["user_id"].isin(counts[counts >= min_events].index)]
    return user_means(kept, matrix)


def reference_assignment(
    events: pd.DataFrame, matrix: np.ndarray, k: tuple[int, int], min_events: int, seed: int
) -> Assignment:
    """KMeans with usersegments' number of coarse clusters, and again with its number of
    segments, on the users' mean vectors; KMeans centres as segment centroids."""
    from sklearn.cluster import KMeans

    started = time.perf_counter()
    users, x = reference_means(events, matrix, min_events)
    coarse = KMeans(n_clusters=k[0], n_init=10, random_state=seed).fit(x)
    fine = KMeans(n_clusters=k[1], n_init=10, random_state=seed).fit(x)
    seconds = time.perf_counter() - started
    frame = pd.DataFrame(
        {"user_id": users, "cluster": coarse.labels_, "segment": fine.labels_.astype(str)}
    )
    centres = unit_rows(fine.cluster_centers_)
    centroids = {str(i): centres[i] for i in range(k[1])}
    detail = f"{seconds:.1f} s (means + 2 KMeans; vectors reused)"
    return Assignment(f"reference (k = {k[0]} / {k[1]})", frame, centroids, seconds, detail, k)


# Reference seeds whose spread of NMI(coarse cluster, area) and purity the notes print.
SPREAD_SEEDS = range(10)


def reference_seed_spread(
    events: pd.DataFrame,
    matrix: np.ndarray,
    k: tuple[int, int],
    min_events: int,
    truth: pd.DataFrame,
    users: pd.Index,
) -> str:
    """NMI(coarse cluster, area) of the reference's coarse KMeans (``n_init=10``, k[0]
    clusters) and the purity of its fine one (k[1]) over ``SPREAD_SEEDS``, on ``users``:
    how far the seed alone moves the figures the acceptance compares."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score as nmi

    ids, x = reference_means(events, matrix, min_events)
    scored = truth.set_index("user_id").loc[users]
    figures: dict[str, list[float]] = {"NMI(coarse cluster, area)": [], "purity": []}
    for seed in SPREAD_SEEDS:
        coarse = KMeans(n_clusters=k[0], n_init=10, random_state=seed).fit(x).labels_
        fine = KMeans(n_clusters=k[1], n_init=10, random_state=seed).fit(x).labels_
        figures["NMI(coarse cluster, area)"].append(
            nmi(scored["area"], pd.Series(coarse, ids).loc[users])
        )
        figures["purity"].append(purity(pd.Series(fine, ids).loc[users], scored["group"]))
    spreads = "; ".join(
        f"{name} min {min(v):.3f}, median {np.median(v):.3f}, max {max(v):.3f}"
        for name, v in figures.items()
    )
    return (
        f"The reference over KMeans seeds {SPREAD_SEEDS.start}-{SPREAD_SEEDS.stop - 1} (the "
        f"seed alone moves its figures this much): {spreads}."
    )


# ---------------------------------------------------------------------------
# The held-out posts' vectors


def ingest_texts(events: pd.DataFrame, items: pd.DataFrame, cfg) -> pd.Series:
    """The text ingest gives each event (``input.text_source``, normalisation, truncation)."""
    from usersegments.ingest import normalize_texts

    def clean(texts: pd.Series) -> pd.Series:
        out = normalize_texts(texts.reset_index(drop=True), cfg.lowercase)
        return out.where(out.fillna("") != "", None)

    item_text = events[["item_id"]].merge(
        items[["item_id", "text"]].drop_duplicates("item_id"), on="item_id", how="left"
    )["text"]
    item_text, event_text = clean(item_text), clean(events["text"])
    if cfg.text_source in ("item", "event"):
        text = item_text if cfg.text_source == "item" else event_text
    else:
        first, second = (
            (item_text, event_text)
            if cfg.text_source == "item_then_event"
            else (event_text, item_text)
        )
        # Ingest says a text once when the event repeats its item's text (case apart).
        both = first.notna() & second.notna() & (first.str.lower() != second.str.lower())
        text = first.where(first.notna(), second)
        text[both] = first[both] + " | " + second[both]
    return text.str.slice(0, cfg.max_text_chars)


def text_hash_check(split_data: dict, store: Path, cfg) -> float:
    """The share of the stored distinct ``text_hash``es that the earlier events' texts,
    rebuilt here as ingest builds them, reproduce (1.0: the rebuilding is exact)."""
    train = split_data["train"]
    texts = ingest_texts(train, split_data["items"], cfg.input)
    rebuilt = {hashlib.sha256(t.encode("utf-8")).hexdigest() for t in texts.dropna()}
    stored = set(read_table(store, "events", ["text_hash"])["text_hash"].dropna())
    return len(stored & rebuilt) / max(len(stored), 1)


def later_vectors(
    split_data: dict, cfg, cache: Path | None = None
) -> tuple[pd.DataFrame, np.ndarray, float]:
    """The held-out posts (user_id) and their unit vectors, from usersegments' embedder;
    with ``cache``, vectors of the very same texts and embedder are kept there and reused."""
    from usersegments.embed import EmbedderSpec, TextEmbedder

    later = split_data["later"].reset_index(drop=True)
    texts = ingest_texts(later, split_data["items"], cfg.input)
    keep = texts.notna().to_numpy()
    spec = EmbedderSpec.from_config(cfg.embed)
    digest = hashlib.sha256(repr((spec, texts[keep].tolist())).encode("utf-8")).hexdigest()
    users = later[keep][["user_id"]].reset_index(drop=True)
    if cache is not None and cache.exists():
        kept = np.load(cache)
        if str(kept["digest"]) == digest:
            print(f"reusing the held-out vectors in {cache}", flush=True)
            return users, kept["vectors"], float(kept["seconds"])
    started = time.perf_counter()
    vectors = unit_rows(TextEmbedder(spec).load().embed(texts[keep].tolist()))
    seconds = time.perf_counter() - started
    if cache is not None:
        np.savez(cache, digest=digest, vectors=vectors, seconds=seconds)
    return users, vectors, seconds


# ---------------------------------------------------------------------------
# Scores


def purity(segment: pd.Series, truth: pd.Series) -> float:
    """Share of users whose segment's most common ``truth`` label is their own."""
    table = pd.crosstab(segment, truth)
    return float(table.max(axis=1).sum() / table.to_numpy().sum())


def interest_fit(
    method: Assignment, users: pd.Index, later: pd.DataFrame, v: np.ndarray, g: np.ndarray
) -> float:
    """Mean over ``users`` of the mean over their later posts of cos(v, c) - cos(v, g)."""
    segment = method.users.set_index("user_id")["segment"]
    rows = later[later["user_id"].isin(users)]
    centroids = np.vstack([method.centroids[s] for s in segment.reindex(rows["user_id"])])
    post = v[rows.index.to_numpy()]
    gain = np.einsum("ij,ij->i", post, centroids) - post @ g
    return float(pd.Series(gain, index=rows["user_id"].to_numpy()).groupby(level=0).mean().mean())


def score(methods: list[Assignment], truth: pd.DataFrame, later, v, g) -> dict:
    """Every figure of the table, per method, on the shared populations."""
    from sklearn.metrics import normalized_mutual_info_score as nmi

    scored = truth[(truth["posts"] >= 3) & (truth["area_share"] >= 0.8)].set_index("user_id")
    common = scored.index
    fit_users = pd.Index(later["user_id"].unique())
    for m in methods:
        common = common.intersection(m.users["user_id"])
        fit_users = fit_users.intersection(m.users["user_id"])
    out = {"scored": len(scored), "common": len(common), "fit_users": len(fit_users), "rows": {}}
    out["common_users"] = common
    for m in methods:
        by_user = m.users.set_index("user_id")
        covered = scored.index.isin(by_user.index).sum()
        mine = by_user.loc[common]
        area, group = scored.loc[common, "area"], scored.loc[common, "group"]
        out["rows"][m.name] = {
            "k": f"{m.k[0]} / {m.k[1]}",
            "coverage": f"{covered / len(scored):.1%} ({covered:,} / {len(scored):,})",
            "nmi_area": f"{nmi(area, mine['cluster']):.3f}",
            "nmi_group": f"{nmi(group, mine['segment']):.3f}",
            "purity": f"{purity(mine['segment'], group):.3f}",
            "fit": f"{interest_fit(m, fit_users, later, v, g):+.4f}",
            "seconds": m.detail,
        }
    return out


# ---------------------------------------------------------------------------
# Report

ROWS = (
    ("k", "coarse clusters / segments"),
    ("coverage", "coverage (scored users in a segment)"),
    ("nmi_area", "NMI(coarse cluster, area)"),
    ("nmi_group", "NMI(segment, group)"),
    ("purity", "purity (segment -> group)"),
    ("fit", "held-out interest fit"),
    ("seconds", "seconds"),
)


def render(scores: dict, notes: list[str], command: str) -> str:
    """The Markdown section: the table, then the notes (settings, checks, populations)."""
    names = list(scores["rows"])
    lines = [
        *heading(SECTION, command),
        "| | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for key, label in ROWS:
        lines.append(f"| {label} | " + " | ".join(scores["rows"][n][key] for n in names) + " |")
    lines += [
        "",
        f"- Scored users (`posts >= 3`, `area_share >= 0.8`): {scores['scored']:,}; NMI and "
        f"purity over the {scores['common']:,} of them every column covers; the interest fit "
        f"over the {scores['fit_users']:,} users every column covers that post in the later "
        "period.",
        *[f"- {n}" for n in notes],
        "- Definitions: see the docstring of `benchmarks/realdata.py`.",
    ]
    return "\n".join(lines) + "\n"


def write_section(path: Path, text: str) -> None:
    """Replace this script's section of ``path`` (up to the next heading of its level or
    above), or append it."""
    old = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    if SECTION in old:
        start = old.index(SECTION)
        end = next(
            (i for i in range(start + 1, len(old)) if old[i].startswith(("# ", "## "))),
            len(old),
        )
        new = old[:start] + text.rstrip("\n").splitlines() + [""] + old[end:]
    else:
        new = [*old, "", *text.rstrip("\n").splitlines()]
    path.write_text("\n".join(new).rstrip("\n") + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, metavar="DIR")
    parser.add_argument("--cut", default="1993-04-16", help="held-out period starts here")
    parser.add_argument(
        "--tuned-config",
        metavar="FILE",
        help="rerun usersegments with this YAML config (e.g. a tuned.yaml) and add its columns",
    )
    parser.add_argument(
        "--tune",
        action="store_true",
        help="run `usersegments tune` first and add the columns of a run with its tuned.yaml",
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V")
    parser.add_argument("--reference-min-events", type=int, default=1, metavar="N")
    parser.add_argument("--seed", type=int, default=0, help="KMeans seed of the reference")
    parser.add_argument("--workdir", type=Path, metavar="DIR", help="data and stores here")
    parser.add_argument("--keep", action="store_true", help="keep the workdir afterwards")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="keep finished runs found in --workdir (implies --keep); a new run starts "
        "with the text_embeddings of the last one (so it re-embeds nothing)",
    )
    parser.add_argument("--write", type=Path, metavar="PATH", help="write the section here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run both methods (and the tuned config), score them, print and write the table."""
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    given = argv if argv is not None else sys.argv[1:]
    command = "python benchmarks/realdata.py " + " ".join(given)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="usersegments-realdata-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        text = benchmark(args, workdir, command)
    finally:
        if not (args.keep or args.reuse):
            shutil.rmtree(workdir, ignore_errors=True)
    print(text)
    if args.write:
        write_section(args.write, text)
        print(f"written to {args.write}")
    return 0


def benchmark(args: argparse.Namespace, workdir: Path, command: str) -> str:
    """Everything between the arguments and the printed section."""
    from usersegments.config import load_config

    data = split(args.data, args.cut, workdir)
    run = usersegments_with_defaults(data["paths"], workdir, args.overrides, args.reuse)
    failures = [check_finished(run, "usersegments run")]
    ours = usersegments_assignment(run, "usersegments (defaults)")
    events, matrix = training_vectors(run["store"])
    methods = [ours, reference_assignment(events, matrix, ours.k, args.reference_min_events, 0)]
    if args.tune:
        tune = run_usersegments(
            data["paths"], workdir / "store-tune", None, run["settings"], args.reuse, "tune"
        )
        if tune["code"] != 0:
            raise SystemExit(f"`usersegments tune` exited {tune['code']}:\n{tune['tail']}")
        args.tuned_config = str(workdir / "store-tune" / "tuned.yaml")
        ratio = tune["wall_s"] / max(run["wall_s"], 1e-9)
        failures.append(
            f"`usersegments tune` took {tune['wall_s']:.0f} s wall ({ratio:.1f}x the "
            f"defaults run's {run['wall_s']:.0f} s)"
        )
    if args.tuned_config:
        tuned_run = run_usersegments(
            data["paths"], workdir / "store-tuned", args.tuned_config, run["settings"], args.reuse
        )
        failures.append(check_finished(tuned_run, f"the run with {args.tuned_config}"))
        tuned = usersegments_assignment(
            {**tuned_run, "settings": run["settings"]},
            f"usersegments ({Path(args.tuned_config).name})",
        )
        methods.append(tuned)
        if tuned.k != ours.k:
            methods.append(
                reference_assignment(events, matrix, tuned.k, args.reference_min_events, 0)
            )
    cfg = load_config(None, run["settings"], str(run["store"]))
    match = text_hash_check(data, run["store"], cfg)
    if match < 0.99:
        bar = "!" * 78
        print(
            f"\n{bar}\nTHE HELD-OUT TEXTS ARE NOT BUILT AS INGEST BUILDS THEM: rebuilding the "
            f"earlier posts' texts reproduces only {match:.1%} of the stored text_hash values; "
            f"update ingest_texts() to follow usersegments' ingest\n{bar}\n",
            flush=True,
        )
    cache = workdir / "later_vectors.npz" if args.reuse else None
    later, v, embed_s = later_vectors(data, cfg, cache)
    print(f"held-out posts embedded in {embed_s:.0f} s; text_hash check {match:.1%}", flush=True)
    _, x_all = user_means(events, matrix)
    g = unit_rows(x_all.mean(axis=0, keepdims=True))[0]
    truth = pd.read_parquet(args.data / "truth.parquet")
    scores = score(methods, truth, later, v, g)
    spread = reference_seed_spread(
        events, matrix, ours.k, args.reference_min_events, truth, scores["common_users"]
    )
    lines = notes(run, args, match, len(later), embed_s) + [spread] + [f for f in failures if f]
    return render(scores, lines, command)


def notes(run: dict, args: argparse.Namespace, match: float, n_later: int, embed_s: float):
    """The lines under the table: settings the defaults needed, checks, what was reused."""
    lines = ["Non-default settings needed to run: none (the defaults ran)"]
    if args.reuse:
        lines.append(
            "With --reuse, each run's `text_embeddings` was seeded from the previous run's "
            "(same texts, same embedder): its seconds leave out most of the embedding."
        )
    if args.overrides:
        lines.append("Settings given with --set: " + ", ".join(f"`{s}`" for s in args.overrides))
    lines += [
        f"Earlier period: events before {args.cut}; {n_later:,} later posts embedded with "
        f"usersegments' embedder in {embed_s:.0f} s (rebuilt texts reproduce {match:.1%} of "
        "the stored earlier `text_hash`es).",
        f"Reference: users with at least {args.reference_min_events} earlier post(s); unit "
        "mean of the stored MiniLM vectors; scikit-learn KMeans (n_init=10) with k = "
        "usersegments' coarse clusters for the cluster column and k = its segments for the "
        "segment columns and the fit.",
    ]
    return lines


if __name__ == "__main__":
    sys.exit(main())
