"""Cluster: ``user_profiles`` -> ``user_segments`` + ``segments``, in two levels.

1. Coarse: Spark MLlib ``BisectingKMeans`` with cosine distance; ``k`` fixed or
   chosen from ``cluster.k_candidates`` by cosine silhouette on a sample. Users with
   too few events for a segment still weigh in the fit, by their evidence
   (``cluster.fit_few_event_users``).
2. Fine: inside each coarse cluster, ``groupBy(cluster_id).applyInPandas`` runs
   scikit-learn ``AgglomerativeClustering``. A cluster larger than
   ``cluster.sub.max_local_points`` is handled in bounded memory: fit on a
   random sample of that size, take the sub-group centroids, assign every
   member to its nearest centroid. Segments smaller than
   ``privacy.min_segment_size`` are merged into their nearest sibling, and any
   still too small (a whole cluster below the size) into the nearest segment
   overall: no segment ever describes fewer users than that.

Segment ids read ``c{cluster:02d}.s{sub:02d}``; sub-segments are numbered by size.

Modules:

- ``features``: the ``features`` column, which users are clusterable, the coarse fit's
  weighted population, optional PCA.
- ``coarse``: bisecting k-means leaves merged back to k (``fit_coarse``, ``CoarseResult``).
- ``local``: agglomerative sub-groups per coarse cluster (numpy/scikit-learn).
- ``segments``: segment centroids, the size floor across clusters, ``segments`` rows.
- ``assign``: nearest-segment assignment, shared by a full run and updates.
- ``stage``: ``cluster_users``, the ``run_cluster`` stage and its quality figures.
"""

from __future__ import annotations

from usersegments.cluster.assign import (
    ASSIGNMENT_SCHEMA,
    assign_to_segments,
    cluster_centroids,
    nearest_segment_frame,
    segment_id,
    settle_to_nearest,
    unit_rows,
)
from usersegments.cluster.coarse import CoarseResult, fit_coarse, merge_leaves
from usersegments.cluster.features import FEATURES, clustering_population, reduce_dimensions
from usersegments.cluster.local import (
    SUBCLUSTER_SCHEMA,
    fine_segments,
    fit_subgroups,
    merge_small,
    subcluster_group,
)
from usersegments.cluster.segments import merge_undersized
from usersegments.cluster.stage import ClusterOutput, cluster_users, run_cluster

__all__ = [
    "ASSIGNMENT_SCHEMA",
    "FEATURES",
    "SUBCLUSTER_SCHEMA",
    "ClusterOutput",
    "CoarseResult",
    "assign_to_segments",
    "cluster_centroids",
    "cluster_users",
    "clustering_population",
    "fine_segments",
    "fit_coarse",
    "fit_subgroups",
    "merge_leaves",
    "merge_small",
    "merge_undersized",
    "nearest_segment_frame",
    "reduce_dimensions",
    "run_cluster",
    "segment_id",
    "settle_to_nearest",
    "subcluster_group",
    "unit_rows",
]
