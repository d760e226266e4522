"""Finetune: adapt the encoder to what the platform's users do (opt-in).

``usersegments finetune`` holds out each user's last events, pairs each training
event with what the same user engaged with next (popular texts down-sampled), and
fine-tunes the configured encoder on those pairs with an in-batch contrastive loss
through Spark's TorchDistributor (one process on a laptop, several processes or GPUs
on a cluster, the same code). The result is a new version under
``<store.root>/models/encoder``; it is scored against the current encoder on the
held-out events and becomes ``embed.model: finetuned:latest`` with ``--promote`` (or
``finetune.promote: auto`` and a better score). Nothing else changes unless a
fine-tuned model is selected; its vectors are cached under their own model id.

Modules:

- ``pairs``: the training pairs, in Spark (window, recency cap, popular down-sampling).
- ``train``: the function each training process runs (sampling, loss, checkpoints).
- ``versions``: the version folders, ``finetuned:`` names, promotion, metadata.
- ``stage``: the ``run_finetune`` stage: pairs table, training, before/after, promotion.
"""

# Nothing is imported here: ``embed.model`` resolves ``finetuned:`` names through
# ``versions`` and must not pull in the stage (which imports embed). The registry
# loads ``finetune.stage``.
