"""Runs stages in order: one stage, the full ``run``, ``update`` and ``demo``.

The pipeline knows stage names and their order; each stage module owns its
logic (``run_<stage>(spark, store, cfg, run, **options) -> StageResult``).
A stage this version does not provide raises ``StageNotAvailable``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from usersegments.config import Config
from usersegments.errors import StageNotAvailable
from usersegments.lock import RunLock
from usersegments.runlog import RunLog, StageResult
from usersegments.session import build_session
from usersegments.store import TableStore

log = logging.getLogger(__name__)

StageFn = Callable[..., StageResult]

# The full run, in order (ARCHITECTURE.md's data flow, then table maintenance).
RUN_ORDER = (
    "ingest",
    "embed",
    "profile",
    "cluster",
    "label",
    "recommend",
    "report",
    "maintain",
)


def stage_function(name: str) -> StageFn:
    """The ``run_<name>`` function of a stage, imported on first use."""
    registry: dict[str, tuple[str, str]] = {
        "ingest": ("ingest", "run_ingest"),
        "embed": ("embed", "run_embed"),
        "profile": ("profile", "run_profile"),
        "cluster": ("cluster", "run_cluster"),
        "label": ("label", "run_label"),
        "recommend": ("recommend", "run_recommend"),
        "report": ("report", "run_report"),
        "maintain": ("maintain", "run_maintain"),
        "evaluate": ("evaluate", "run_evaluate"),
        "update": ("dynamics", "run_update"),
    }
    if name not in registry:
        raise StageNotAvailable(
            f"the '{name}' stage is not available in this version of usersegments; "
            f"available: {', '.join(sorted(registry)) or 'none yet'}"
        )
    module_name, fn_name = registry[name]
    module = __import__(f"usersegments.{module_name}", fromlist=[fn_name])
    return getattr(module, fn_name)


@dataclass
class Context:
    """What every command works with: config, session, store and the run's log."""

    cfg: Config
    spark: SparkSession
    store: TableStore
    run: RunLog
    results: list[StageResult] = field(default_factory=list)
    lock: RunLock | None = None


def open_context(cfg: Config, command: str, lock: bool = True) -> Context:
    """Start (or reuse) the session, open the store, take the root's run lock (unless
    ``lock`` is False: read-only commands) and record a new run."""
    spark = build_session(cfg)
    store = TableStore.from_config(spark, cfg)
    run = RunLog(spark, store, cfg, command)
    held = RunLock(store.root, run.run_id, command, cfg.store).acquire() if lock else None
    try:
        run.start()
    except BaseException:
        if held is not None:
            held.release()
        raise
    log.info("run %s: %s on %s (backend %s)", run.run_id, command, store.root, store.backend)
    return Context(cfg=cfg, spark=spark, store=store, run=run, lock=held)


def run_stage(ctx: Context, name: str, **options: Any) -> StageResult:
    """Run one stage inside ``ctx``'s run, timing it and flushing its metrics."""
    fn = stage_function(name)
    with ctx.run.timed(name) as timer:
        result = fn(ctx.spark, ctx.store, ctx.cfg, ctx.run, **options)
    result.seconds = timer.seconds
    ctx.results.append(result)
    return result


def cli_generate(cfg: Config, args: Any) -> int:
    """``usersegments generate``: synthetic events, items and truth under the output root."""
    from usersegments.console import say
    from usersegments.synthetic import GeneratorSettings, generate, write

    settings = GeneratorSettings(users=args.users, seed=args.seed, days=args.days)
    data = generate(settings)
    paths = write(data, cfg.store.root)
    say(
        f"generated {len(data.events)} events of {settings.users} users over {settings.days} "
        f"days ({len(data.items)} items, {data.manifest['drifted_users']} drifted users)"
    )
    for name, path in paths.items():
        say(f"  {name}: {path}")
    return 0


def run_all(
    ctx: Context,
    events: list[str],
    items: str | None = None,
    truth: str | None = None,
    stages: tuple[str, ...] = RUN_ORDER,
    recluster: bool = False,
) -> dict[str, StageResult]:
    """Run ``stages`` (default: the full run) in order inside ``ctx``, one line per stage.

    Ingest is skipped when no event paths are given (the run then works on the
    events already stored).
    """
    from usersegments.console import say

    options: dict[str, dict[str, Any]] = {
        "ingest": {"events": events, "items": items},
        "cluster": {"truth": truth},
        "update": {"recluster_now": recluster},
    }
    results: dict[str, StageResult] = {}
    for position, name in enumerate(stages, start=1):
        if name == "ingest" and not events:
            say(
                f"[{position}/{len(stages)}] ingest skipped: no --events given, using stored events"
            )
            continue
        say(f"[{position}/{len(stages)}] {name} ...")
        result = run_stage(ctx, name, **options.get(name, {}))
        results[name] = result
        say(f"[{position}/{len(stages)}] {name} done in {result.seconds:.1f}s")
    return results


