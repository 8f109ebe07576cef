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


DOT_CHUNK = 1 << 20


def dot(a: Vector, b: Vector, sharded: bool = False) -> torch.Tensor:
    """Σ_i ⟨a_i, b_i⟩ as a float64 0-d tensor (summed over ranks when ``sharded``: the vectors are this
    rank's rows, :func:`any_sharded` of their parameters): products
    and sums in float64, :data:`DOT_CHUNK` entries at a time — never a float64 copy of a whole tensor
    (SmolLM2's embedding pair in float64 was 0.45 GB of transients, Qwen2.5-1.5B's 3.7 GB)."""
    return dist.sharded_sum(_chunked_dot(zip(a, b)), sharded)


# entries per float64 piece of a dot on a GPU: a few kernels per 16M entries (128 MB of float64 pieces),
# not per 1M — ~420 pieces for a 7B vector instead of ~6,700; the sum stays on the device until the end
DEVICE_DOT_CHUNK = 1 << 24


def _chunked_dot(pairs) -> torch.Tensor:
    """Σ over (x, y) pairs of Σ x·y in float64, :data:`DOT_CHUNK` entries at a time
    (:data:`DEVICE_DOT_CHUNK` on a GPU); no host synchronisation until the caller reads the total."""
    total = None
    for x, y in pairs:
        x, y = x.reshape(-1), y.reshape(-1)
        c = DEVICE_DOT_CHUNK if x.device.type in DEVICE_DRAWS else DOT_CHUNK
        for i in range(0, x.numel(), c):
            part = (x[i:i + c].double() * y[i:i + c].double()).sum()
            total = part if total is None else total + part
    return torch.zeros((), dtype=torch.float64) if total is None else total


def is_sharded(t) -> bool:
    """A DTensor (an FSDP2-sharded parameter or its gradient)."""
    return type(t).__name__ == "DTensor"


def any_sharded(tensors) -> bool:
    """Whether some of ``tensors`` (a model's parameters) are FSDP2 rows: then weight-sized vectors built
    from them hold this rank's rows, and their dots and norms sum over the ranks. The model's own
    parameters are the record of its sharding; nothing process-wide is kept."""
    return any(is_sharded(t) for t in tensors)


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


def norm(a: Vector, sharded: bool = False) -> torch.Tensor:
    """‖a‖₂ as :func:`dot` forms ⟨a, a⟩, each tensor of ``a`` read once (they may come from disk)."""
    return dist.sharded_sum(_chunked_dot((x, x) for x in a), sharded).sqrt()


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


# device types whose random vectors are drawn where they live (in the vector's dtype, by a generator on
# that device) instead of in float64 on the host and copied over: ~17M normals/s on one host thread was
# ~400 s per 7B-sized vector. The CPU keeps its float64 host stream (its numbers are unchanged).
DEVICE_DRAWS = {"cuda"}
_DEVICE_GENERATORS: "weakref.WeakKeyDictionary" = None  # host generator → {device: its device twin}


def device_generator(generator: torch.Generator, device) -> torch.Generator | None:
    """The generator a draw on ``device`` uses: None on the CPU (the host stream, as always); on a GPU
    a generator on that device seeded from ``generator``'s seed and kept beside it, so consecutive draws
    from one host generator continue one device stream — reproducible for a seed on that device, and
    the same on every rank (each draws a parameter whole and keeps its rows: :func:`draw`), though not
    the CPU's numbers."""
    global _DEVICE_GENERATORS
    device = torch.device(device)
    if device.type not in DEVICE_DRAWS:
        return None
    if _DEVICE_GENERATORS is None:
        import weakref

        _DEVICE_GENERATORS = weakref.WeakKeyDictionary()
    twins = _DEVICE_GENERATORS.setdefault(generator, {})
    if device not in twins:
        twins[device] = torch.Generator(device=device).manual_seed(generator.initial_seed())
    return twins[device]


def randn_like(params, generator: torch.Generator, dtype=None) -> Vector:
    """Gaussian vector from ``generator``: drawn on the CPU in float64 (the same numbers for any
    sharding), or on a GPU where the parameter lives, in the vector's dtype (:func:`device_generator`)."""
    out = []
    for p in params:
        dt = dtype or p.dtype
        dg = device_generator(generator, p.device)
        if dg is None:
            out.append(draw(p, lambda s: torch.randn(s, generator=generator, dtype=torch.float64)).to(p.device, dt))
        else:
            out.append(draw(p, lambda s, dg=dg, p=p, dt=dt: torch.randn(s, generator=dg, device=p.device, dtype=dt)))
    return out


