"""Parameter subsets and vectors over them, and the context that perturbs weights and restores them.

A "vector" here is a list of tensors shaped like the selected parameters (a pytree), so a vector over
a 7B model never needs one flat 7B buffer. Reductions accumulate in float64.

Under FSDP2 sharding (``LoadConfig.shard="fsdp"``) a parameter is a ``DTensor`` holding rows of the
whole tensor on each rank; a vector then holds this rank's rows (:func:`local`), :func:`dot` sums
over ranks, and random vectors are drawn whole and cut to the local rows (:func:`draw`), so every
estimator runs unchanged and gives the one-process numbers.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections import OrderedDict

import torch

from landscape.foundation import distributed as dist
from landscape.foundation.configs import ConfigError

Vector = list  # list[torch.Tensor], one per selected parameter

# `params="adapter"`: the parameters of a PEFT adapter kept apart from its base (LoRA's A and B, DoRA's m)
ADAPTER_PARAMS = r"\.lora_(?:A|B|embedding_A|embedding_B|magnitude_vector)\."
_LAYER = re.compile(r"(?:^|\.)(?:layers|h|layer|blocks)\.(\d+)\.")


def select(model: torch.nn.Module, regex: str | None = None) -> "OrderedDict[str, torch.nn.Parameter]":
    """Trainable parameters whose name matches ``regex`` (``re.search``); all when ``regex`` is None.

    Tied parameters appear once (``named_parameters`` de-duplicates them). ``"adapter"``: the
    parameters of a PEFT adapter loaded with ``adapter="keep"`` (:data:`ADAPTER_PARAMS`).
    """
    if regex == "adapter":
        out = select(model, ADAPTER_PARAMS) if any(re.search(ADAPTER_PARAMS, n) for n, _ in model.named_parameters()) \
            else None
        if out is None:
            raise ConfigError("params", "'adapter' selects a PEFT adapter's own parameters, and this model has none "
                                        "(load the adapter with adapter='keep')")
        return out
    try:
        pat = re.compile(regex) if regex else None
    except re.error as e:
        raise ConfigError("params", f"{regex!r} is not a valid regular expression ({e})") from None
    out = OrderedDict((n, p) for n, p in model.named_parameters() if p.requires_grad and (pat is None or pat.search(n)))
    if not out:
        raise ConfigError("params", f"{regex!r} matches no trainable parameter")
    return out


def layer_groups(model: torch.nn.Module) -> "OrderedDict[str, str]":
    """``{"layer.0": regex, ..., "other": regex}``: one regex per transformer block, plus the rest
    (embeddings, final norm, head), for per-layer spectra."""
    layers = sorted({int(m.group(1)) for n, _ in model.named_parameters() if (m := _LAYER.search(n))})
    groups = OrderedDict((f"layer.{i}", rf"(?:^|\.)(?:layers|h|layer|blocks)\.{i}\.") for i in layers)
    if any(not _LAYER.search(n) for n, _ in model.named_parameters()):
        groups["other"] = r"^(?!.*(?:^|\.)(?:layers|h|layer|blocks)\.\d+\.)"
    return groups


def dot(a: Vector, b: Vector) -> torch.Tensor:
    """Σ_i ⟨a_i, b_i⟩ as a float64 0-d tensor (summed over ranks when vectors are shards)."""
    return dist.sharded_sum(sum((x.double() * y.double()).sum() for x, y in zip(a, b)))


def is_sharded(t) -> bool:
    """A DTensor (an FSDP2-sharded parameter or its gradient)."""
    return type(t).__name__ == "DTensor"


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's rows of a sharded tensor (a plain tensor sharing its storage: writes reach the
    parameter), the tensor itself otherwise."""
    if not is_sharded(t):
        return t
    with torch.no_grad():
        return t.to_local().detach()