@contextmanager
def finishing(ctx: Context) -> Iterator[Context]:
    """Mark ctx's run succeeded when the block ends, or failed on any exception."""
    try:
        try:
            yield ctx
        except BaseException:
            ctx.run.finish("failed")
            raise
        ctx.run.finish()
    finally:
        if ctx.lock is not None:
            ctx.lock.release()


@contextmanager
def pipeline_run(cfg: Config, command: str) -> Iterator[Context]:
    """One recorded run for the block (notebooks use this):
    ``with pipeline_run(cfg, "notebook") as ctx: run_all(ctx, ...)``."""
    with finishing(open_context(cfg, command)) as ctx:
        yield ctx


def _finish(ctx: Context, work: Callable[[], int]) -> int:
    """Run ``work`` and mark ctx's run succeeded, or failed on any exception."""
    with finishing(ctx):
        return work()


def cli_run(cfg: Config, args: Any) -> int:
    """``usersegments run``: every stage of RUN_ORDER, ingest to maintain, in one run."""
    from usersegments.console import say

    ctx = open_context(cfg, "run")

    def work() -> int:
        results = run_all(ctx, list(args.events), args.items, args.truth)
        print_run_summary(ctx, results)
        report = results.get("report")
        if report is not None and report.path:
            say(f"report: {report.path}")
        return 0

    return _finish(ctx, work)


def cli_evaluate(cfg: Config, args: Any) -> int:
    """``usersegments evaluate``: hold out each user's last events and score recommenders."""
    ctx = open_context(cfg, "evaluate")

    def work() -> int:
        result = run_stage(ctx, "evaluate", holdout_last=args.holdout_last, truth=args.truth)
        print_evaluation(result, cfg.evaluate.k)
        return 0

    return _finish(ctx, work)


def print_evaluation(result: StageResult, k: int) -> None:
    """The evaluation table: hit rate and recall at K per recommender, ARI/NMI if scored."""
    from usersegments.console import print_table

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
    if "ari_cluster_vs_area" in m:
        print_table(
            "training clustering vs planted truth",
            ["ARI cluster/area", "NMI cluster/area", "NMI segment/sub-style"],
            [
                (
                    round(m["ari_cluster_vs_area"], 3),
                    round(m["nmi_cluster_vs_area"], 3),
                    round(m["nmi_segment_vs_substyle"], 3),
                )
            ],
        )


# The stages of an update; label runs too when the update re-clustered.
UPDATE_ORDER = ("ingest", "embed", "update", "recommend", "report", "maintain")


def update_all(
    ctx: Context, events: list[str], items: str | None, recluster: bool
) -> dict[str, StageResult]:
    """One update run: ingest the new events, embed new texts, fold and reassign, then
    refresh labels (after a re-cluster), recommendations and the report, and maintain
    the tables."""
    results = run_all(ctx, events, items, stages=UPDATE_ORDER[:3], recluster=recluster)
    after: tuple[str, ...] = UPDATE_ORDER[3:]
    if results["update"].metrics.get("reclustered"):
        after = ("label", *after)
    ctx.run.flush()
    results.update(run_all(ctx, [], stages=after))
    return results


def cli_update(cfg: Config, args: Any) -> int:
    """``usersegments update``: fold new events into the existing segments."""
    from usersegments.console import say

    ctx = open_context(cfg, "update")

    def work() -> int:
        results = update_all(ctx, list(args.events), args.items, args.recluster)
        print_run_summary(ctx, results)
        print_churn(results["update"])
        say(f"report: {results['report'].path}")
        return 0

    return _finish(ctx, work)


def print_churn(update: StageResult) -> None:
    """The churn summary of an update: users folded, moved and new; segments born/ended."""
    from usersegments.console import print_table

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


