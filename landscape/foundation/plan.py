"""Memory plans: the peak a command will reach, predicted before it allocates, in weight-sized units.

A measurement's memory is the process's footprint when it starts (runtime, weights) plus what it
adds: the activations autograd saves for one batch (only one batch's graph exists at a time: terms
are accumulated batch by batch), one parameter's gradient at a time (gradients are streamed, see
``objective.accumulate_grad``), and the weight-sized vectors of the estimator. Every figure is in
bytes; :func:`plan` also gives them in units of the selected weights' bytes, so "Lanczos with fd
HVPs = weights + 1 copy + 2 vectors" reads as it is.

The activations are *measured*, not modelled: one sequence of the batch's length is run forward
with a counter on the tensors autograd saves (:func:`activation_bytes`), and scaled by the batch
size — cheap at any model size (one sequence of 48 tokens on the 1.1B shape: 0.1 GB). The one
factor that is a fit is the exact (double-backward) HVP's graph: EXACT_HVP_FACTOR weight copies and
EXACT_ACT_FACTOR × the activations, fitted on the 4M toy and SmolLM2-135M (docs/howto/memory.md).

Commands refuse, with one line, a plan whose peak exceeds the memory the process may still take
(:func:`check_fits`), instead of being killed by the OS.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from landscape.foundation import params as P
from landscape.foundation.errors import UserError

# Fitted (see module docstring): double backward keeps the gradient with its graph and the
# weight-shaped intermediates of every matmul's backward.
EXACT_HVP_FACTOR = 7.0
EXACT_ACT_FACTOR = 3.0
# Safety margin of a refusal: a plan over this share of the free memory is refused.
HEADROOM = 0.92


@dataclass
class Plan:
    """Predicted peak of one command (bytes), its parts and the choices ``auto`` made."""

    command: str
    parts: dict = field(default_factory=dict)  # name → bytes added on top of the starting footprint
    start: int = 0  # bytes held when the command starts (runtime + weights)
    unit: int = 1  # bytes of one weight-sized vector of the selected parameters (parameter dtype)
    choices: dict = field(default_factory=dict)
    pending: int = 0  # bytes of ``start`` not resident yet (weights memory-mapped, read on first use)

    @property
    def peak(self) -> int:
        return self.start + sum(self.parts.values())

    def fits(self, free: int | None) -> bool:
        """Whether what the plan adds (and what of its start is not resident yet) fits ``free`` bytes
        with the headroom; True when the free memory is unknown."""
        return free is None or self.peak - self.start + self.pending <= HEADROOM * free

    def as_dict(self) -> dict:
        """The plan in GB; planning for another machine (:class:`params.Target
        <landscape.foundation.params.Target>`), one rank's share and whether it fits there."""
        t = P.target()
        n = t.world if t is not None else 1
        gb = lambda b: round(b / n / 2**30, 3)  # noqa: E731
        out = {"command": self.command, "peak_gb": gb(self.peak), "start_gb": gb(self.start),
               "peak_bytes": self.peak // n, "start_bytes": self.start // n,
               "parts_gb": {k: gb(v) for k, v in self.parts.items()},
               "in_weight_units": {k: round(v / max(self.unit, 1), 2) for k, v in self.parts.items()},
               "weight_gb": gb(self.unit), "not_resident_gb": gb(self.pending), "choices": dict(self.choices)}
        if t is not None:
            free = t.free()
            out["target"] = {"device": t.device_type, "device_memory_gb": None if t.memory is None else
                             round(t.memory / 2**30, 3), "world_size": t.world, "per": "rank" if n > 1 else "process",
                             "free_gb": gb(free), "fits": self.fits(free)}
            if "free_gb" in out["choices"]:
                out["choices"]["free_gb"] = gb(free)
        return out


