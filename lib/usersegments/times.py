"""Instants on the driver, always timezone-aware UTC.

PySpark's ``collect()`` turns a ``TimestampType`` value into a *naive* datetime in
the driver process's local time zone, whatever ``spark.sql.session.timeZone`` says.
Code that took such a value for UTC shifted ``as_of`` by the zone's offset on any
driver not set to UTC. Every instant that leaves Spark goes through here instead.
"""

from __future__ import annotations

from datetime import datetime, timezone

from pyspark.sql import DataFrame
from pyspark.sql import functions as F


def setting_utc(value: datetime) -> datetime:
    """A time from the config or the command line: one given without a zone is UTC."""
    return value.astimezone(timezone.utc) if value.tzinfo else value.replace(tzinfo=timezone.utc)


def collected_utc(value: datetime) -> datetime:
    """A timestamp collected from Spark (naive = the driver's local time) as UTC."""
    return value.astimezone(timezone.utc)


def from_epoch_micros(micros: int) -> datetime:
    """Microseconds since the Unix epoch as an aware UTC datetime."""
    return datetime.fromtimestamp(micros / 1_000_000, tz=timezone.utc)


def max_time(df: DataFrame, column: str) -> datetime | None:
    """The latest value of a timestamp column as aware UTC (None when it has no value).

    Computed as epoch microseconds inside Spark, so neither the session's nor the
    driver's time zone can shift it.
    """
    micros = df.agg(F.max(F.unix_micros(F.col(column)))).first()[0]
    return None if micros is None else from_epoch_micros(int(micros))