def rows(t) -> tuple[torch.Size, int, int]:
    """(global shape, first row, end row) of the dim-0 slice this rank holds — FSDP2's ``torch.chunk``
    rule: rank r holds rows [r·c, (r+1)·c) ∩ [0, n), c = ⌈n / world⌉; the whole tensor when unsharded."""
    if not is_sharded(t):
        return t.shape, 0, (t.shape[0] if t.dim() else 1)
    n, W, r = t.shape[0], t.device_mesh.size(), t.device_mesh.get_local_rank()
    c = -(-n // W)
    return t.shape, min(n, r * c), min(n, (r + 1) * c)


def draw(t, fn) -> torch.Tensor:
    """``fn(global shape)`` cut to this rank's rows: a random draw that equals the one-process one."""
    shape, a, b = rows(t)
    full = fn(shape)
    return full if not is_sharded(t) else full[a:b].clone()  # a copy: a view would keep the whole draw alive


def norm(a: Vector) -> torch.Tensor:
    return dot(a, a).sqrt()


def mixed_sq_norm(tensors, rows: list[bool], group=None, slices: bool = False) -> torch.Tensor:
    """Σ‖t‖² of gradients some of which are FSDP2 rows (``rows`` true: summed over the ranks of
    ``group``) and the rest held whole by every rank (a LoRA adapter's: counted once), as a float64
    0-d tensor on the tensors' device; each tensor's own sum in float32 at least, so bf16 neither
    overflows nor loses the norm. ``slices``: every tensor is a slice of a user's own sharding (all
    summed over ``group``). Nothing distributed is touched when no tensor is a row or a slice."""
    dev = tensors[0].device if tensors else torch.device("cpu")
    sqs = [t.detach().float().pow(2).sum().double() for t in tensors]
    zero = torch.zeros((), dtype=torch.float64, device=dev)
    spread = sum((x for x, r in zip(sqs, rows) if r or slices), zero)
    whole = sum((x for x, r in zip(sqs, rows) if not (r or slices)), zero)
    if slices or any(rows):
        import torch.distributed as tdist

        tdist.all_reduce(spread, op=tdist.ReduceOp.SUM, group=group)
    return spread + whole


def scale(a: Vector, s) -> Vector:
    return [x * s for x in a]


def axpy(alpha, x: Vector, y: Vector) -> Vector:
    """α·x + y (new tensors)."""
    return [yi + alpha * xi for xi, yi in zip(x, y)]


def flatten(a: Vector) -> torch.Tensor:
    """The tensors of a vector concatenated into one flat tensor (a copy)."""
    return torch.cat([x.reshape(-1) for x in a])


def unflatten(flat: torch.Tensor, like) -> Vector:
    """Views of ``flat`` shaped like the tensors of ``like`` (inverse of :func:`flatten`)."""
    out, i = [], 0
    for p in like:
        out.append(flat[i:i + p.numel()].view(p.shape))
        i += p.numel()
    return out


def numel(a: Vector) -> int:
    """Entries held by this process (a sharded parameter counts its local rows)."""
    return sum(local(x).numel() for x in a)


def zeros_like(params) -> Vector:
    return [torch.zeros_like(p) for p in params]


def randn_like(params, generator: torch.Generator, dtype=None) -> Vector:
    """Gaussian vector, drawn on the CPU from ``generator`` (so any device gives the same numbers)."""
    return [draw(p, lambda s: torch.randn(s, generator=generator, dtype=torch.float64)).to(p.device, dtype or p.dtype)
            for p in params]


def rademacher_like(params, generator: torch.Generator, dtype=None) -> Vector:
    return [draw(p, lambda s: torch.randint(0, 2, s, generator=generator) * 2 - 1).to(p.device, dtype or p.dtype)
            for p in params]


@contextlib.contextmanager
def perturbed(params, delta: Vector | None = None):
    """Inside the block each parameter holds ``w + delta`` (or whatever the caller sets with
    :func:`set_offset`); on exit the original bits are copied back, whatever happened inside.

    Setting a point is always ``w0 + offset`` computed from a saved copy of the origin, never a walk
    of ``add_``/``sub_`` steps, so no rounding error accumulates and the weights afterwards are
    bit-identical to the weights before. Costs one copy of the selected parameters.
    """
    params = list(params)
    origin = [p.detach().clone() for p in params]
    try:
        if delta is not None:
            set_offset(params, origin, delta)
        yield origin
    finally:
        with torch.no_grad():
            for p, o in zip(params, origin):
                p.copy_(o)


@contextlib.contextmanager
def grad_only(model: torch.nn.Module, selected):
    """Inside the block only the ``selected`` parameters require gradients, so autograd records no
    graph for the frozen rest (``--params`` on two layers of a 135M model: 1.05 GB instead of 1.51 GB);
    every flag is put back on exit."""
    keep = {id(p) for p in selected}
    saved = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in saved:
            p.requires_grad_(id(p) in keep)
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


def footprint(device) -> int:
    """Bytes the process holds now: RSS on the CPU (peak RSS where /proc is missing), allocated
    memory on a GPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    return _proc_status("VmRSS") or peak_rss()


def _proc_status(field: str) -> int:
    """A memory field of /proc/self/status in bytes, 0 where /proc is missing."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def peak_rss() -> int:
    """The process's peak resident memory so far, in bytes. Linux's VmHWM: ``ru_maxrss`` carries the
    parent's peak across fork+exec (a measurement started from a 4 GB pytest read 4.4 GB on a 0.7 GB run)."""
    import resource

    return _proc_status("VmHWM") or int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def release_memory() -> None:
    """Hand memory that is free back to the system: Python's cycles, the CUDA cache, and glibc's free
    heap pages (``malloc_trim``; nothing on other C libraries). A long-lived process that loads one
    checkpoint after another otherwise keeps the peak of every one it has freed (the real study's
    process grew to 21 GB measuring 0.54 GB checkpoints); freeing 3.6 GB that way was seen once."""
    import ctypes
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@contextlib.contextmanager
def reused_memory(enabled: bool = True):
    """Inside the block, glibc serves large allocations from the heap and keeps what is freed for
    reuse (M_MMAP_MAX 0, M_TRIM_THRESHOLD 2 GB) instead of unmapping it — for a CPU training loop.
    By default every freed tensor over 32 MB (and many smaller) goes back to the OS and the next step
    faults it in again, zeroed: on SmolLM2-135M that cost a SAM step 0.6 s of 2.3 (SAM / AdamW
    2.59 → 1.94; AdamW unchanged; peak RSS +3.5%). On exit the defaults are back and the kept memory
    is returned (so a long-lived process does not keep the loop's peak). Nothing happens where the
    C library is not glibc, or when not ``enabled``."""
    import ctypes

    libc = None
    if enabled:
        try:
            libc = ctypes.CDLL("libc.so.6")
            libc.mallopt(-4, 0)  # M_MMAP_MAX
            libc.mallopt(-1, 2**31 - 1)  # M_TRIM_THRESHOLD
        except (OSError, AttributeError):
            libc = None
    try:
        yield
    finally:
        if libc is not None:
            libc.mallopt(-4, 65536)  # glibc's defaults
            libc.mallopt(-1, 128 * 1024)
            libc.malloc_trim(0)


@torch.no_grad()
def set_offset(params, origin: Vector, delta: Vector, alpha=1.0) -> None:
    """p ← origin + α·delta, computed in the wider of float32 and the parameter dtype."""
    for p, o, d in zip(params, origin, delta):
        wide = torch.promote_types(p.dtype, torch.float32)
        p.copy_((o.to(wide) + alpha * d.to(wide)).to(p.dtype))


def free_memory(device) -> int | None:
    """Bytes this process may still allocate on ``device``: free CUDA memory, or MemAvailable of the
    host (divided among the processes of this node under torchrun); None when unknown."""
    device = torch.device(device)
    free = None
    try:
        if device.type == "cuda":
            free = int(torch.cuda.mem_get_info(device)[0])
        elif device.type == "cpu":
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        free = int(line.split()[1]) * 1024 // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
                        break
    except (OSError, RuntimeError, ValueError):
        free = None
    if dist.sharded():  # every rank must make the same memory-driven choice (they run in lockstep)
        free = dist.all_reduce_scalar(float(free if free is not None else -1), op="min")
        free = None if free < 0 else int(free)
    return free


def nbytes(tensors) -> int:
    """Bytes held by this process (a sharded parameter counts its local rows)."""
    return sum(local(t).numel() * t.element_size() for t in tensors)