def activation_bytes(model: torch.nn.Module, batches, exact: bool = False) -> int:
    """Bytes autograd saves for the largest batch's loss (its graph), measured on one sequence of
    that batch's length and scaled by its number of sequences. Parameters' own storages are not
    counted (they are the weights). ``exact``: under the math attention that exact (double-backward)
    products run (:func:`~landscape.foundation.loss.math_attention`), whose B·H·T² attention
    weights SDPA's fused kernels never save — at 2,048 tokens they dominate."""
    if exact:
        from landscape.foundation.loss import math_attention

        with math_attention():
            return activation_bytes(model, batches)
    from landscape.foundation.data import Batch
    from landscape.foundation.loss import nll_sum, param_device

    big = max(batches, key=lambda b: b.input_ids.numel())
    B = big.input_ids.shape[0]
    if param_device(model).type == "meta":
        return B * _meta_activation_bytes(model, big.input_ids.shape[1])
    one = Batch(big.input_ids[:1], big.attention_mask[:1], big.labels[:1]).to(param_device(model))
    counter = SavedBytes(list(model.parameters()), model=model)
    with torch.enable_grad(), counter:
        loss = nll_sum(model, one)
    del loss
    return counter.bytes * B


def _meta_activation_bytes(model: torch.nn.Module, T: int) -> int:
    """One sequence's graph for a model on the meta device (a plan for another machine), measured on
    real CPU copies of its architecture cut to one and two decoder blocks (uninitialised weights: the
    saved tensors' sizes do not depend on values) and extrapolated to all blocks — the same probe and
    attention path as a loaded model's, at the cost of two blocks and the embeddings in memory for a
    moment (7.6 GB for a 70B's in bf16). A forward on meta tensors cannot run: transformers reads the
    attention mask's values."""
    import copy

    from transformers import AutoModelForCausalLM

    from landscape.foundation.checkpoint import enable_grad_checkpointing, recomputes_activations
    from landscape.foundation.data import Batch
    from landscape.foundation.loss import nll_sum

    full = model.config.num_hidden_layers
    dtype = next(model.parameters()).dtype
    got = []
    for layers in (1, 2):
        cfg = copy.deepcopy(model.config)
        cfg.num_hidden_layers = layers
        for key in ("layer_types", "mlp_only_layers"):  # per-layer lists follow the depth
            if isinstance(getattr(cfg, key, None), list):
                setattr(cfg, key, getattr(cfg, key)[:layers])
        with torch.device("meta"):
            small = AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation=cfg._attn_implementation)
        small = small.to_empty(device="cpu").eval()
        if recomputes_activations(model):
            enable_grad_checkpointing(small)
        with torch.no_grad():
            for p in small.parameters():
                p.normal_(0, 0.02)  # finite values: uninitialised memory can hold NaN signalling traps
        ids = torch.zeros(1, T, dtype=torch.long)
        one = Batch(ids, torch.ones_like(ids), ids.clone())
        counter = SavedBytes(list(small.parameters()), model=small)
        with torch.enable_grad(), counter:
            loss = nll_sum(small, one)
        del loss, small
        got.append(counter.bytes)
    return got[0] + (full - 1) * max(0, got[1] - got[0])


class SavedBytes(torch.autograd.graph.saved_tensors_hooks):
    """Counts the bytes of distinct storages autograd saves inside the block (the graph's memory),
    leaving out the parameters' own storages (the activation probe here, the kept-graph decision of
    ``HessianOperator``)."""

    def __init__(self, params, model=None):
        self.bytes = 0
        skip = {P.local(p).untyped_storage().data_ptr() for p in params}
        seen = set()
        # FSDP swaps gathered (whole) parameters into the model for each unit's pass and frees them
        # after: their storages are weights, not activations, and are new at every gather
        gathered = model if model is not None and P.any_sharded(params) else None

        def pack(t):
            key = t.untyped_storage().data_ptr()
            counted = gathered is None or key not in {q.untyped_storage().data_ptr() for q in gathered.parameters()
                                                      if not P.is_sharded(q)}
            if counted and key not in skip and key not in seen:
                seen.add(key)
                self.bytes += t.untyped_storage().nbytes()
            # detached: a saved output handed back with its grad_fn closes a cycle through the C++ graph
            # (grad_fn → saved variable → tensor → grad_fn) that Python's gc cannot see, and the whole
            # graph leaked at every plan and every kept-graph measurement (pytorch#189025); autograd
            # puts the grad_fn back on unpacking, so first and second derivatives are unchanged
            return t.detach()

        super().__init__(pack, lambda t: t)


def _largest(params) -> int:
    return max((P.local(p).numel() * p.element_size() for p in params), default=0)


