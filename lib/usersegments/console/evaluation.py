"""Tables of the figures measured on held-out or planted behaviour: evaluate, tune,
finetune, an update's churn and the dynamic demo's drift recovery."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING

from pyspark.sql import functions as F

from usersegments.console.output import measured, print_table, say
from usersegments.runlog import StageResult

if TYPE_CHECKING:
    from usersegments.pipeline import Context


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
    scored = {title: m[key] for key, title in truth.items() if measured(m.get(key))}
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
    with_truth = any(measured(r["nmi_segment_vs_substyle"]) for r in rows)
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


def print_finetune(result: StageResult) -> None:
    """A fine-tuning's training figures and its before/after scores, side by side."""
    m = result.metrics
    objective = "interest fit" if m.get("objective_interest_fit") else "hit-rate lift"
    rows = [
        (f"score ({objective})", m.get("score_before"), m.get("score_after")),
        (
            "NMI(cluster, area)",
            m.get("nmi_cluster_vs_area_before"),
            m.get("nmi_cluster_vs_area_after"),
        ),
        (
            "NMI(segment, area)",
            m.get("nmi_segment_vs_area_before"),
            m.get("nmi_segment_vs_area_after"),
        ),
        (
            "NMI(segment, sub-style)",
            m.get("nmi_segment_vs_substyle_before"),
            m.get("nmi_segment_vs_substyle_after"),
        ),
    ]
    print_table(
        f"finetune ({result.seconds:.1f}s): v{int(m['version'])}, {int(m['steps'])} steps on "
        f"{int(m['pairs'])} pairs, loss {m['loss_first']:.3f} -> {m['loss_last']:.3f}, "
        f"{m['pairs_per_second']:.1f} pairs/s",
        ["held-out figure", "current encoder", "fine-tuned"],
        [row for row in rows if measured(row[1]) or measured(row[2])],
    )
    if m.get("promoted"):
        say(f"promoted: embed.model finetuned:latest is now {result.path}")
    else:
        say(
            f"kept as {result.path}, not promoted: use it with embed.model=finetuned:"
            f"v{int(m['version'])}, or rerun with --promote"
        )


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