@contextlib.contextmanager
def perturbed(params, delta: Vector | None = None, origin: Vector | None = None):
    """Inside the block each parameter holds ``w + delta`` (or whatever the caller sets with
    :func:`set_offset`); on exit the original bits are copied back, whatever happened inside.

    Setting a point is always ``w0 + offset`` computed from a saved copy of the origin, never a walk
    of ``add_``/``sub_`` steps, so no rounding error accumulates and the weights afterwards are
    bit-identical to the weights before. Costs one copy of the selected parameters, or none when the
    caller holds an exact copy of the current weights (``origin``, e.g. :func:`widened`'s
    half-precision originals; any dtype that holds the values exactly).
    """
    params = list(params)
    # a disk-held origin stays on disk: read one parameter at a time when set or restored, never
    # listed whole (that read the copy back into memory: SAM sharpness at 1.5B peaked 4.6 GB over plan)
    origin = [p.detach().clone() for p in params] if origin is None else origin
    try:
        if delta is not None:
            set_offset(params, origin, delta)
        yield origin
    finally:
        restore(params, origin)


HALF = (torch.bfloat16, torch.float16)


def is_half(params) -> bool:
    """bf16/fp16 parameters: their own arithmetic cannot resolve a curvature measurement (see :func:`widened`)."""
    return any(p.dtype in HALF for p in params)


@contextlib.contextmanager
def widened(model: torch.nn.Module, enabled: bool = True):
    """Inside the block the model's bf16/fp16 parameters and floating buffers are float32 (exact: every
    bf16/fp16 value is a float32 one); on exit the original tensors are put back — the same storages,
    so the weights are bit-identical and nothing is copied back. Yields ``{id(parameter): original}``:
    exact copies of the current weights that :func:`perturbed` and fd products restore from instead
    of a float32 copy of their own.

    Why: a curvature measurement moves the weights by far less than a bf16 spacing. A step h along a
    unit v moves weight i by h·v_i ≈ h/√n, and bf16 keeps 8 bits: on SmolLM2-135M an fd step of 3.8e-4
    is ~3e-8 a weight against spacings of ~1e-4, so w + εv rounds back to w, and the bf16 forward's own
    rounding (~4e-3 of every activation) swamps a gradient difference of that size. The products, the
    ε/SAM boxes and the noise of average sharpness then measure rounding (an fd λ_max of −0.0014
    against 706 in float32). Measured in a float32 view, a bf16 checkpoint's curvature is that of its
    own weights, to float32's accuracy. Memory: 4 bytes a parameter beside the 2 of the originals —
    6 in all, less than a float32 model's weights and saved copy (8).

    FSDP-sharded parameters are left as they are (their storage belongs to FSDP); callers refuse
    half-precision sharded curvature instead.

    The yielded originals may be moved off the device while the block runs (:func:`offload`, when the
    plan needs their room); on exit they are then copied back into fresh device storage (the same
    bits, a new storage).
    """
    swapped, bufs, origins = [], [], Originals()
    try:
        if enabled:
            with torch.no_grad():
                for p in model.parameters():
                    if p.dtype in HALF and not is_sharded(p):
                        origins[id(p)] = p.data
                        swapped.append(p)
                        p.data = p.data.float()
                if _TARGET is not None:
                    _TARGET.kept += nbytes(list(origins.values()))
                for mod in model.modules():
                    for name, b in list(mod._buffers.items()):
                        if b is not None and b.dtype in HALF:
                            mod._buffers[name] = b.float()
                            bufs.append((mod, name, b))
        yield origins
    finally:
        if _TARGET is not None and not origins.host:
            _TARGET.kept -= nbytes(list(origins.values()))
        for p in swapped:  # the float32 view lives where the original did
            old = origins[id(p)]
            p.data = old if old.device == p.device else old.to(p.device)
        for mod, name, b in bufs:
            mod._buffers[name] = b


class Originals(dict):
    """:func:`widened`'s exact originals, ``{id(parameter): tensor}``; ``host``: moved off the device."""

    host = False


def offload(origins: Originals) -> int:
    """Move :func:`widened`'s originals to host memory (pinned when CUDA is there: a product reads them
    back over PCIe), freeing their device storage; returns the bytes moved. Under a plan for another
    machine (meta tensors) nothing is allocated: the plan counts them on the host from then on."""
    if origins.host:
        return 0
    moved = nbytes(list(origins.values()))
    for k, o in list(origins.items()):
        if o.device.type != "meta":  # (on a CPU-only machine a copy in the same memory: never chosen there)
            host = torch.empty(o.shape, dtype=o.dtype, device="cpu", pin_memory=torch.cuda.is_available())
            origins[k] = host.copy_(o)
    origins.host = True
    if _TARGET is not None:
        _TARGET.kept -= moved
    return moved


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


