"""FSDP2 sharding of a checkpoint across the processes of ``torchrun`` (``LoadConfig.shard="fsdp"``).

Each decoder block and the model are wrapped with ``torch.distributed.fsdp.fully_shard`` on a 1-D
mesh of all ranks; every parameter becomes a ``DTensor`` whose rows (dim 0, ``torch.chunk`` rule)
are split across the ranks. Loading is shard-wise: the model is built with its parameters on the
meta device (buffers such as rotary frequencies are real), sharded, given empty local storage, and
each rank reads *only its rows* of every tensor from the safetensors files (``get_slice``), so a
rank's peak while loading is its shard plus one tensor's rows, never the whole model.

Gradients are reduce-scattered as plain sums (divide factor 1, sum reductions — our loss terms are
already divided by the global token count), so each rank's ``.grad`` rows are the global gradient's.
Parameters keep the checkpoint's ``dtype`` (no mixed-precision policy: the measured function is the
model in that dtype, as on one process).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from landscape.foundation import distributed as dist
from landscape.foundation import params as P
from landscape.foundation.errors import CheckpointError


@contextlib.contextmanager
def parameters_on_meta():
    """Modules built inside hold their parameters on the meta device (no storage) and their buffers
    for real — each parameter exists on the host only while its module is constructed."""
    register = torch.nn.Module.register_parameter

    def on_meta(module, name, param):
        register(module, name, param)
        if param is not None and param.device.type != "meta":
            kind = type(module._parameters[name])
            module._parameters[name] = kind(module._parameters[name].to("meta"), requires_grad=param.requires_grad)

    torch.nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = register


def decoder_blocks(model: torch.nn.Module) -> list:
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


def units(model: torch.nn.Module) -> list:
    """The FSDP units of a sharded model (its fully_shard-wrapped modules); [] when not sharded."""
    from torch.distributed.fsdp import FSDPModule

    if not P.any_sharded(model.parameters()):
        return []
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def _tensor_files(weights: list[Path]) -> dict:
    """Tensor name → the safetensors file holding it."""
    from safetensors import safe_open

    where = {}
    for f in weights:
        with safe_open(str(f), framework="pt") as fh:
            where.update({k: f for k in fh.keys()})
    return where


def shard(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Wrap each decoder block and the model with ``fully_shard`` (sum-reduced gradients)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, fully_shard

    blocks = decoder_blocks(model)
    if not blocks:
        raise CheckpointError(f"{type(model).__name__}: no decoder blocks found to shard")
    mesh = init_device_mesh(device.type, (dist.world(),))
    units = list(blocks)
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    if head is not None and head.weight is not emb.weight:  # untied: each its own unit, gathered alone
        units += [emb, head]  # (vocabulary × hidden each: 0.26 GB at TinyLlama's shape, in float32)
    for u in units:
        fully_shard(u, mesh=mesh, reshard_after_forward=True)
    # the root too (FSDP would keep its parameters gathered after a forward, for training's backward):
    # between passes every parameter must be its shard, which perturbations write and forwards read
    fully_shard(model, mesh=mesh, reshard_after_forward=True)
    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.set_gradient_divide_factor(1.0)
            m.set_force_sum_reduction_for_comms(True)  # plain sums (gloo has no pre-multiplied sum)
    return model


def load_sharded(build, weights: list[Path], dtype: torch.dtype, device: torch.device, where: Path):
    """``build()`` (a model constructor) run with parameters on meta, sharded, then filled with this
    rank's rows of every tensor read from ``weights`` in ``dtype`` (copied into the parameters' own
    dtype: float32 rows of bf16 values when built wider); weights missing from the files are an error."""
    files = _tensor_files(weights)

    def check(model):
        missing = sorted(n for n, _ in model.named_parameters() if n not in files)
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise CheckpointError(f"{where}: weights missing for {', '.join(missing[:3])}{more} (sharded "
                                  "loading reads tensors by parameter name)")

    model, buffers = materialise(build, device, check)
    _read_rows(dict(model.named_parameters()), files, dtype)
    with torch.no_grad():
        for n, b in model.named_buffers():
            b.copy_(_read_rows_one(files, n, None, b.dtype) if n in files else buffers[n])
    return model


def materialise(build, device: torch.device, check=None):
    """(model, buffers): ``build()`` with its parameters on meta, ``check(model)`` called, sharded,
    and given this rank's (empty) storage, ready for its rows to be written; ``buffers``: the
    buffers as built (``to_empty`` clears them), to be put back or replaced by the file's."""
    if not dist.available() or dist.world() < 2:
        raise CheckpointError("FSDP sharding needs torchrun with 2 or more processes")
    with parameters_on_meta():
        model = build()
    if check is not None:
        check(model)
    shard(model, device)
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    model.to_empty(device=device)  # untouched storage: not resident until written
    # FSDP moves each rank's rows into a padded buffer of its own at the first forward (lazy init).
    # Run one token through the still-empty model now (its output is discarded), so that the rows
    # are written straight into their final storage — written first, the re-pad would copy every
    # row once more with the old storage still held: a second shard at the peak (+2 GB a rank at 1.1B).
    with torch.no_grad():
        model(input_ids=torch.zeros(1, 1, dtype=torch.long, device=device), use_cache=False)
    return model, buffers


def _read_rows_one(files: dict, name: str, rows, dtype):
    from safetensors import safe_open

    with safe_open(str(files[name]), framework="pt") as fh:
        sl = fh.get_slice(name)
        t = sl[:] if rows is None or not sl.get_shape() else sl[rows[0]:rows[1]]
    return t.to(dtype)


@torch.no_grad()
def _read_rows(named: dict, files: dict, dtype) -> None:
    for n, p in named.items():
        _, a, b = P.rows(p)
        P.local(p).copy_(_read_rows_one(files, n, (a, b), dtype))


def full_state_dict(model: torch.nn.Module) -> dict:
    """The whole model's state dict on rank 0's host (other ranks get an empty dict), gathered
    tensor by tensor."""
    out = {}
    for n, t in model.state_dict().items():
        full = t.full_tensor() if P.is_sharded(t) else t
        if dist.is_main():
            out[n] = full.detach().cpu().clone()
        del full
    return out
