"""The training function TorchDistributor runs in each training process.

Every process reads its share of the ``finetune_pairs`` Delta table itself (no
collect to the driver) and keeps a weighted sample of exactly the pairs its steps
need (``max_steps x batch_size``, weighted reservoir sampling): memory follows the
training budget, never the table. The loss is the in-batch contrastive loss of
two-tower retrieval (both directions): each text must find its pair among the
batch's other texts, cosine similarity over ``temperature``, with the mean pooling
the embed stage uses. Pairs that share a text are not each other's negatives.

Rank 0 checkpoints every ``checkpoint_every`` steps into ``<version>/checkpoint``; a
rerun of an unfinished version resumes from it. Training stops at ``max_steps`` or
when ``max_minutes`` have passed, then rank 0 saves the model folder.
"""

from __future__ import annotations

import heapq
import logging
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PROGRESS_EVERY = 10  # steps between progress lines


@dataclass(frozen=True)
class TrainSpec:
    """What a training process needs; small and picklable (it travels to each process)."""

    base_model: str  # the encoder folder training starts from
    output: str  # the version folder
    pairs_table: str  # local path of the finetune_pairs Delta table
    max_length: int
    pooling: str
    batch_size: int
    learning_rate: float
    warmup_share: float
    temperature: float
    seed: int
    max_steps: int
    max_minutes: float
    checkpoint_every: int
    use_gpu: bool

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain values (kept in the version's finetune.json)."""
        return asdict(self)


def sample_pairs(table: str, wanted: int, rank: int, world: int, seed: int) -> list[tuple]:
    """A weighted sample (without replacement) of ``wanted`` pairs of this process's share
    (row i goes to process i mod world) of the Delta table at ``table``: (text_a, text_b,
    hash_a, hash_b) tuples. Reads the table batch by batch; holds ``wanted`` rows."""
    from deltalake import DeltaTable

    rng = random.Random(seed + rank)
    columns = ["text_a", "text_b", "hash_a", "hash_b", "weight"]
    heap: list[tuple[float, int, tuple]] = []
    row = 0
    for batch in DeltaTable(table).to_pyarrow_dataset().to_batches(columns=columns):
        values = batch.to_pydict()
        for i in range(batch.num_rows):
            mine = row % world == rank
            row += 1
            weight = values["weight"][i]
            if not mine or not weight or weight <= 0:
                continue
            # Efraimidis-Spirakis: keep the largest u^(1/w).
            key = math.log(rng.random() or 1e-300) / weight
            item = (
                key,
                row,
                (
                    values["text_a"][i],
                    values["text_b"][i],
                    values["hash_a"][i],
                    values["hash_b"][i],
                ),
            )
            if len(heap) < wanted:
                heapq.heappush(heap, item)
            elif key > heap[0][0]:
                heapq.heapreplace(heap, item)
    pairs = [item[2] for item in heap]
    rng.shuffle(pairs)
    return pairs


def contrastive_loss(
    a: Any, b: Any, hash_a: list[str], hash_b: list[str], temperature: float
) -> Any:
    """Symmetric in-batch loss of unit vectors ``a`` and ``b`` (row i of each is a pair);
    a column whose text equals row i's own positive is no negative of it."""
    import torch
    import torch.nn.functional as nnf

    logits = a @ b.T / temperature
    n = logits.shape[0]
    same_b = torch.tensor([[hash_b[i] == hash_b[j] for j in range(n)] for i in range(n)])
    same_a = torch.tensor([[hash_a[i] == hash_a[j] for j in range(n)] for i in range(n)])
    eye = torch.eye(n, dtype=torch.bool)
    to_b = logits.masked_fill((same_b & ~eye).to(logits.device), float("-inf"))
    to_a = logits.T.masked_fill((same_a & ~eye).to(logits.device), float("-inf"))
    target = torch.arange(n, device=logits.device)
    return (nnf.cross_entropy(to_b, target) + nnf.cross_entropy(to_a, target)) / 2


def _pool(hidden: Any, mask: Any, pooling: str) -> Any:
    import torch.nn.functional as nnf

    if pooling == "cls":
        pooled = hidden[:, 0]
    else:
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
    return nnf.normalize(pooled, dim=-1)


@dataclass
class _Training:
    """One process's model, its (DDP-wrapped) forward, optimizer, schedule and place."""

    tokenizer: Any
    model: Any
    forward: Any
    optimizer: Any
    schedule: Any
    device: Any
    cuda: bool
    rank: int
    world: int


def train_encoder(spec: TrainSpec) -> dict[str, Any]:
    """Fine-tune ``spec.base_model`` on the pairs; rank 0 saves it to ``spec.output`` and
    returns the training figures (steps, loss curve, seconds, pairs/s, device)."""
    import torch
    import torch.distributed as dist

    t = _start(spec)
    checkpoint = Path(spec.output) / "checkpoint"
    step, curve = _resume(checkpoint, t.model, t.optimizer, t.schedule)
    pairs = sample_pairs(
        spec.pairs_table, spec.max_steps * spec.batch_size, t.rank, t.world, spec.seed
    )
    if len(pairs) < 2:
        raise ValueError(f"{len(pairs)} training pairs: fine-tuning needs at least 2")
    started = time.monotonic()
    step, stopped_by, trained_pairs = _run_steps(spec, t, pairs, step, curve, checkpoint)
    seconds = time.monotonic() - started
    if t.rank == 0:
        t.model.save_pretrained(spec.output)
        t.tokenizer.save_pretrained(spec.output)
        shutil.rmtree(checkpoint, ignore_errors=True)
    if t.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return {
        "steps": step,
        "stopped_by": stopped_by,
        "loss_curve": curve,
        "seconds": seconds,
        "pairs_per_second": trained_pairs * t.world / seconds if seconds > 0 else 0.0,
        "pairs_sampled": len(pairs),
        "device": str(t.device),
        "processes": t.world,
        "peak_gpu_memory_mb": torch.cuda.max_memory_allocated(t.device) / 2**20 if t.cuda else None,
    }


def _start(spec: TrainSpec) -> _Training:
    """This process's place (rank, device; the process group when there are several),
    the model and tokenizer from ``spec.base_model``, AdamW and the warmup schedule."""
    import torch
    import torch.distributed as dist
    from transformers import AutoModel, AutoTokenizer, get_linear_schedule_with_warmup

    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = spec.use_gpu and torch.cuda.is_available()
    if world > 1:
        dist.init_process_group("nccl" if cuda else "gloo")
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if cuda else "cpu")
    torch.manual_seed(spec.seed)
    tokenizer = AutoTokenizer.from_pretrained(spec.base_model)
    model = AutoModel.from_pretrained(spec.base_model).to(device)
    model.train()
    forward = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.learning_rate)
    schedule = get_linear_schedule_with_warmup(
        optimizer, int(spec.warmup_share * spec.max_steps), spec.max_steps
    )
    return _Training(tokenizer, model, forward, optimizer, schedule, device, cuda, rank, world)