# device memory a CUDA process holds outside PyTorch's allocator: the context, cuBLAS/cuDNN workspaces
# (~0.5-1 GB on an H100, by NVIDIA's and PyTorch's documentation; not measured here: no GPU)
CUDA_CONTEXT = int(0.75 * 2**30)


class Target:
    """A machine this one is not, for plans (``--dry-run``): ``world`` processes (FSDP ranks, each
    holding 1/world of every weight) on devices of ``memory`` bytes each (None: this machine's memory),
    running ``model`` — often on the meta device (a directory holding only config.json).

    While a target is set (:func:`planning_for`), :func:`footprint` and :func:`free_memory` answer for
    the *whole* target — the sum over its ranks — so that every plan, and every choice ``auto`` makes
    from it, comes out as world × one rank's (the ranks are alike); :meth:`Plan.as_dict
    <landscape.foundation.plan.Plan.as_dict>` divides by world again for the reader."""

    def __init__(self, model=None, memory: int | None = None, world: int = 1):
        self.model, self.memory, self.world = model, memory, max(1, int(world))
        self.kept = 0  # bytes of half-precision originals held beside a float32 view (:func:`widened`)
        self.device_type = "cuda" if memory is not None else "cpu"
        # this machine: what is available now plus what the process already holds (its runtime)
        self.host = None if memory is not None else _proc_status("MemAvailable", "/proc/meminfo") + _proc_status("VmRSS")

    def runtime(self) -> int:
        """Memory of one process before any weight: the Python/torch runtime on the CPU; on a GPU the
        CUDA context and library workspaces (:data:`CUDA_CONTEXT`; the caching allocator's rounding and
        fragmentation, a few percent of what it hands out, are left to the plan's headroom)."""
        return int(0.35 * 2**30) if self.device_type == "cpu" else CUDA_CONTEXT

    def held(self) -> int:
        """All ranks together: runtimes, the weights (each rank its 1/world) and kept originals."""
        weights = nbytes(list(self.model.parameters())) if self.model is not None else 0
        return self.world * self.runtime() + weights + self.kept

    def free(self) -> int:
        # devices of their own, or the ranks sharing this machine's memory (torchrun on one host)
        total = self.world * self.memory if self.memory is not None else self.host
        return int(total) - self.held()


_TARGET: Target | None = None


def target() -> Target | None:
    """The machine being planned for (:class:`Target`), None when planning for this one."""
    return _TARGET


@contextlib.contextmanager
def planning_for(t: Target | None):
    """Inside the block plans are made for ``t`` (nothing changes when ``t`` is None)."""
    global _TARGET
    before, _TARGET = _TARGET, t if t is not None else _TARGET
    try:
        yield t
    finally:
        _TARGET = before


def footprint(device) -> int:
    """Bytes the process holds now: RSS on the CPU (peak RSS where /proc is missing), allocated
    memory on a GPU; planning for another machine (:class:`Target`), what its ranks would hold."""
    if _TARGET is not None:
        return _TARGET.held()
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    return _proc_status("VmRSS") or peak_rss()


def _proc_status(field: str, path: str = "/proc/self/status") -> int:
    """A memory field of /proc/self/status (or of ``path``: /proc/meminfo) in bytes, 0 where /proc is
    missing."""
    try:
        with open(path) as f:
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


def reset_peak(device) -> None:
    """Start a command's peak: on a GPU the allocator's peak statistic is reset (host RSS's peak,
    VmHWM, cannot be, and is the process's own from its start)."""
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device) -> dict:
    """A command's peak memory, each labelled: ``peak_rss_gb`` the host process's (VmHWM), and on a GPU
    ``device_peak_gb`` — the allocator's peak since :func:`reset_peak` — which is what a GPU plan
    predicts; the two are different memories and are never one number."""
    out = {"peak_rss_gb": round(peak_rss() / 2**30, 3)}
    device = torch.device(device)
    if device.type == "cuda":
        out["device_peak_gb"] = round(int(torch.cuda.max_memory_allocated(device)) / 2**30, 3)
        out["device"] = str(device)
    return out


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
    """p ← origin + α·delta, computed in the wider of float32 and the parameter dtype. When ``origin`` or
    ``delta`` is read by pieces (``read_flat``: on disk, or computed on demand like SAM's ε) each
    parameter is set :data:`DITHER_CHUNK` entries at a time — the same bits, and no float32 temporary
    of a whole parameter (a 233M-entry embedding's is 0.9 GB each)."""
    if not (hasattr(origin, "read_flat") or hasattr(delta, "read_flat")):
        for p, o, d in zip(params, origin, delta):
            wide = torch.promote_types(p.dtype, torch.float32)
            p.copy_((o.to(p.device, wide) + alpha * d.to(wide)).to(p.dtype))  # an origin may be on the host
        return
    streamed = None if hasattr(delta, "read_flat") or hasattr(delta, "__getitem__") else iter(delta)  # a generator
    for i, p in enumerate(params):
        wide = torch.promote_types(p.dtype, torch.float32)
        rd = flat_piece(delta, i) if streamed is None else flat_piece([next(streamed)], 0)
        ro, flat = flat_piece(origin, i), p.view(-1)
        for a in range(0, flat.numel(), DITHER_CHUNK):
            b = min(a + DITHER_CHUNK, flat.numel())
            flat[a:b].copy_((ro(a, b).to(p.device, wide) + alpha * rd(a, b).to(p.device, wide)).to(p.dtype))


