"""What changed between the last two runs, one sentence per big change."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from usersegments.report.history import History, flows

MAX_CHANGES = 8  # sentences on the overview, largest first
MIN_USERS_SHARE = 0.01  # a change concerns at least this share of all users


@dataclass
class Change:
    """One sentence of news; ``segment`` links it to that segment's page."""

    text: str
    users: int
    segment: str | None = None


def changes(history: History, described: set[str], min_share: float) -> list[Change]:
    """Big changes from the previous run to the latest, largest first.

    A segment that grew or shrank by at least ``min_share`` of its size and by 1% of all
    users, segments born and ended, relabelled segments, and users who moved.
    """
    if len(history.runs) < 2:
        return []
    last = len(history.runs) - 1
    snaps = history.snapshots
    before = snaps[snaps["run"] == last - 1].set_index("segment_id")
    after = snaps[snaps["run"] == last].set_index("segment_id")
    floor = max(1, int(MIN_USERS_SHARE * max(after["size"].sum(), 1)))
    found = _size_changes(before, after, described, min_share, floor)
    found += _label_changes(before, after, described)
    if last - 1 in history.path_runs:
        found += _moves(flows(history, last - 1, last), int(after["size"].sum()))
    found = [c for c in found if c.users >= floor or c.segment is None]
    return sorted(found, key=lambda c: -c.users)[:MAX_CHANGES]


def _name(seg: str, rows: pd.DataFrame, described: set[str]) -> str:
    label = rows.loc[seg, "label"] if seg in rows.index else None
    return f"segment {seg} '{label}'" if label and seg in described else f"segment {seg}"


def _size_changes(
    before: pd.DataFrame, after: pd.DataFrame, described: set[str], min_share: float, floor: int
) -> list[Change]:
    out = []
    for seg in after.index.union(before.index):
        old = int(before["size"].get(seg, 0))
        new = int(after["size"].get(seg, 0))
        if old == 0 and new:
            text = f"new {_name(seg, after, described)} with {new:,} users"
        elif new == 0 and old:
            text = f"{_name(seg, before, described)} ended ({old:,} users before)"
        elif abs(new - old) >= max(min_share * old, floor):
            verb = "grew" if new > old else "shrank"
            text = (
                f"{_name(seg, after, described)} {verb} {abs(new - old) / old:.0%} "
                f"({old:,} → {new:,} users)"
            )
        else:
            continue
        out.append(Change(text, abs(new - old), seg if new else None))
    return out


def _label_changes(before: pd.DataFrame, after: pd.DataFrame, described: set[str]) -> list[Change]:
    out = []
    for seg in after.index.intersection(before.index):
        old, new = before.loc[seg, "label"], after.loc[seg, "label"]
        if seg in described and old and new and old != new:
            users = int(after.loc[seg, "size"])
            out.append(Change(f"segment {seg} is now '{new}' (was '{old}')", users, seg))
    return out


def _moves(moved: pd.DataFrame, total: int) -> list[Change]:
    known = moved.dropna(subset=["source", "target"])
    changed = int(known.loc[known["source"] != known["target"], "users"].sum())
    new_users = int(moved.loc[moved["source"].isna() & moved["target"].notna(), "users"].sum())
    out = []
    if changed:
        share = changed / max(total, 1)
        out.append(Change(f"{changed:,} users ({share:.1%}) changed segment", changed))
    if new_users:
        out.append(Change(f"{new_users:,} new users were segmented", new_users))
    return out
