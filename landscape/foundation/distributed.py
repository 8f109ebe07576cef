"""torch.distributed helpers: rank, world, sharding, reductions. No-ops on one process.

Under ``torchrun --nproc-per-node N -m landscape.cli ...`` every process holds the whole model and
all batches are built identically on every rank; the work is split, never the model:

- losses, gradients and HVPs: each rank takes the batches ``i ≡ rank (mod N)`` and the per-batch
  terms (already divided by the *global* token count) are summed with one all-reduce, so the result
  is the one-process result up to floating-point summation order;
- surfaces: the grid points are split across ranks (each rank evaluates its points on all batches);
  rank 0 gathers them after every round and alone writes the h5 and its resumable partial file;
- SAM/AdamW fine-tuning: DDP; each step's micro-batches are dealt out across ranks (global batch =
  ``grad_accum × N`` micro-batches), the SAM first pass runs under ``no_sync``.

With ``--shard fsdp`` (:func:`landscape.foundation.checkpoint.load_checkpoint`) the model itself is
split: each decoder block and the model are wrapped with FSDP2's ``fully_shard``, every rank holds
rows of each parameter (dim-0 shards: DTensors, ``params.is_sharded``). No process-wide state records
this: the parameters say it (``params.any_sharded(model.parameters())``), and whoever builds vectors
from them passes ``sharded`` on to the sums below (an operator's ``sharded``, a basis's). Then

- a weight-sized vector is the list of this rank's *local shards* (``params.local``); dots and norms
  of vectors are summed over ranks (:func:`sharded_sum`); random vectors are drawn whole on every
  rank from the same generator and cut to the local rows, so they equal the one-process draw;
- gradients need no all-reduce: FSDP's reduce-scatter (set to a plain sum) already leaves each rank
  its rows of the global gradient; only scalars (loss sums) are all-reduced;
- every rank runs the same number of forward passes (FSDP all-gathers inside them): :func:`share`
  pads a short rank's share with zero-weight repeats;
- work over points (surface grid points) is not split: all ranks evaluate each point together.

Without ``torchrun`` (no ``WORLD_SIZE``) nothing here touches ``torch.distributed``.
"""

from __future__ import annotations

import os

import torch

def sharded_sum(x, sharded: bool):
    """Σ over ranks of a partial sum over local shards (a float, a 0-d tensor or a numpy array) when
    ``sharded`` (the vectors summed are this rank's rows); ``x`` unchanged otherwise."""
    if not (sharded and available()):
        return x
    import numpy as np

    if isinstance(x, np.ndarray):
        return _all_reduce_host(torch.from_numpy(np.array(x, dtype=np.float64)), "sum").numpy()
    if torch.is_tensor(x):
        return torch.tensor(all_reduce_scalar(float(x)), dtype=x.dtype, device=x.device)
    return all_reduce_scalar(float(x))


def share(items: list, sharded: bool = False) -> list:
    """This rank's share of ``items`` as (item, weight) pairs: :func:`shard` with weight 1, and for a
    ``sharded`` model (FSDP) padded with (items[0], 0.0) so every rank runs the same number of passes
    (each forward gathers the weights on all of them)."""
    items = list(items)
    mine = [(x, 1.0) for x in shard(items)]
    if sharded and items:
        mine += [(items[0], 0.0)] * (-(-len(items) // world()) - len(mine))
    return mine


def point_workers(sharded: bool) -> tuple[int, int]:
    """(workers, my index) for work split by points (surface grid points): of a ``sharded`` model every
    rank (they evaluate each point together), else (world, rank)."""
    return (1, 0) if sharded else (world(), rank())


def available() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def rank() -> int:
    return torch.distributed.get_rank() if available() else 0


def world() -> int:
    return torch.distributed.get_world_size() if available() else 1


def is_main() -> bool:
    return rank() == 0


def init_from_env() -> bool:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1); gloo on CPU, NCCL on CUDA."""
    if available() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return available()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        torch.distributed.init_process_group("nccl")
    else:
        torch.distributed.init_process_group("gloo")
    return True


def shutdown() -> None:
    if available():
        torch.distributed.destroy_process_group()


def shard(items: list) -> list:
    """This rank's share: items i with i ≡ rank (mod world)."""
    return list(items)[rank()::world()] if available() else list(items)


# bytes of one flat all-reduce buffer: small tensors are packed together up to this size (one call for
# many), a larger tensor is reduced in place on its own — never a weight-sized concatenation (a whole
# gradient's copy beside it: 28 GB for a 7B in float32, counted by no plan)
BUCKET_BYTES = 1 << 27


def all_reduce_(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Sum each tensor over ranks, in place: tensors of one dtype and device packed into flat buckets of
    at most :data:`BUCKET_BYTES`, a tensor larger than that reduced alone, in place."""
    if not available() or not tensors:
        return tensors
    groups: dict = {}
    for t in tensors:
        groups.setdefault((t.dtype, t.device), []).append(t)
    for ts in groups.values():
        bucket, size = [], 0
        for t in [*ts, None]:
            big = t is not None and t.numel() * t.element_size() > BUCKET_BYTES
            if bucket and (t is None or big or size + t.numel() * t.element_size() > BUCKET_BYTES):
                flat = torch.cat([x.reshape(-1) for x in bucket])
                torch.distributed.all_reduce(flat)
                for x, summed in zip(bucket, flat.split([x.numel() for x in bucket])):
                    x.copy_(summed.view(x.shape))
                bucket, size = [], 0
            if t is None:
                break
            if big:
                if t.is_contiguous():
                    torch.distributed.all_reduce(t)
                else:
                    c = t.contiguous()
                    torch.distributed.all_reduce(c)
                    t.copy_(c)
            else:
                bucket.append(t)
                size += t.numel() * t.element_size()
    return tensors


def all_reduce_scalar(x: float, op: str = "sum") -> float:
    """Σ (or min, max) of ``x`` over ranks."""
    if not available():
        return x
    return float(_all_reduce_host(torch.tensor([x], dtype=torch.float64), op)[0])


def _all_reduce_host(t: torch.Tensor, op: str) -> torch.Tensor:
    """A host tensor reduced over ranks (through the GPU when the backend is NCCL), on the host."""
    ops = {"sum": torch.distributed.ReduceOp.SUM, "min": torch.distributed.ReduceOp.MIN,
           "max": torch.distributed.ReduceOp.MAX}
    dev = t.cuda() if torch.distributed.get_backend() == "nccl" else t
    torch.distributed.all_reduce(dev, op=ops[op])
    return dev.cpu()


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank."""
    if not available():
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_object(obj) -> list:
    if not available():
        return [obj]
    out = [None] * world()
    torch.distributed.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if available():
        torch.distributed.barrier()
