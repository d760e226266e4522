"""Which events an update reads: only those committed since the stored profiles' events
version, through the events table's change data feed, or the whole table.

The **events version** of the stored profiles is the events table version V such that
every event committed at V or before is folded into ``user_profiles``. The profile
stage records it (``events_version`` in ``run_metrics``: the version it read), and so
does every update, after its fold is committed. An update then reads only the rows
inserted by the commits after V (``TableStore.inserted_since``): the events of every
later ingest, of a crashed run's too.

Correctness never rests on it: the fold still keeps only a user's events ingested
after the profile's ``events_through`` (``fold.pending_events``), so a version that
lags (a crash between the fold's commit and ``run_metrics``, a full run whose metrics
were lost) only makes an update read more rows, never fold one twice. A version is
only ever recorded after what it claims is committed, and an update that leaves
pending events unfolded (texts without a vector yet) does not move it.

The whole table is read instead, with the reason logged and recorded, when
``update.read_changes`` is off, no version is recorded (a store from before it, a
full run that left events without a vector), the recorded version is past the table's
(the table was replaced), the table does not record its changes (created before
``delta.enableChangeDataFeed``), or the feed of those versions cannot be read any more
(vacuumed files, expired log entries).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

from py4j.protocol import Py4JError
from pyspark.errors import PySparkException
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from usersegments.errors import ChangeFeedUnavailable
from usersegments.profile import EVENTS_VERSION, NO_EVENTS_VERSION
from usersegments.runlog import RunLog
from usersegments.schema import records_changes
from usersegments.store import TableStore

log = logging.getLogger(__name__)

# The stages that record the events version (profile.EVENTS_VERSION).
VERSION_STAGES = ("profile", "update")

# Why an update read the whole events table (recorded as events_full_scan.<reason>).
DISABLED = "disabled"
NO_VERSION = "no_recorded_version"
VERSION_AHEAD = "version_ahead_of_table"
NO_FEED = "no_change_data_feed"
FEED_UNREADABLE = "feed_unreadable"
FULL_SCAN_REASONS = (DISABLED, NO_VERSION, VERSION_AHEAD, NO_FEED, FEED_UNREADABLE)


@dataclass(frozen=True)
class EventsRead:
    """The events an update reads, and how.

    ``frame``: the rows (only those inserted after ``after_version`` when
    ``via_changes``, else the whole table); ``through_version``: the events version
    they reach; ``held_version``: the recorded version still valid before this read
    (None when there is none); ``full_scan_reason``: why the whole table was read.
    """

    frame: DataFrame
    rows_read: int
    through_version: int
    held_version: int | None
    full_scan_reason: str | None = None

    @property
    def via_changes(self) -> bool:
        """Whether only the changes since ``held_version`` were read."""
        return self.full_scan_reason is None

    def metrics(self) -> dict[str, float]:
        """``run_metrics`` entries: which path, rows read, the version range."""
        out: dict[str, float] = {
            "events_read_via_changes": int(self.via_changes),
            "events_rows_read": self.rows_read,
            "events_read_through_version": self.through_version,
        }
        if self.via_changes:
            out["events_read_after_version"] = self.held_version
        else:
            out[f"events_full_scan.{self.full_scan_reason}"] = 1
        return out


def recorded_events_version(store: TableStore, run: RunLog | None = None) -> int | None:
    """The latest events version recorded by a profile or update stage (this ``run``'s
    queued one first); None when none is recorded or the latest could not vouch."""
    queued = [run.queued(stage, EVENTS_VERSION) for stage in VERSION_STAGES] if run else []
    value = next((v for v in queued if v is not None), None)
    if value is None and store.exists("run_metrics"):
        row = (
            store.read("run_metrics")
            .filter(F.col("stage").isin(*VERSION_STAGES) & (F.col("metric") == EVENTS_VERSION))
            .orderBy(F.desc("recorded_at"))
            .select("value")
            .first()
        )
        value = None if row is None else row["value"]
    if value is None or value < 0:
        return None
    return int(value)


@contextmanager
def events_to_fold(
    store: TableStore, run: RunLog, columns: Sequence[str], read_changes: bool
) -> Iterator[EventsRead]:
    """Context manager: the events an update folds from (see the module), as ``columns``.

    The changes since the recorded version when ``read_changes`` and the feed can give
    them, else the whole table; the frame is valid inside the context only.
    """
    through = store.version("events")
    held = recorded_events_version(store, run)
    reason = _full_scan_reason(store, read_changes, held, through)
    with ExitStack() as stack:
        read = None
        if reason is None and held is not None:
            read = _read_changes(store, stack, columns, held, through)
            reason = None if read is not None else FEED_UNREADABLE
        if read is None:
            read = _read_whole(store, columns, through, held, reason or NO_VERSION)
        log.info(
            "update: read %d events %s",
            read.rows_read,
            f"committed after events version {held} (change data feed)"
            if read.via_changes
            else f"of the whole table ({read.full_scan_reason})",
        )
        yield read


def _full_scan_reason(
    store: TableStore, read_changes: bool, held: int | None, through: int
) -> str | None:
    """Why the changes cannot be read (None when they may be)."""
    if not read_changes:
        return DISABLED
    if held is None:
        return NO_VERSION
    if not records_changes(store.properties("events")):
        log.warning(
            "update: the events table does not record its changes (created before "
            "delta.enableChangeDataFeed?); reading the whole table"
        )
        return NO_FEED
    if held > through:
        log.warning(
            "update: the recorded events version %d is past the table's %d (was the events "
            "table replaced?); reading the whole table",
            held,
            through,
        )
        return VERSION_AHEAD
    return None


def _read_changes(
    store: TableStore, stack: ExitStack, columns: Sequence[str], held: int, through: int
) -> EventsRead | None:
    """The rows inserted after ``held``, counted (which computes them, so that an
    unreadable feed shows here and not in the fold); None when the feed cannot give them."""
    try:
        rows = stack.enter_context(store.inserted_since("events", held, through, columns))
        count = rows.count()
    except ChangeFeedUnavailable as error:
        log.warning("update: %s; reading the whole events table", error)
        return None
    except (PySparkException, Py4JError) as error:
        # A file of those versions vacuumed since, or a log entry expired: the whole
        # table is always a correct (if slower) source.
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        log.warning(
            "update: the events change data feed failed (%s); reading the whole table", first
        )
        return None
    return EventsRead(rows, count, through, held)


def _read_whole(
    store: TableStore, columns: Sequence[str], through: int, held: int | None, reason: str
) -> EventsRead:
    """Every event (the fold keeps the pending ones); ``events_to_fold`` logs ``reason``."""
    frame = store.read("events").select(*columns)
    # A version recorded past the table's vouches for nothing about this table.
    valid = held if held is not None and held <= through else None
    return EventsRead(frame, frame.count(), through, valid, reason)


def version_to_record(read: EventsRead, unfolded: int) -> int:
    """The events version an update records once its fold is committed: the one it read
    through, unless ``unfolded`` pending events (no vector yet) stayed out of the fold;
    then the version held before (they must be read again by the next update)."""
    if unfolded == 0:
        return read.through_version
    log.info(
        "update: %d pending events have no vector yet; the events version stays at %s",
        unfolded,
        read.held_version,
    )
    return read.held_version if read.held_version is not None else NO_EVENTS_VERSION
