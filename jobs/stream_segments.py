"""spark-submit entry point: continuous updates with Structured Streaming (every
micro-batch of new events runs the update's stages, exactly once).

    spark-submit --master local[2] jobs/stream_segments.py --config conf/local.yaml \
        --source data/landing --items data/items.parquet --output output/run \
        [--trigger processingTime]

Same options as ``usersegments stream`` (``--help`` lists them); all logic lives in
lib/usersegments.
"""

import sys

from usersegments.cli import job_main

if __name__ == "__main__":
    sys.exit(job_main("stream"))
