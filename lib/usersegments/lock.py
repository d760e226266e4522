"""One run at a time per store root: a lock file, with stale-lock recovery.

Two commands writing the same output at once would interleave their commits
(an update folding events while a full run rewrites the profiles). Every
command that opens a run first creates ``<root>/_usersegments.lock``
atomically (``O_CREAT | O_EXCL``), holding the run id, command, host and pid,
and refreshes its modification time while it runs. A second command waits up
to ``store.lock_wait_seconds`` and then stops with a message naming the run
that holds the root. A lock is stale, and taken over with a warning, when its
process is gone (same host) or it was not refreshed for
``store.lock_stale_seconds`` (a crashed run elsewhere).

The lock needs a filesystem with atomic exclusive create: local and mounted
paths. On object-store roots (``s3://``, ``abfss://``, ...) there is none;
there Delta's optimistic concurrency rejects conflicting commits instead.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

from usersegments.config import StoreConfig
from usersegments.errors import UserSegmentsError
from usersegments.paths import is_local, local_path

log = logging.getLogger(__name__)

LOCK_FILE = "_usersegments.lock"


class RunLocked(UserSegmentsError):
    """Another run holds the store root."""

    exit_code = 3


class RunLock:
    """The lock of one run on one store root; use as a context manager or
    ``acquire``/``release``."""

    def __init__(self, root: str, run_id: str, command: str, cfg: StoreConfig) -> None:
        self.path = lock_path(root)
        self.run_id = run_id
        self.command = command
        self.wait_seconds = cfg.lock_wait_seconds
        self.stale_seconds = cfg.lock_stale_seconds
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self.held = False

    def acquire(self) -> RunLock:
        """Take the lock, waiting up to ``lock_wait_seconds``; raise ``RunLocked`` after."""
        if self.path is None:
            log.debug("store root is an object store: no run lock (Delta guards commits)")
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.wait_seconds
        while True:
            if self._try_create():
                break
            holder = read_holder(self.path)
            if self._is_stale(holder):
                log.warning("taking over a stale run lock %s held by %s", self.path, holder)
                self._remove_stale()
                continue
            if time.monotonic() >= deadline:
                raise RunLocked(
                    f"{self.path.parent} is in use by run {holder.get('run_id', '?')} "
                    f"({holder.get('command', '?')}, pid {holder.get('pid', '?')} on "
                    f"{holder.get('host', '?')}, since {holder.get('started_at', '?')}); wait for "
                    "it to finish, raise store.lock_wait_seconds to queue behind it, or, if "
                    f"that run is dead, delete {self.path}"
                )
            time.sleep(min(2.0, max(0.1, deadline - time.monotonic())))
        self.held = True
        self._heartbeat = threading.Thread(target=self._beat, name="run-lock", daemon=True)
        self._heartbeat.start()
        return self

    def release(self) -> None:
        """Give the lock back (only if this run still holds it)."""
        self._stop.set()
        if not self.held or self.path is None:
            return
        self.held = False
        if read_holder(self.path).get("run_id") == self.run_id:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _try_create(self) -> bool:
        assert self.path is not None
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        holder = {
            "run_id": self.run_id,
            "command": self.command,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(holder, out)
        return True

    def _is_stale(self, holder: dict) -> bool:
        assert self.path is not None
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return False  # released meanwhile: the next try creates it
        if age > self.stale_seconds:
            return True
        if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
            return not _process_alive(holder["pid"])
        return False

    def _remove_stale(self) -> None:
        # Rename first: of two runs taking over at once, only one rename succeeds.
        assert self.path is not None
        tomb = self.path.with_name(f"{LOCK_FILE}.stale-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(self.path, tomb)
            tomb.unlink(missing_ok=True)
        except FileNotFoundError:
            pass

    def _beat(self) -> None:
        interval = max(1.0, self.stale_seconds / 4)
        while not self._stop.wait(interval):
            try:
                os.utime(self.path)
            except OSError:
                return


def lock_path(root: str) -> Path | None:
    """The lock file of a store root; None for object-store roots (no atomic create)."""
    if not is_local(root):
        return None
    return local_path(root) / LOCK_FILE


def read_holder(path: Path) -> dict:
    """What a lock file says about its holder ({} when unreadable or gone)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (one owned by another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
