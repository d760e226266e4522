"""The stage registry: every stage once, in pipeline order.

One ``Stage`` row says what a stage is called, which function runs it, what its
``--help`` line says, which run inputs it takes and which commands run it. The
command line (its subcommands, ``--help``), ``run``, ``update``, ``demo`` and the
tests all read this table, so adding a stage means one row here plus its module
(``run_<stage>(spark, store, cfg, run, **inputs) -> StageResult``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from usersegments.errors import StageNotAvailable
from usersegments.runlog import StageResult

StageFn = Callable[..., StageResult]

# Commands that run a sequence of stages (``Stage.commands`` holds these names).
RUN = "run"
UPDATE = "update"
DEMO = "demo"


@dataclass(frozen=True)
class Stage:
    """One pipeline stage.

    ``inputs`` are the run inputs the stage function takes as keyword arguments
    (``events``, ``items``, ``truth``, ``recluster_now``, ``holdout_last``,
    ``promote``); the
    command line offers the matching options on the stage's own subcommand.
    ``commands`` are the pipeline commands that run it; ``after_recluster`` marks a
    stage that ``update`` runs only when the update re-clustered. ``before`` are
    stages its own subcommand runs first in the same run (their inputs become options
    of the subcommand too): ``tune`` ingests ``--events`` and embeds new texts first.
    """

    name: str
    module: str
    function: str
    help: str
    inputs: tuple[str, ...] = ()
    commands: frozenset[str] = frozenset()
    after_recluster: bool = False
    subcommand: bool = True
    before: tuple[str, ...] = ()

    def options(self) -> tuple[str, ...]:
        """The inputs its subcommand takes: those of the ``before`` stages, then its own."""
        names: dict[str, None] = {}
        for name in self.before:
            names.update(dict.fromkeys(_BY_NAME[name].inputs))
        names.update(dict.fromkeys(self.inputs))
        return tuple(names)

    def load(self) -> StageFn:
        """The stage's ``run_<stage>`` function, imported on first use (keeps ``--help``
        and the config commands free of Spark and torch imports)."""
        module = importlib.import_module(f"usersegments.{self.module}")
        return getattr(module, self.function)


_ALL = frozenset({RUN, UPDATE, DEMO})

# Pipeline order: a command runs its stages in this order.
STAGES: tuple[Stage, ...] = (
    Stage(
        "ingest",
        "ingest",
        "run_ingest",
        "raw event files -> events, events_rejected",
        inputs=("events", "items"),
        commands=_ALL,
    ),
    Stage(
        "embed",
        "embed",
        "run_embed",
        "distinct texts of events -> text_embeddings (cached by hash)",
        commands=_ALL,
    ),
    Stage(
        "profile",
        "profile",
        "run_profile",
        "events x text_embeddings -> user_profiles",
        commands=frozenset({RUN, DEMO}),
    ),
    Stage(
        "update",
        "dynamics",
        "run_update",
        "new events -> folded profiles, moved users, segment_history, drift",
        inputs=("recluster_now",),
        commands=frozenset({UPDATE}),
        subcommand=False,  # `usersegments update` is the whole update command
    ),
    Stage(
        "cluster",
        "cluster",
        "run_cluster",
        "user_profiles -> user_segments, segments",
        inputs=("truth",),
        commands=frozenset({RUN, DEMO}),
    ),
    Stage(
        "interests",
        "interests",
        "run_interests",
        "events x user_profiles x segments -> user_interests (several interests per user), "
        "segments.reach",
        commands=frozenset({RUN, DEMO}),
    ),
    Stage(
        "label",
        "label",
        "run_label",
        "segments -> keywords, representative items, labels",
        commands=_ALL,
        after_recluster=True,
    ),
    Stage(
        "recommend",
        "recommend",
        "run_recommend",
        "segments -> segment_recommendations",
        commands=_ALL,
    ),
    Stage(
        "evaluate",
        "evaluate",
        "run_evaluate",
        "hold out each user's last events and score recommenders (offline quality)",
        inputs=("holdout_last", "truth"),
        commands=frozenset({DEMO}),
    ),
    Stage(
        "tune",
        "tune",
        "run_tune",
        "(ingest --events, embed) hold out each user's last events, score settings drawn "
        "from tune.* -> tuning_trials, <output>/tuned.yaml (the best)",
        inputs=("holdout_last", "truth"),
        before=("ingest", "embed"),
    ),
    Stage(
        "finetune",
        "finetune.stage",
        "run_finetune",
        "(ingest --events, embed) pairs of what users engage with next -> a fine-tuned "
        "encoder version (TorchDistributor), scored before/after on held-out behaviour",
        inputs=("holdout_last", "truth", "promote"),
        before=("ingest", "embed"),
    ),
    Stage(
        "report",
        "report",
        "run_report",
        "tables -> <output>/report/index.html",
        commands=_ALL,
    ),
    Stage(
        "maintain",
        "maintain",
        "run_maintain",
        "every table -> compacted (z-ordered by its lookup key), checkpointed, old files vacuumed",
        commands=_ALL,
    ),
)

_BY_NAME = {stage.name: stage for stage in STAGES}


def get_stage(name: str) -> Stage:
    """The stage called ``name``; ``StageNotAvailable`` (exit 2) lists the others."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise StageNotAvailable(
            f"the '{name}' stage is not available in this version of usersegments; "
            f"available: {', '.join(sorted(_BY_NAME))}"
        ) from None


def stage_function(name: str) -> StageFn:
    """The ``run_<name>`` function of a stage, imported on first use."""
    return get_stage(name).load()


def stages_of(command: str, reclustered: bool = False) -> tuple[str, ...]:
    """Names of the stages ``command`` runs, in order. For ``update``, stages marked
    ``after_recluster`` are included only when ``reclustered``."""
    return tuple(
        stage.name
        for stage in STAGES
        if command in stage.commands
        and not (command == UPDATE and stage.after_recluster and not reclustered)
    )


def subcommand_stages() -> tuple[Stage, ...]:
    """The stages that have a subcommand of their own (``usersegments <stage>``)."""
    return tuple(stage for stage in STAGES if stage.subcommand)
