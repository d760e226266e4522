"""spark-submit entry point: fold new events into existing segments (incremental
update, history, drift; re-clusters with stable ids when drift is high).

    spark-submit --master local[2] jobs/update_segments.py --config conf/local.yaml \
        --events data/new_events.csv --output output/run [--recluster]

Same options as ``usersegments update`` (``--help`` lists them); all logic lives in
lib/usersegments.
"""

import sys

from usersegments.cli import job_main

if __name__ == "__main__":
    sys.exit(job_main("update"))