DITHER_CHUNK = 1 << 20
# dtype → (the integer view, its exponent field, 2^-(mantissa bits)): exponent field & x, read back as
# a float, is 2^⌊log2|x|⌋; times 2^-mantissa it is x's spacing (ulp)
_FLOAT_BITS = {torch.float32: (torch.int32, 0x7F800000, 2.0 ** -23),
               torch.bfloat16: (torch.int16, 0x7F80, 2.0 ** -7),
               torch.float16: (torch.int16, 0x7C00, 2.0 ** -10),
               torch.float64: (torch.int64, 0x7FF0000000000000, 2.0 ** -52)}


def spacing(x: torch.Tensor) -> torch.Tensor:
    """The distance from each entry of ``x`` to the next float of its dtype away from zero (its ulp),
    in ``x``'s dtype; at least 2^-100 (zeros and subnormals: a step there is rounded as usual)."""
    ity, mask, mant = _FLOAT_BITS[x.dtype]
    return (x.view(ity) & mask).view(x.dtype).mul_(mant).clamp_min_(2.0 ** -100)


def _rolled(noise: torch.Tensor, shift: int, start: int, n: int) -> torch.Tensor:
    """``torch.roll(noise, shift)[start:start + n]`` without rolling the whole chunk: entry i of the
    rolled chunk is ``noise[(i − shift) mod len]``."""
    m = noise.numel()
    a = (start - shift) % m
    return noise[a:a + n] if a + n <= m else torch.cat([noise[a:], noise[:a + n - m]])


def flat_piece(vector, i: int):
    """Entries a..b of the i-th tensor of ``vector``, flattened, as ``read(a, b)``: a slice of the tensor in
    memory, or a read of just those entries when the vector lives on disk (it has ``read_flat``:
    :class:`landscape.measures.hessian.basis.DiskVector`'s views) — a 233M-entry embedding is then never
    read whole."""
    if hasattr(vector, "read_flat"):
        return lambda a, b: vector.read_flat(i, a, b)
    flat = vector[i].reshape(-1)
    return lambda a, b: flat[a:b]


@torch.no_grad()
def restore(params, origin: Vector) -> None:
    """p ← origin for every parameter, bit for bit; a disk-held origin is read :data:`DITHER_CHUNK`
    entries at a time."""
    for i, p in enumerate(params):
        if not hasattr(origin, "read_flat"):
            p.copy_(origin[i])
            continue
        read, flat = flat_piece(origin, i), p.view(-1)
        for a in range(0, flat.numel(), DITHER_CHUNK):
            flat[a:a + DITHER_CHUNK].copy_(read(a, min(a + DITHER_CHUNK, flat.numel())))


