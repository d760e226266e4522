"""The few exception types usersegments raises on purpose.

Every message names the thing that is wrong (a config key, a column, a table)
and the fix, so the command line can print it as one line and exit non-zero.
"""

from __future__ import annotations


class UserSegmentsError(Exception):
    """Base of every error the product raises deliberately (never for bugs)."""

    exit_code = 1


class ConfigError(UserSegmentsError, ValueError):
    """A config file, a ``--set`` override or a setting's value is invalid."""

    exit_code = 2


class InputError(UserSegmentsError, ValueError):
    """Input files, columns or the data in them cannot be used as given (no events to
    profile, too few users to cluster, an option out of range on the command line)."""

    exit_code = 2


class SchemaMismatchError(UserSegmentsError, ValueError):
    """Rows written to an existing table do not have that table's schema."""


class StoreError(UserSegmentsError):
    """The table store cannot do what was asked (backend missing, unreadable table...)."""


class ChangeFeedUnavailable(StoreError):
    """A table's change data feed cannot give the rows asked for: the table was created
    without ``delta.enableChangeDataFeed``, or the versions are no longer readable
    (vacuumed files, expired log entries). Callers fall back to reading the table."""


class MissingTableError(StoreError):
    """A stage needs a table that an earlier stage has not written yet; the message
    names the table and the command that writes it."""

    exit_code = 2


class StageNotAvailable(UserSegmentsError):
    """A command whose stage this version of usersegments does not provide."""

    exit_code = 2


class InvariantViolation(UserSegmentsError):
    """A reconciliation check failed: data would have been lost or duplicated."""


class SetupError(UserSegmentsError):
    """The machine lacks something the run needs (Java, a model, Delta jars)."""


class ResourceError(UserSegmentsError):
    """Spark ran out of a resource (Java heap) while a stage ran; the message names the
    stage, the settings that size it and the command that goes on from there."""
