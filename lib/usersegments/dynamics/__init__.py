"""Dynamics: incremental updates, segment history, drift, re-clustering with stable ids.

``usersegments update --events NEW`` is one run made of idempotent
reconciliations, so a crash anywhere leaves committed tables and a rerun
finishes the work without duplicates:

1. **ingest** the new files (events MERGE on event_id) and **embed** texts not
   in the cache;
2. **fold** into ``user_profiles`` the events each user has that the profile
   does not hold yet (``run_id > events_through``), reading only the events
   committed since the events version the profiles hold (the change data feed,
   see ``changes``; the whole table when it cannot), without re-reading old
   events: ``S_new = S_old * exp(-ln2 * dt / half_life) + sum(w_i v_i)``, the
   same for the total weight, ``dt`` moving the sum from the user's old decay anchor
   (latest event) to the new one and each new event weighted relative to the new
   anchor (see ``fold``), with the half-life the full run recorded; new users get
   profiles. The fold and the
   ``events_through`` marker are one row, so a profile never folds an event twice;
3. **assign** every user whose profile is newer than their segment row to the
   nearest coarse cluster (cosine to its centroid, the size-weighted mean of its
   segments'), then the nearest segment centroid inside it (the rule of
   ``cluster.nearest_segment_frame``, which a full run settles users by), with
   hysteresis (``update.move_margin``) and an evidence floor (``update.min_new_events``
   events since the user entered their segment), and MERGE ``user_segments``;
4. **history**: ``segment_history`` is a type-2 slowly changing dimension; any
   user whose open row disagrees with ``user_segments`` gets it closed
   (``valid_to``) and a new one opened (seeded from the first full run);
5. **drift** metrics go to ``run_metrics``; when the share of moved users
   exceeds ``update.recluster_threshold`` (or with ``--recluster``) every
   profile is re-clustered and new segments are **matched** to old ones
   (Hungarian on centroid cosine): a segment that still exists keeps its id,
   new ones get fresh ids, and ``segment_lineage`` records what continued,
   was born, split, merged or ended.

Modules:

- ``changes``: which events an update reads (the change data feed since the
  recorded events version, or the whole table, and why) (step 2);
- ``fold``: pending events and folding them into the stored profile sums (step 2);
- ``assign``: stale users and their nearest-segment reassignment (step 3);
- ``history``: SCD2 ``segment_history`` changes and reconciliation (step 4);
- ``drift``: moved users, novelty, segment size change, size refresh (step 5);
- ``recluster``: Hungarian matching of segments, stable ids, lineage, re-clustering (step 5);
- ``stage``: ``run_update``, the ``update`` stage, running the steps in order.
"""

from usersegments.dynamics.recluster import match_segments
from usersegments.dynamics.stage import run_update

__all__ = ["match_segments", "run_update"]
