"""spark-submit entry point: offline quality figures of an existing output (hold out
each user's last events; hit rate and recall of segment recommendations).

    spark-submit --master local[2] jobs/evaluate.py --config conf/local.yaml \
        --output output/run [--holdout-last 2] [--truth data/truth.parquet]

Same options as ``usersegments evaluate`` (``--help`` lists them); all logic lives in
lib/usersegments.
"""

import sys

from usersegments.cli import job_main

if __name__ == "__main__":
    sys.exit(job_main("evaluate"))
