"""Interests: several interests per user, from their own events -> ``user_interests``.

A user's profile is one vector; a user into two areas gets a vector between them. Here
each clustered user's most recent ``interests.max_events_per_user`` events, weighted
as the profile weighs them (type x time decay anchored at the user's latest event x
value), are grouped by Ward agglomerative clustering of their unit vectors (per user,
in a ``mapInPandas`` over user-sorted partitions): the dendrogram is split from the top
while its two sides' centroids are further apart than ``interests.distance_threshold``,
into at most ``interests.max_per_user`` groups. Each group is an interest: its share of the user's
decayed weighted engagement (below ``interests.min_weight`` dropped, the rest
renormalised), its weighted unit centroid, event count and latest event, and the
nearest existing segment to that centroid. ``segments.reach`` counts the users with an
interest in each segment.

``update`` recomputes the interests of the users whose profile took new events, and only
theirs (``refresh``): their rows are replaced as a group, so a user who lost an interest
keeps no stale row, and ``segments.reach`` follows.

Modules:

- ``events``: the capped, weighted events of the clusterable users.
- ``local``: one user's interests (numpy/scipy), run per user by ``apply_per_key``.
- ``assign``: the nearest segment of each interest (``cluster.assign_to_segments``).
- ``metrics``: users by number of interests, the mean per user.
- ``reach``: ``segments.reach``, the users with a segment as one of their interests;
  ``co_interest``, the users two segments share as interests (the report's heat map).
- ``stage``: ``run_interests``; ``found_interests``/``interest_rows``, shared with ``refresh``.
- ``refresh``: the update's step: the users with new events recomputed, their rows merged.
"""

from __future__ import annotations

from usersegments.interests.local import (
    INTEREST_SCHEMA,
    InterestRule,
    event_groups,
    interests_of_users,
    user_interests,
)
from usersegments.interests.stage import run_interests

__all__ = [
    "INTEREST_SCHEMA",
    "InterestRule",
    "event_groups",
    "interests_of_users",
    "run_interests",
    "user_interests",
]