@torch.no_grad()
def set_dithered_offset(params, origin: Vector, delta: Vector, eps: float, ks, seed: int, leaves=None):
    """p ← origin + k·δ̃ for each k of ``ks`` in turn (a generator: the weights are set, the caller
    evaluates, then the next k), with δ̃ = ε·delta rounded *at random* to a whole number of the
    origin's spacing (ulp): up or down with the probabilities that make E[δ̃] = ε·delta.

    Why: ``set_offset`` rounds w + εv to the nearest float, and an entry whose step |εv_i| is below
    half its weight's spacing is lost outright (w_i + εv_i rounds back to w_i). The lost entries are
    those where v is small against w — a systematic shrinking of the step, which made central
    differences along SmolLM2-135M's top eigenvector 2.6e-3 too small at h = 3.8e-4 (‖w‖ = 2120: a
    weight of 0.2 has a spacing of 1.5e-8, a step of 1e-3 spread over 134M entries is ~9e-8 an entry);
    dithered, 4e-5 (docs/howto/memory.md, "Finite-difference HVPs"). Rounded at random, the error is zero-mean
    noise, independent of v, and the Hessian maps such noise to about the mean curvature, far below
    λ_max. Since δ̃ is a multiple of the spacing, w ± kδ̃ is exact (but where it crosses a power of two
    upwards), so the same draws (``seed``) serve every k of a stencil. Computed in the parameter's
    dtype (exact there) :data:`DITHER_CHUNK` entries at a time; one chunk of uniform draws per call,
    shifted per chunk of the *whole* tensor — of FSDP-sharded parameters (``leaves``: the sharded
    tensors whose local rows ``params`` are) each rank takes the draws of its rows, so a sharded
    run rounds exactly as one process does.
    """
    params, ks = list(params), list(ks)
    leaves = list(leaves) if leaves is not None else params
    dev = params[0].device
    g = torch.Generator(device=dev).manual_seed(seed)
    C = DITHER_CHUNK
    biggest = max(t.numel() for t in leaves)  # whole tensors' sizes: the same on every rank
    noise = torch.rand(min(C, max(biggest, 1)), generator=g, device=dev)
    shifts = torch.randint(0, C, (len(params), 1 + biggest // C), generator=g, device=dev).tolist()
    for k in ks:
        for i, (p, leaf) in enumerate(zip(params, leaves)):
            wide = torch.promote_types(p.dtype, torch.float32)
            shape, first, _ = rows(leaf)
            off = first * (shape[1:].numel() if len(shape) > 1 else 1)  # this rank's first entry in the whole
            flat_p, read_o, read_d = p.view(-1), flat_piece(origin, i), flat_piece(delta, i)
            n = flat_p.numel()
            for J in range(off // C, (off + n - 1) // C + 1) if n else ():
                g0, g1 = max(J * C, off), min((J + 1) * C, off + n)  # this chunk of the whole, held here
                a, b = g0 - off, g1 - off
                oc = read_o(a, b).to(p.device)  # an origin held on the host (params.offload) comes over
                oc = oc if oc.dtype == p.dtype else oc.to(p.dtype)  # a narrower exact origin
                ulp = spacing(oc).to(wide)
                q = read_d(a, b).to(wide).mul(eps).div_(ulp)  # the step in units of ulp
                units = q.floor()
                r = _rolled(noise, shifts[i][J], g0 - J * C, g1 - g0)
                units += r < q.sub_(units)  # up with probability frac(q)
                step = units.mul_(ulp)
                if p.dtype == wide:  # exact in place (never into oc: it may be the origin itself)
                    torch.add(oc, step, alpha=k, out=flat_p[a:b])
                else:  # bf16/fp16: exact in float32, and on the parameter's grid
                    flat_p[a:b].copy_(oc.to(wide) + k * step)
        # nothing of the last parameter is held while the caller evaluates (an untied 233M-entry head's
        # chunks are small, but a frame variable would keep whatever it last pointed to alive)
        oc = q = units = step = ulp = r = read_o = read_d = flat_p = None
        yield k


def free_memory(device) -> int | None:
    """Bytes this process may still allocate on ``device``: free CUDA memory plus what the caching
    allocator has reserved but not handed out (a long-lived process's cache is not taken), or
    MemAvailable of the host (divided among the processes of this node under torchrun); None when
    unknown. Planning for another machine (:class:`Target`): what its ranks would have free. Under
    torchrun the least over the ranks: they run each command's code together (a collective here), and
    every memory-driven choice (fd or exact, basis in memory or on disk) must be the same on all."""
    if _TARGET is not None:
        return _TARGET.free()
    device = torch.device(device)
    free = None
    try:
        if device.type == "cuda":
            cached = int(torch.cuda.memory_reserved(device)) - int(torch.cuda.memory_allocated(device))
            free = int(torch.cuda.mem_get_info(device)[0]) + max(0, cached)
        elif device.type == "cpu":
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        free = int(line.split()[1]) * 1024 // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
                        break
    except (OSError, RuntimeError, ValueError):
        free = None
    if dist.world() > 1:  # the ranks run each command's code together: the same memory-driven choices
        free = dist.all_reduce_scalar(float(free if free is not None else -1), op="min")
        free = None if free < 0 else int(free)
    return free


def nbytes(tensors) -> int:
    """Bytes held by this process (a sharded parameter counts its local rows)."""
    return sum(local(t).numel() * t.element_size() for t in tensors)