def _run_steps(
    spec: TrainSpec, t: _Training, pairs: list[tuple], step: int, curve: list, checkpoint: Path
) -> tuple[int, str, int]:
    """Train from ``step`` until ``max_steps`` or the time budget, appending to ``curve``
    and checkpointing on rank 0; (the last step, what stopped it, pairs trained on)."""
    import torch

    autocast = _autocast(t.cuda)
    started, budget = time.monotonic(), spec.max_minutes * 60
    stopped_by, trained_pairs = "steps", 0
    while step < spec.max_steps:
        batch = _batch(pairs, step, spec.batch_size)
        with autocast:
            a = _encode(t.forward, t.tokenizer, [p[0] for p in batch], spec, t.device)
            b = _encode(t.forward, t.tokenizer, [p[1] for p in batch], spec, t.device)
            loss = contrastive_loss(
                a.float(), b.float(), [p[2] for p in batch], [p[3] for p in batch], spec.temperature
            )
        t.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(t.model.parameters(), 1.0)
        t.optimizer.step()
        t.schedule.step()
        step += 1
        trained_pairs += len(batch)
        curve.append([step, float(loss.detach())])
        elapsed = time.monotonic() - started
        if t.rank == 0 and (step % PROGRESS_EVERY == 0 or step == spec.max_steps):
            print(
                f"finetune: step {step}/{spec.max_steps} loss {curve[-1][1]:.4f} "
                f"{trained_pairs / max(elapsed, 1e-9):.1f} pairs/s",
                flush=True,
            )
        if t.rank == 0 and step % spec.checkpoint_every == 0 and step < spec.max_steps:
            _save_checkpoint(checkpoint, t.model, t.optimizer, t.schedule, step, curve)
        if _out_of_time(elapsed > budget, t.world, t.device):
            stopped_by = "time"
            break
    return step, stopped_by, trained_pairs


def _batch(pairs: list[tuple], step: int, size: int) -> list[tuple]:
    start = (step * size) % len(pairs)
    batch = pairs[start : start + size]
    return batch if len(batch) >= 2 else pairs[:size]


def _encode(model: Any, tokenizer: Any, texts: list[str], spec: TrainSpec, device: Any) -> Any:
    encoded = tokenizer(
        texts, truncation=True, max_length=spec.max_length, padding=True, return_tensors="pt"
    ).to(device)
    hidden = model(**encoded).last_hidden_state
    return _pool(hidden, encoded["attention_mask"], spec.pooling)


def _autocast(cuda: bool) -> Any:
    import contextlib

    import torch

    if not cuda:
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def _out_of_time(mine: bool, world: int, device: Any) -> bool:
    """Whether any process ran out of its time budget (all stop at the same step)."""
    if world == 1:
        return mine
    import torch
    import torch.distributed as dist

    flag = torch.tensor([1.0 if mine else 0.0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def _save_checkpoint(
    folder: Path, model: Any, optimizer: Any, schedule: Any, step: int, curve: list
) -> None:
    import torch

    staging = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    model.save_pretrained(staging / "model")
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "step": step,
            "curve": curve,
        },
        staging / "state.pt",
    )
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)


def _resume(folder: Path, model: Any, optimizer: Any, schedule: Any) -> tuple[int, list]:
    """Load the last checkpoint into the model, optimizer and schedule; (step, curve)."""
    import torch
    from transformers import AutoModel

    if not (folder / "state.pt").is_file():
        return 0, []
    saved = AutoModel.from_pretrained(folder / "model")
    model.load_state_dict(saved.state_dict())
    state = torch.load(folder / "state.pt", weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    log.info("finetune: resumed at step %d from %s", state["step"], folder)
    return int(state["step"]), list(state["curve"])