def transients(params) -> int:
    """Per-parameter temporaries of the vector algebra (a float64 pair in a dot, w + εv before its
    cast): four of the largest parameter (the embedding, usually) — measured as the gap between the
    plan without them and the peak on SmolLM2 (0.8 GB of 3.5) and the 1.1B shape (1.6 of 18.9)."""
    return 4 * max((P.local(p).numel() * max(4, p.element_size()) for p in params), default=0)


# With fd's saved weights or the Lanczos direction on disk, read in 1M-entry chunks, what is left
# per parameter is the backward's own: the dense gradient autograd builds for the largest parameter (the
# embedding) beside the streamed gradient of the next largest (an untied head). Measured on the real
# Qwen2.5-Coder-1.5B (float32 λ_max, q and the copy on disk): peak 16.02 GiB; planned with 2 × the
# largest, 17.0 GiB (+6%); with the in-memory rule's 4 ×, 18.8 (+17%).
DISK_TRANSIENTS = 2


def curvature(params, act, hvp_method: str, vectors: int, vector_itemsize: int, start: int,
              origin_held: bool = False, on_disk: tuple = (False, False)) -> Plan:
    """Peak of an estimator holding ``vectors`` weight-sized vectors (of ``vector_itemsize`` bytes
    an entry) over HVPs by ``hvp_method`` (fd: one saved copy of the weights, none when the caller
    holds the exact originals — ``origin_held``; exact: the double-backward graph). ``on_disk``:
    (fd's saved weights, the Lanczos direction) kept on disk and read in chunks — no copy in memory,
    and fewer per-parameter transients (:data:`DISK_TRANSIENTS`). ``act``: the activations, or the pair
    (SDPA's, math attention's — :func:`activation_bytes` ``exact``, which exact products hold)."""
    act, act_exact = act if isinstance(act, tuple) else (act, act)
    ps = list(params)
    n = P.numel(ps)
    unit = P.nbytes(ps)
    parts = {"vectors": vectors * n * vector_itemsize}
    parts["transients"] = transients(ps) if not any(on_disk) else \
        DISK_TRANSIENTS * max((P.local(p).numel() * max(4, p.element_size()) for p in ps), default=0)
    if hvp_method == "fd":
        parts["fd_weight_copy"] = 0 if origin_held or on_disk[0] else unit
        parts["gradient_stream"] = _largest(ps)
        parts["activations"] = act
    elif hvp_method in ("reverse", "forward"):
        parts["hvp_graph"] = int(EXACT_HVP_FACTOR * unit)
        parts["activations"] = int(EXACT_ACT_FACTOR * act_exact)
    return Plan("sharpness", parts, start, unit, {"hvp_method": hvp_method, "vectors": vectors})


def predict(params, act, hvp_method: str, start: int, on_disk: bool = False) -> Plan:
    """Peak of `predict` per fine-tune (the tuned weights are freed once Δw is formed): Δw and H·Δw
    (float32, or the parameters' dtype when wider), the base weights saved for the line and for fd
    products to restore from, and one HVP (fd: a streamed gradient; exact: its graph). ``on_disk``: Δw
    and the saved weights in temporary files (read a piece at a time): H·Δw is the one vector held."""
    ps = list(params)
    itemsize = max(4, max((p.element_size() for p in ps), default=4))
    p = curvature(ps, act, hvp_method, 1 if on_disk else 2, itemsize, start, on_disk=(on_disk, on_disk))
    parts = {k: v for k, v in p.parts.items() if k != "fd_weight_copy"}
    parts["base_copy"] = 0 if on_disk else p.unit
    if P.is_half(ps):  # measured in a float32 view (params.widened): the originals are the base's copy
        parts.update(float32_view=2 * p.unit, base_copy=0, activations=2 * parts.get("activations", 0))
        for k in ("gradient_stream", "hvp_graph"):
            if k in parts:
                parts[k] *= 2
    return Plan("predict", parts, start, p.unit, {"hvp_method": hvp_method, "vectors_on_disk": on_disk})


