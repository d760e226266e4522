"""Runs stages in order: one stage, the full ``run``, ``update`` and ``demo``.

The pipeline knows stage names and their order; each stage module owns its
logic (``run_<stage>(spark, store, cfg, run, **options) -> StageResult``).
A stage this version does not provide raises ``StageNotAvailable``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pyspark.sql import SparkSession

from usersegments.config import Config
from usersegments.errors import StageNotAvailable
from usersegments.runlog import RunLog, StageResult
from usersegments.session import build_session
from usersegments.store import TableStore

log = logging.getLogger(__name__)

StageFn = Callable[..., StageResult]

# The full run, in order (ARCHITECTURE.md, data flow).
RUN_ORDER = ("ingest", "embed", "profile", "cluster", "label", "recommend", "report")


def stage_function(name: str) -> StageFn:
    """The ``run_<name>`` function of a stage, imported on first use."""
    registry: dict[str, tuple[str, str]] = {
        "ingest": ("ingest", "run_ingest"),
        "embed": ("embed", "run_embed"),
        "profile": ("profile", "run_profile"),
        "cluster": ("cluster", "run_cluster"),
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


def open_context(cfg: Config, command: str) -> Context:
    """Start (or reuse) the session, open the store and record a new run."""
    spark = build_session(cfg)
    store = TableStore.from_config(spark, cfg)
    run = RunLog(spark, store, cfg, command)
    run.start()
    log.info("run %s: %s on %s (backend %s)", run.run_id, command, store.root, store.backend)
    return Context(cfg=cfg, spark=spark, store=store, run=run)


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


def cli_run(cfg: Config, args: Any) -> int:
    """``usersegments run``: the stages of RUN_ORDER in one run."""
    for name in RUN_ORDER:
        stage_function(name)
    raise AssertionError("unreachable until every stage is available")


def cli_update(cfg: Config, args: Any) -> int:
    """``usersegments update``."""
    raise StageNotAvailable("'update' is not available in this version of usersegments")


def cli_evaluate(cfg: Config, args: Any) -> int:
    """``usersegments evaluate``."""
    raise StageNotAvailable("'evaluate' is not available in this version of usersegments")


def cli_demo(cfg: Config, args: Any) -> int:
    """``usersegments demo``: generate a small dataset, then run the available stages on it."""
    from pathlib import Path

    from usersegments.console import print_table, print_tables, say
    from usersegments.synthetic import GeneratorSettings, generate, write

    data = generate(GeneratorSettings(users=args.users, seed=args.seed))
    input_dir = Path(cfg.store.root) / "input"
    paths = write(data, input_dir)
    say(f"generated {len(data.events)} events of {args.users} users into {input_dir}")
    ctx = open_context(cfg, "demo")
    try:
        ingest = run_stage(ctx, "ingest", events=[paths["events_csv"]], items=paths["items"])
        embed = run_stage(ctx, "embed")
        run_stage(ctx, "profile")
        cluster = run_stage(ctx, "cluster", truth=paths["truth"])
    except BaseException:
        ctx.run.finish("failed")
        raise
    ctx.run.finish()
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
    print_tables(ctx.store)
    say(f"demo run {ctx.run.run_id}: tables under {ctx.store.root} (backend {ctx.store.backend})")
    return 0