def cli_demo(cfg: Config, args: Any) -> int:
    """``usersegments demo``: generate a small dataset, run every stage, evaluate, report."""
    from pathlib import Path

    from usersegments.console import print_tables, say
    from usersegments.synthetic import GeneratorSettings, generate, write

    data = generate(GeneratorSettings(users=args.users, seed=args.seed))
    input_dir = Path(cfg.store.root) / "input"
    paths = write(data, input_dir)
    say(f"generated {len(data.events)} events of {args.users} users into {input_dir}")
    if args.dynamic:
        return _demo_dynamic(cfg, data, input_dir, paths["truth"])
    ctx = open_context(cfg, "demo")
    last = ("report", "maintain")
    before_report = tuple(s for s in RUN_ORDER if s not in last)

    def work() -> int:
        results = run_all(
            ctx, [paths["events_csv"]], paths["items"], paths["truth"], stages=before_report
        )
        say("evaluate ...")
        results["evaluate"] = run_stage(ctx, "evaluate", truth=paths["truth"])
        ctx.run.flush()  # the report reads this run's metrics back
        results.update(run_all(ctx, [], stages=last))
        print_run_summary(ctx, results)
        print_evaluation(results["evaluate"], cfg.evaluate.k)
        print_tables(ctx.store)
        store = ctx.store
        say(f"demo run {ctx.run.run_id}: tables under {store.root} (backend {store.backend})")
        say(f"report: {results['report'].path}")
        return 0

    return _finish(ctx, work)


def _demo_dynamic(cfg: Config, data: Any, input_dir: Any, truth: str) -> int:
    """Two windows split at the planted drift date: a full run on the first, an update
    with the second; prints where the drifted users went."""
    from datetime import datetime

    from usersegments.console import print_table, say
    from usersegments.evaluate import drift_recovery
    from usersegments.synthetic import split_at, write

    cut = datetime.fromisoformat(str(data.manifest["drift_date"]))
    first, second = split_at(data, cut)
    first_paths = write(first, input_dir / "window1")
    second_paths = write(second, input_dir / "window2")
    say(f"window 1: {len(first.events)} events before {cut:%Y-%m-%d}")
    say(f"window 2: {len(second.events)} events from then on")
    ctx = open_context(cfg, "demo")

    def first_window() -> int:
        results = run_all(ctx, [first_paths["events_csv"]], first_paths["items"], truth)
        print_run_summary(ctx, results)
        return 0

    _finish(ctx, first_window)
    say("window 2: update ...")
    update_ctx = open_context(cfg, "update")

    def work() -> int:
        results = update_all(update_ctx, [second_paths["events_csv"]], second_paths["items"], False)
        print_churn(results["update"])
        recovery = drift_recovery(update_ctx.store, truth, cut, cfg.privacy)
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
        update_ctx.run.record_all("demo", recovery)
        say(f"report: {results['report'].path}")
        return 0

    return _finish(update_ctx, work)


def print_run_summary(ctx: Context, results: dict[str, StageResult]) -> None:
    """Summary tables of a run: ingest counts, embedding, segments and their labels."""
    from usersegments.console import print_table

    if "ingest" in results:
        ingest = results["ingest"]
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
    if "embed" in results:
        embed = results["embed"]
        e = embed.metrics
        print_table(
            f"embed ({embed.seconds:.1f}s, model {ctx.run.model_id})",
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
    if "cluster" in results:
        cluster = results["cluster"]
        c = cluster.metrics
        print_table(
            f"segments ({cluster.seconds:.1f}s)",
            [
                "users",
                "k",
                "segments",
                "sizes min/median/max",
                "silhouette",
                "ARI vs planted area",
                "NMI vs sub-style",
            ],
            [
                (
                    int(c["users_clustered"]),
                    int(c["k"]),
                    int(c["segments"]),
                    f"{int(c['segment_size_min'])}/{int(c['segment_size_median'])}/"
                    f"{int(c['segment_size_max'])}",
                    round(c["silhouette_cosine"], 3),
                    round(c.get("ari_cluster_vs_area", float("nan")), 3),
                    round(c.get("nmi_segment_vs_substyle", float("nan")), 3),
                )
            ],
        )
    if "label" in results:
        largest = (
            ctx.store.read("segments")
            .orderBy(F.desc("size"), "segment_id")
            .limit(12)
            .select("segment_id", "size", "label", "keywords")
            .collect()
        )
        print_table(
            "largest segments",
            ["segment", "users", "label", "keywords"],
            [
                (r["segment_id"], r["size"], r["label"], ", ".join(r["keywords"][:5]))
                for r in largest
            ],
        )