def finetune(params, act: int, optimizer: str, start: int, bf16: bool = False, grad_accum: int = 1) -> Plan:
    """Peak of a fine-tune from its second step on (the first holds no optimizer state yet, so it
    peaks lower): the gradients (``.grad``), AdamW's two moments, and for SAM/ASAM the weights saved
    to restore after the ascent (alive during pass 2, beside the moments), plus pass 1's own gradient
    buffer when several micro-batches accumulate (with one, pass 1 goes through ``.grad`` and is
    dropped before pass 2), one micro-batch's activations (SAM's two passes run one at a time) and
    the per-parameter temporaries of the AdamW update."""
    ps = list(params)
    unit = P.nbytes(ps)
    parts = {"gradients": unit, "adamw_moments": 2 * unit, "activations": act, "transients": transients(ps)}
    if optimizer in ("sam", "asam"):
        parts["sam_saved_weights"] = unit
        if grad_accum > 1:
            parts["sam_pass1_gradient"] = unit
    return Plan("finetune", parts, start, unit, {"optimizer": optimizer, "bf16_autocast": bf16})


def surface(params, start: int, axes: int, held: bool, points_per_pass: int = 1, forward: int = 0) -> Plan:
    """Peak of `surface`: the saved origin (one copy of the weights), the directions (held: one float32
    vector per axis — a checkpoint axis's w_target − w too — plus an orthogonalised y's new copy beside
    the old one while it is formed; regenerated: one parameter's scratch), K stacked float32 weight
    sets and their cast for K points per vectorised pass, and one no-grad forward (``forward``: its
    largest tensors, the logits). Target checkpoints are loaded before the plan is made: they are in
    ``start``."""
    ps = list(params)
    unit, n = P.nbytes(ps), P.numel(ps)
    parts = {"origin_copy": unit, "transients": transients(ps), "forward": forward}
    if held:
        parts["directions"] = axes * 4 * n
        if axes == 2:
            parts["orthogonalize"] = 4 * n
    if points_per_pass > 1:
        parts["stacked_points"] = points_per_pass * (4 * n + unit)
    return Plan("surface", parts, start, unit, {"directions": "held" if held else "regenerated", "axes": axes,
                                                "points_per_pass": points_per_pass})


def forward_bytes(model: torch.nn.Module, batches) -> int:
    """The largest transients of one no-grad forward of the longest batch: the logits in float32 and
    their log-softmax (B·T·V each), the biggest of what `surface` and `loss` hold beyond the weights."""
    vocab = getattr(getattr(model, "config", None), "vocab_size", None) or 0
    big = max(batches, key=lambda b: b.input_ids.numel())
    return 3 * 4 * int(big.input_ids.numel()) * int(vocab)


# auto takes exact products (float32/float64 weights) only while their peak stays within this factor
# of the finite differences' peak: beyond it, the double-backward graph is memory spent on accuracy
# that dithered fd products already give (~1e-4 of λ_max in float32, docs/howto/memory.md, "Finite-difference HVPs")
EXACT_OVER_FD = 1.5


def resolve_hvp_method(params, act, asked: str, start: int, free: int | None, vector_itemsize: int = 4,
                       sharded: bool = False) -> str:
    """``asked``, or for "auto": finite differences on a sharded model (double backward does not run
    through FSDP: pytorch#172543) or where the exact plan does not fit the memory still free, or
    peaks above :data:`EXACT_OVER_FD` × fd's (from SmolLM2-135M up: its graph is 7 weight copies and
    3× the activations, against fd's one copy); else the exact double backward — small models.
    Half-precision weights are measured in a float32 view (``params.widened``): the same rule holds.
    ``sharded``: ``params`` are this rank's rows of an FSDP model (the objective's ``sharded``)."""
    if asked != "auto":
        return asked
    t = P.target()
    ps = list(params)
    if sharded or (t is not None and t.world > 1):
        return "fd"

    exact = curvature(ps, act, "reverse", 2, vector_itemsize, start)
    if free is not None and exact.peak - start > HEADROOM * free:
        return "fd"
    fd = curvature(ps, act, "fd", 2, vector_itemsize, start)
    if exact.peak > EXACT_OVER_FD * fd.peak:
        return "fd"
    return "reverse"


