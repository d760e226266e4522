"""Spark's Python worker daemon with the embedding libraries imported once.

Spark forks every Python worker from one daemon process per executor. Importing
torch, transformers' BERT code and ONNX Runtime costs seconds; done here, before the fork,
every worker inherits it, so a model-serving task starts in milliseconds
instead of paying the import again. Enabled in local mode through
``spark.python.daemon.module`` (see ``session.session_conf``); on a cluster
add ``--conf spark.python.daemon.module=usersegments.worker_daemon`` when the
wheel is installed on the executors.
"""

from __future__ import annotations


def _preload() -> None:
    # Import only: no thread pools or CUDA contexts exist before the fork.
    try:
        import torch  # noqa: F401
        import transformers.models.bert.modeling_bert  # noqa: F401
        from transformers import AutoModel, AutoTokenizer  # noqa: F401
    except ImportError:  # a worker without the embedding extras still serves other UDFs
        pass
    try:
        import onnxruntime  # noqa: F401  (embed.runtime auto's CPU path)
    except ImportError:  # a worker without the embedding extras still serves other UDFs
        pass


if __name__ == "__main__":
    _preload()
    from pyspark.daemon import manager

    manager()
