"""What commands print for people: progress lines, table listings and run summaries.

Everything a command shows on the terminal is formatted here (with rich), so the
stages and the orchestration stay free of printing. Figures that a run did not
measure (ARI/NMI without a truth table) are left out, never shown as "nan".
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from pyspark.sql import functions as F
from rich.console import Console
from rich.table import Table

from usersegments.runlog import StageResult
from usersegments.store import TableStore

if TYPE_CHECKING:
    from usersegments.pipeline import Context

_console = Console(highlight=False)

LARGEST_SEGMENTS_SHOWN = 12
KEYWORDS_SHOWN = 5
VECTOR_VALUES_SHOWN = 4


def say(message: str) -> None:
    """Print one line for the user."""
    _console.print(message)


def print_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """Print a small table with a title."""
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*[_fmt(v) for v in row])
    _console.print(table)


def print_tables(store: TableStore) -> None:
    """List every Delta table under the store root with its version and row count."""
    rows = []
    for name in store.tables():
        rows.append((name, store.version(name), store.read(name).count(), store.path(name)))
    print_table(
        f"Delta tables under {store.root} ({store.backend})",
        ["table", "version", "rows", "path"],
        rows,
    )


def print_table_rows(store: TableStore, name: str, version: int | None, limit: int) -> None:
    """Print the first ``limit`` rows of table ``name`` at Delta ``version`` (time travel)
    or, when None, its latest version; vectors are shortened to their first values."""
    latest = store.version(name)
    shown = latest if version is None else version
    df = store.read(name) if version is None else store.read_version(name, version)
    total = df.count()
    rows = df.limit(limit).collect() if limit else []
    print_table(
        f"{name} at version {shown} (latest {latest}): {total} rows, {len(rows)} shown",
        df.columns,
        [[_cell(value) for value in row] for row in rows],
    )


def _cell(value: object) -> object:
    """A value as one short table cell: lists (vectors) show their first values."""
    if not isinstance(value, list):
        return value
    head = ", ".join(_fmt(v) for v in value[:VECTOR_VALUES_SHOWN])
    if len(value) > VECTOR_VALUES_SHOWN:
        return f"[{head}, ... {len(value)} values]"
    return f"[{head}]"


def print_run_summary(ctx: Context, results: Mapping[str, StageResult]) -> None:
    """Summary tables of a run: ingest counts, embedding, segments and their labels."""
    if "ingest" in results:
        _print_ingest(results["ingest"])
    if "embed" in results:
        _print_embed(results["embed"], ctx.run.model_id)
    if "profile" in results:
        _print_profile(results["profile"], results.get("recommend"))
    if "cluster" in results:
        _print_segments(results["cluster"])
    if "interests" in results:
        _print_interests(results["interests"])
    if "label" in results or "report" in results:
        # After an update that kept the segments too: their sizes changed.
        _print_largest_segments(ctx.store, ctx.cfg.privacy.min_segment_size)


def _print_ingest(ingest: StageResult) -> None:
    m = ingest.metrics
    print_table(
        f"ingest ({ingest.seconds:.1f}s)",
        ["rows read", "accepted", "rejected", "duplicates"],
        [(int(m["rows_read"]), int(m["accepted"]), int(m["rejected"]), int(m["duplicates"]))],
    )
    print_table(
        "rejected by reason",
        ["reason", "rows"],
        [(k.split(".", 1)[1], int(v)) for k, v in m.items() if k.startswith("rejected.") and v],
    )


def _print_embed(embed: StageResult, model_id: str | None) -> None:
    e = embed.metrics
    print_table(
        f"embed ({embed.seconds:.1f}s, model {model_id})",
        ["distinct texts", "cached", "embedded", "texts/s"],
        [
            (
                int(e["distinct_texts"]),
                int(e["cached_hits"]),
                int(e["texts_embedded"]),
                round(e.get("texts_per_second", 0.0)),
            )
        ],
    )


def _half_life_text(metrics: Mapping[str, float]) -> str:
    """``"23.5 days (auto: median_active_span_days 23.5, ...)"`` or ``"30 days (set)"``."""
    days = f"{metrics['half_life_days']:.4g} days"
    if not metrics.get("half_life_auto"):
        return f"{days} (set)"
    basis = [
        f"{k.split('.', 1)[1].replace('_', ' ')} {v:.4g}"
        for k, v in metrics.items()
        if k.startswith("half_life_basis.")
    ]
    return f"{days} (auto: {', '.join(basis)})"


def _print_profile(profile: StageResult, recommend: StageResult | None) -> None:
    """Profiles built, users left without a usable vector (by reason), the half-lives."""
    p = profile.metrics
    unprofiled = {
        k.split(".", 1)[1]: int(v) for k, v in p.items() if k.startswith("users_unprofiled.")
    }
    print_table(
        f"profile ({profile.seconds:.1f}s)",
        ["users", "clusterable", "below min_events", "no usable vector"],
        [
            (
                int(p["users"]),
                int(p["users_clusterable"]),
                int(p["users_below_min_events"]),
                ", ".join(f"{reason} {n}" for reason, n in unprofiled.items() if n) or "0",
            )
        ],
    )
    rows = [("profile.half_life_days", _half_life_text(p))]
    if recommend is not None and "half_life_days" in recommend.metrics:
        rows.append(("recommend.half_life_days", _half_life_text(recommend.metrics)))
    print_table("time decay", ["setting", "value"], rows)


def _print_segments(cluster: StageResult) -> None:
    c = cluster.metrics
    columns = ["users", "k", "segments", "sizes min/median/max", "silhouette"]
    row: list[object] = [
        int(c["users_clustered"]),
        int(c["k"]),
        int(c["segments"]),
        f"{int(c['segment_size_min'])}/{int(c['segment_size_median'])}/"
        f"{int(c['segment_size_max'])}",
        round(c["silhouette_cosine"], 3),
    ]
    truth_columns = {
        "ari_cluster_vs_area": "ARI vs planted area",
        "nmi_segment_vs_substyle": "NMI vs sub-style",
    }
    for metric, title in truth_columns.items():
        if _measured(c.get(metric)):
            columns.append(title)
            row.append(round(c[metric], 3))
    print_table(f"segments ({cluster.seconds:.1f}s)", columns, [row])


def _print_interests(interests: StageResult) -> None:
    """Users by number of interests and the mean per user."""
    m = interests.metrics
    counts = sorted(
        (int(k.split("_")[2]), int(v))
        for k, v in m.items()
        if k.startswith("users_with_") and k.endswith("_interests") and k.split("_")[2].isdigit()
    )
    print_table(
        f"interests ({interests.seconds:.1f}s)",
        ["users", *[f"with {n}" for n, _ in counts], "per user"],
        [
            (
                int(m["users_with_interests"]),
                *[u for _, u in counts],
                round(m["interests_per_user_mean"], 2),
            )
        ],
    )


def _print_largest_segments(store: TableStore, min_size: int) -> None:
    """The largest segments with their labels and sizes, and how many there are."""
    segments = store.read("segments")
    total = segments.count()
    largest = (
        segments.orderBy(F.desc("size"), "segment_id")
        .limit(LARGEST_SEGMENTS_SHOWN)
        .select("segment_id", "size", "label", "keywords")
        .collect()
    )
    shown = f"the {len(largest)} largest of {total}" if total > len(largest) else f"all {total}"
    print_table(
        f"segments: {shown}",
        ["segment", "users", "label", "keywords"],
        segment_rows([r.asDict() for r in largest], min_size),
    )


def segment_rows(rows: Sequence[Mapping[str, object]], min_size: int) -> list[tuple]:
    """Console rows (segment, users, label, keywords) of ``segments`` rows; a segment
    below the privacy floor (``min_size`` users) keeps its id and size, undescribed."""
    out = []
    for r in rows:
        size = int(r["size"])
        if size < min_size:
            out.append((r["segment_id"], size, "(below the privacy floor)", ""))
            continue
        keywords = ", ".join(list(r["keywords"] or [])[:KEYWORDS_SHOWN])
        out.append((r["segment_id"], size, r["label"] or "–", keywords))
    return out


def print_evaluation(result: StageResult, k: int) -> None:
    """The evaluation table: hit rate and recall at K per recommender, ARI/NMI if scored."""
    m = result.metrics
    print_table(
        f"evaluate ({result.seconds:.1f}s): last {int(m['holdout_last'])} events of "
        f"{int(m['users_tested'])} users held out",
        ["recommender", f"hit rate@{k}", f"recall@{k}"],
        [
            (s, round(m[f"hit_rate@{k}.{s}"], 3), round(m[f"recall@{k}.{s}"], 3))
            for s in ("segment", "cluster", "popularity")
        ],
    )
    if "users_tested_multi" in m:
        print_table(
            f"users with several interests ({int(m['users_tested_multi'])} tested)",
            ["per-user list", f"hit rate@{k}", f"recall@{k}"],
            [
                (
                    title,
                    round(m[f"hit_rate@{k}.{s}_multi"], 3),
                    round(m[f"recall@{k}.{s}_multi"], 3),
                )
                for s, title in (("blended", "interests blended"), ("segment", "primary segment"))
            ],
        )
    truth = {
        "ari_cluster_vs_area": "ARI cluster/area",
        "nmi_cluster_vs_area": "NMI cluster/area",
        "nmi_segment_vs_substyle": "NMI segment/sub-style",
    }
    scored = {title: m[key] for key, title in truth.items() if _measured(m.get(key))}
    if scored:
        print_table(
            "training clustering vs planted truth",
            list(scored),
            [[round(v, 3) for v in scored.values()]],
        )


# tuning_trials settings -> the column that shows them in the trials table.
_TUNED_COLUMNS = {
    "cluster.k": "k",
    "profile.half_life_days": "profile half-life",
    "recommend.half_life_days": "recommend half-life",
    "profile.event_weights": "event weights",
    "profile.value_transform": "value",
    "cluster.sub.target_size": "sub size",
}


def print_tuning(ctx: Context, result: StageResult) -> None:
    """The trials of a tune run (one row each, the chosen one marked) and the best."""
    rows = (
        ctx.store.read("tuning_trials")
        .filter(F.col("run_id") == ctx.run.run_id)
        .orderBy("trial_id")
        .collect()
    )
    weights = [json.dumps(w, sort_keys=True) for w in ctx.cfg.tune.event_weights]
    with_truth = any(_measured(r["nmi_segment_vs_substyle"]) for r in rows)
    objective = rows[0]["objective"] if rows else ""
    columns = ["trial", *_TUNED_COLUMNS.values(), objective, "silhouette"]
    columns += ["NMI segment/sub-style"] if with_truth else []
    columns += ["segments", "seconds", "chosen"]
    table = []
    for r in rows:
        settings = json.loads(r["settings_json"])
        shown = []
        for key in _TUNED_COLUMNS:
            value = settings.get(key)
            if key == "profile.event_weights":
                text = json.dumps(value, sort_keys=True)
                value = f"#{weights.index(text) + 1}" if text in weights else text
            shown.append(value)
        score = r["score"] if r["status"] == "succeeded" else r["status"]
        figures = [score, r["silhouette_cosine"]]
        figures += [r["nmi_segment_vs_substyle"]] if with_truth else []
        figures += [r["segments"], round(r["seconds"], 1), "*" if r["chosen"] else ""]
        table.append([r["trial_id"], *shown, *["-" if v is None else v for v in figures]])
    print_table(
        f"tune ({result.seconds:.1f}s): {len(rows)} trials, last "
        f"{int(result.metrics['holdout_last'])} events per user held out, "
        f"{result.metrics['repeat_share']:.0%} of them on items seen in training",
        columns,
        table,
    )
    say("event weights: " + "; ".join(f"#{i} {w}" for i, w in enumerate(weights, start=1)))
    best = int(result.metrics["best_trial"])
    say(f"best: trial {best}, {objective} {result.metrics['best_score']:.4f}")
    say(f"tuned config: {result.path}")
    say(f"use it: usersegments run --config {result.path}")


def print_churn(update: StageResult) -> None:
    """The churn summary of an update: users folded, moved and new; segments born/ended."""
    m = update.metrics
    print_table(
        f"update ({update.seconds:.1f}s)",
        ["events folded", "users reassigned", "moved", "new users", "moved share", "novel texts"],
        [
            (
                int(m.get("events_folded", 0)),
                int(m.get("users_reassigned", 0)),
                int(m.get("users_moved", 0)),
                int(m.get("users_new", 0)),
                round(m.get("moved_share", 0.0), 3),
                round(m.get("novel_text_share", 0.0), 3),
            )
        ],
    )
    if "interests_users_recomputed" in m:
        print_table(
            "interests of users with new events",
            ["users recomputed", "gaining an interest", "losing one", "rows written", "deleted"],
            [
                (
                    int(m["interests_users_recomputed"]),
                    int(m["interests_users_gaining"]),
                    int(m["interests_users_losing"]),
                    int(m.get("interests_rows_inserted", 0) + m.get("interests_rows_updated", 0)),
                    int(m.get("interests_rows_deleted", 0)),
                )
            ],
        )
    if m.get("reclustered"):
        print_table(
            "re-clustered: segment lineage",
            ["continued", "born", "split", "merged", "ended", "ids kept"],
            [
                (
                    int(m["segments_continued"]),
                    int(m["segments_born"]),
                    int(m["segments_split"]),
                    int(m["segments_merged"]),
                    int(m["segments_ended"]),
                    f"{m['segment_ids_kept_share']:.0%}",
                )
            ],
        )


def print_drift_recovery(recovery: Mapping[str, float]) -> None:
    """Where the planted drifted users are after an update (the dynamic demo)."""
    print_table(
        "planted drift: where users are after the update",
        [
            "drifted users",
            "in a segment of their new area",
            "other users moved",
            "of which away from their area",
        ],
        [
            (
                int(recovery["drifted_users"]),
                f"{recovery['drifted_in_new_area_share']:.0%}",
                f"{recovery['stable_moved_share']:.1%}",
                f"{recovery['stable_moved_away_share']:.1%}",
            )
        ],
    )


def _measured(value: float | None) -> bool:
    return value is not None and not math.isnan(value)


def _fmt(value: object) -> str:
    """A cell: floats to 4 significant digits; a missing or unmeasured value as "–",
    never "None" or "nan"."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