def check_fits(plan: Plan, free: int | None, what: str = "", hint: str | None = None) -> None:
    """A one-line :class:`UserError` when the plan's peak will not fit what the process may take.
    ``hint``: what would fit; by default fd products when the plan has exact ones to give up."""
    if plan.fits(free):
        return
    if hint is None:
        fd = "hvp_method fd, " if plan.parts.get("hvp_graph") else ""
        hint = fd + "fewer or shorter batches, a params subset, or a larger machine"
    need = plan.peak - plan.start + plan.pending  # what is not resident yet comes out of the free memory too
    parts = ", ".join(f"{k} {v / 2**30:.1f}" for k, v in plan.parts.items() if v)
    raise UserError(f"{what or plan.command} needs about {need / 2**30:.1f} GB more ({parts}; peak "
                    f"{plan.peak / 2**30:.1f} GB) and {free / 2**30:.1f} GB is free: try {hint} (dry_run shows the "
                    f"plan)")


RUNTIME = int(0.35 * 2**30)  # RSS of Python + torch + transformers before any weights (measured: 0.31 GB)


def start_bytes(model: torch.nn.Module, device, kept=None) -> int:
    """The footprint a command starts from: what the process holds now, or the runtime plus every
    weight when more (weights memory-mapped from safetensors are not resident until first read) and
    the ``kept`` tensors (the half-precision originals beside a float32 view).
    On a sharded model every pass also gathers one FSDP unit whole (:func:`gathered_bytes`)."""
    gathered = gathered_bytes(model)
    t = P.target()
    if t is not None:  # every rank's runtime, weights, kept originals and gathered unit
        return t.world * t.runtime() + P.nbytes(list(model.parameters())) + P.nbytes(kept or []) + t.world * gathered
    held = P.footprint(device) + gathered
    if torch.device(device).type == "cuda":
        return held
    return max(held, RUNTIME + P.nbytes(list(model.parameters())) + P.nbytes(kept or []) + gathered)


def pending_bytes(weight_bytes: int, device) -> int:
    """The part of a CPU process's weights (``weight_bytes``, beside the runtime) that is not anonymous
    memory yet: safetensors weights are memory-mapped, and their pages — read or not — are file pages
    that the free memory (MemAvailable) also counts, until a measurement writes them and they become
    the process's own. Seen on the 1.5B model: a plan of 18.1 GB on top of 7.0 "held" whose 6.4 GB of
    weights were file pages, let run towards 25 GB on a 24 GB machine. 0 on a GPU (allocated is held)."""
    if torch.device(device).type != "cpu" or P.target() is not None:
        return 0
    anon = P._proc_status("RssAnon")  # the runtime's own anonymous memory counts as the weights' here:
    return max(0, weight_bytes - anon) if anon else 0  # an underestimate by at most that (~0.3 GB)


def gathered_bytes(model: torch.nn.Module) -> int:
    """The transient of FSDP's all-gather, 0 unsharded: the largest unit (a decoder block, the
    embedding or the head) whole, about three times over on gloo (the gathered chunks, their
    concatenation, the copy-in buffer) and twice with NCCL — measured on the 1.1B shape's embedding."""
    from landscape.foundation.loss import param_device
    from landscape.foundation.sharding import decoder_blocks, units

    t = P.target()
    if t is not None:  # the units --shard fsdp would make: each block, an untied embedding and head
        if t.world == 1:
            return 0
        emb, head = model.get_input_embeddings(), model.get_output_embeddings()
        whole = [list(b.parameters()) for b in decoder_blocks(model)] + [[emb.weight]]
        if head is not None and head.weight is not emb.weight:
            whole.append([head.weight])
        return (2 if t.device_type == "cuda" else 3) * max(P.nbytes(ps) for ps in whole)
    parts = [u for u in units(model) if u is not model]
    if not parts:
        return 0
    whole = lambda ps: sum(p.numel() * p.element_size() for p in ps)  # noqa: E731 (numel: the whole tensor's)
    inner = {id(p) for u in parts for p in u.parameters()}
    biggest = max([whole(u.parameters()) for u in parts] + [whole(p for p in model.parameters() if id(p) not in inner)])
    return (2 if param_device(model).type == "cuda" else 3) * biggest


def free_bytes(device) -> int | None:
    return P.free_memory(device)
