"""spark-submit entry point: the full run, ingest -> embed -> profile -> cluster ->
label -> recommend -> report.

    spark-submit --master local[2] jobs/run_pipeline.py --config conf/local.yaml \
        --events data/events.csv --items data/items.parquet --output output/run

Same options as ``usersegments run`` (``--help`` lists them); all logic lives in
lib/usersegments.
"""

import sys

from usersegments.cli import job_main

if __name__ == "__main__":
    sys.exit(job_main("run"))
