"""One run at a time per store root: the run lock, waiting, stale-lock recovery."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from tests.conftest import _TEST_OVERRIDES
from usersegments.cli import main
from usersegments.config import StoreConfig
from usersegments.lock import LOCK_FILE, RunLock, RunLocked, lock_path, read_holder


def foreign_lock(root, host="another-host", age_seconds=0.0):
    """A lock file as another machine's run would leave it."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / LOCK_FILE
    holder = {"run_id": "other-run", "command": "update", "pid": 1, "host": host}
    path.write_text(json.dumps({**holder, "started_at": "2026-11-24T00:00:00+00:00"}))
    past = time.time() - age_seconds
    os.utime(path, (past, past))
    return path


def test_a_second_run_is_refused_then_admitted_after_release(tmp_path):
    first = RunLock(str(tmp_path), "run-a", "run", StoreConfig()).acquire()
    assert read_holder(tmp_path / LOCK_FILE)["run_id"] == "run-a"
    with pytest.raises(RunLocked, match="in use by run run-a"):
        RunLock(str(tmp_path), "run-b", "update", StoreConfig()).acquire()
    first.release()
    assert not (tmp_path / LOCK_FILE).exists()
    with RunLock(str(tmp_path), "run-b", "update", StoreConfig()):
        assert read_holder(tmp_path / LOCK_FILE)["run_id"] == "run-b"


def test_a_waiting_run_starts_when_the_holder_finishes(tmp_path):
    first = RunLock(str(tmp_path), "run-a", "run", StoreConfig()).acquire()
    threading.Timer(1.0, first.release).start()
    waiting = RunLock(str(tmp_path), "run-b", "update", StoreConfig(lock_wait_seconds=30))
    started = time.monotonic()
    with waiting:
        assert read_holder(tmp_path / LOCK_FILE)["run_id"] == "run-b"
    assert time.monotonic() - started >= 0.9


def test_stale_locks_are_taken_over(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    path = foreign_lock(tmp_path, host=os.uname().nodename)
    holder = json.loads(path.read_text())
    path.write_text(json.dumps({**holder, "pid": int(dead.stdout)}))  # its process is gone
    with RunLock(str(tmp_path), "run-b", "run", StoreConfig()):
        assert read_holder(path)["run_id"] == "run-b"
    foreign_lock(tmp_path, age_seconds=3600)  # another machine, not refreshed for an hour
    with RunLock(str(tmp_path), "run-c", "run", StoreConfig(lock_stale_seconds=600)):
        assert read_holder(path)["run_id"] == "run-c"
    foreign_lock(tmp_path, age_seconds=10)  # another machine, alive
    with pytest.raises(RunLocked):
        RunLock(str(tmp_path), "run-d", "run", StoreConfig(lock_stale_seconds=600)).acquire()


def test_object_store_roots_take_no_lock():
    lock = RunLock("s3://bucket/usersegments", "run-a", "run", StoreConfig()).acquire()
    assert lock.path is None
    lock.release()


def test_lock_path_of_local_and_object_store_roots(tmp_path):
    assert lock_path(str(tmp_path)) == tmp_path / LOCK_FILE
    assert lock_path(f"file://{tmp_path}") == tmp_path / LOCK_FILE
    assert lock_path("abfss://c@acct.dfs.core.windows.net/segments") is None


def test_a_command_on_a_locked_root_stops_before_writing(spark, tmp_path, capsys):
    root = tmp_path / "store"
    foreign_lock(root)
    overrides = [arg for o in _TEST_OVERRIDES for arg in ("--set", o)]
    code = main(["embed", "--output", str(root), *overrides])
    assert code == RunLocked.exit_code == 3
    err = capsys.readouterr().err
    assert "in use by run other-run" in err and LOCK_FILE in err
    assert sorted(p.name for p in root.iterdir()) == [LOCK_FILE]  # nothing written
