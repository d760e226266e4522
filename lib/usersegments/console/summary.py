"""The summary tables a run or an update prints: one per stage that ran, then the
largest segments with their labels."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from pyspark.sql import functions as F

from usersegments.console.output import measured, print_table
from usersegments.runlog import StageResult
from usersegments.store import TableStore

if TYPE_CHECKING:
    from usersegments.pipeline import Context

LARGEST_SEGMENTS_SHOWN = 12
KEYWORDS_SHOWN = 5


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
        if measured(c.get(metric)):
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
