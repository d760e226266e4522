"""Instants do not depend on the driver's time zone.

PySpark's ``collect()`` returns timestamps as naive datetimes in the driver
process's local zone. A driver in Asia/Shanghai (UTC+8) must still record the same
``as_of`` as one in UTC: the latest event's instant.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

import pytest
from pyspark.sql import functions as F

from tests.conftest import make_config, set_args
from usersegments import cli
from usersegments.store import TableStore
from usersegments.times import collected_utc, max_time, setting_utc

LATEST = datetime(2024, 3, 10, 23, 30, tzinfo=timezone.utc)
ZONES = ("UTC", "Asia/Shanghai")


@pytest.fixture
def driver_zone(monkeypatch):
    """Switch this Python process's local time zone (what ``collect()`` converts to)."""

    def switch(zone: str) -> None:
        monkeypatch.setenv("TZ", zone)
        time.tzset()

    yield switch
    monkeypatch.undo()
    time.tzset()


def _events_csv(path):
    rows = [
        ("u1", "2024-03-01T08:00:00Z", "cycling gloves for winter"),
        ("u1", "2024-03-05T12:00:00Z", "road bike lights"),
        ("u2", "2024-03-02T09:00:00Z", "espresso beans dark roast"),
        ("u2", LATEST.strftime("%Y-%m-%dT%H:%M:%SZ"), "milk frother"),
    ]
    path.write_text(
        "user_id,event_time,event_type,item_id,text\n"
        + "".join(f"{u},{t},view,{i},{x}\n" for i, (u, t, x) in enumerate(rows)),
        encoding="utf-8",
    )
    return path


def test_max_time_is_the_same_instant_in_any_driver_zone(spark, driver_zone):
    frame = spark.createDataFrame([(LATEST,)], "t timestamp")
    seen = {}
    for zone in ZONES:
        driver_zone(zone)
        seen[zone] = max_time(frame, "t")
        assert collected_utc(frame.first()["t"]) == LATEST, zone
    assert seen == {zone: LATEST for zone in ZONES}
    assert max_time(frame.filter(F.lit(False)), "t") is None


def test_a_setting_without_zone_is_utc():
    assert setting_utc(datetime(2024, 3, 10, 23, 30)) == LATEST
    shanghai = datetime(2024, 3, 11, 7, 30, tzinfo=timezone.utc).astimezone()
    assert setting_utc(shanghai) == datetime(2024, 3, 11, 7, 30, tzinfo=timezone.utc)


@pytest.mark.slow
def test_profile_as_of_does_not_shift_with_the_driver_zone(spark, tmp_path, driver_zone):
    events = _events_csv(tmp_path / "events.csv")
    as_of = {}
    for zone in ZONES:
        driver_zone(zone)
        root = tmp_path / zone.replace("/", "_")
        common = ["--output", str(root), *set_args()]
        for stage in (["ingest", "--events", str(events)], ["embed"], ["profile"]):
            assert cli.main([*stage, *common]) == 0, (zone, stage)
        store = TableStore.from_config(spark, make_config(root))
        as_of[zone] = max_time(store.read("user_profiles"), "as_of")
    assert as_of == {zone: LATEST for zone in ZONES}
