"""Sharpness-aware minimisation: SAM (Foret et al. 2021) and ASAM (Kwon et al. 2021).

SAM minimises the worst loss in a ρ-ball around the weights, ``min_w max_{‖ε‖≤ρ} L(w + ε)``, with the
first-order solution of the inner problem:

    SAM:   ε = ρ · g / ‖g‖₂
    ASAM:  ε = ρ · T²g / ‖T g‖₂,   T = diag(|w| + η)   (η = 0 gives ε = ρ·w²⊙g / ‖|w|⊙g‖₂)

and then a base-optimizer step from the *original* weights w with the gradient taken at w + ε.
That is exactly two forward/backward passes per step: one for g at w, one at w + ε.

Conventions this module keeps:

- The weights are restored bit-exactly between the passes (a saved copy, not ``w + ε − ε``), with the
  perturb/restore every measurement uses (:func:`landscape.foundation.params.set_offset`, ``restore``):
  w + ε is computed from the saved copy in float32 and rounded once to the parameter's dtype.
- ‖g‖ is global over all parameters of the optimizer. Under DDP each rank holds the whole
  gradient, so the local norm *is* the global one; FSDP2 parameters (DTensors) are recognised and
  their rows' squared norms all-reduced; for any other set-up where each rank holds a slice, pass
  ``shard_group``. On one process nothing distributed is touched.
- Gradient accumulation: the perturbation is taken **per micro-batch** (the m-sharpness reading of
  SAM, Foret et al. §4.1; it is also what data-parallel SAM computes when the first pass runs under
  ``no_sync``): each micro-batch k gets its own ε_k from its own gradient, the second-pass gradients
  ∇L_k(w + ε_k) are accumulated (weighted by the micro-batch's share of the loss tokens), and one
  base step follows. So k micro-batches on one process equal k data-parallel ranks with one
  micro-batch each. ``perturb`` / ``restore`` are the pieces a training loop needs for that.
- Weight decay, the learning-rate schedule and gradient clipping belong to the base step only.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch

from landscape.foundation.params import any_sharded, is_sharded, local, mixed_sq_norm, restore, set_offset


class Perturbation:
    """The ascent half of SAM, independent of any optimizer: ``perturb(grads)`` then ``restore()``."""

    def __init__(self, params: Iterable[torch.Tensor], rho: float = 0.05, adaptive: bool = False,
                 eta: float = 0.0, shard_group=None):
        if rho <= 0:
            raise ValueError(f"rho must be > 0, got {rho}")
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        self.params = [p for p in params if p.requires_grad]
        # FSDP2 parameters (DTensors): everything below acts on this rank's rows, the norm all-reduced
        self.sharded = any_sharded(self.params)  # some rows are this rank's only
        self.rho, self.adaptive, self.eta, self.shard_group = float(rho), bool(adaptive), float(eta), shard_group
        self._saved: list[torch.Tensor] | None = None
        self.last_norm: float | None = None

    @property
    def active(self) -> bool:
        return self._saved is not None

    @torch.no_grad()
    def perturb(self, grads: list[torch.Tensor | None] | None = None) -> float:
        """Save the weights, then move them to w + ε. ``grads`` default to each ``p.grad``.

        Returns ‖g‖₂ (‖T g‖₂ for ASAM). Parameters without a gradient are not moved.
        """
        if self._saved is not None:
            raise RuntimeError("perturb() called twice without restore()")
        if grads is None:
            grads = [p.grad for p in self.params]
        kept = [(p, g) for p, g in zip(self.params, grads) if g is not None]
        pairs = [(local(p), local(g)) for p, g in kept]
        if self.adaptive:
            scaled = [(p.detach().abs() + self.eta) * g for p, g in pairs]  # T g
        else:
            scaled = [g for _, g in pairs]
        rows = [is_sharded(p) for p, _ in kept]  # FSDP rows (summed over ranks) or whole tensors
        slices = self.shard_group is not None and not self.sharded  # a user's own sharding: all are slices
        norm = mixed_sq_norm(scaled, rows, self.shard_group, slices=slices).sqrt()
        self.last_norm = float(norm)
        self._saved = [local(p).detach().clone() for p in self.params]
        scale = self.rho / (norm + 1e-12)
        moved = {id(p) for p, _ in kept}
        origin = [w for p, w in zip(self.params, self._saved) if id(p) in moved]
        # w + ε from the saved copy, rounded once; ε computed a chunk at a time as it is written (a list
        # of float32 ε was a float32 copy of the gradient: 6.6 GB more for a bf16 1.5B, killed by the OS)
        set_offset([p for p, _ in pairs], origin, _Ascent(pairs, scaled, scale, self.adaptive, self.eta))
        return self.last_norm

    @torch.no_grad()
    def restore(self) -> None:
        """Put back the weights saved by :meth:`perturb` (bit-exact)."""
        if self._saved is None:
            raise RuntimeError("restore() called without perturb()")
        restore([local(p) for p in self.params], self._saved)
        self._saved = None


class _Ascent:
    """SAM's ε = ρ·T²g/‖Tg‖ (ASAM) or ρ·g/‖g‖, read by pieces (``read_flat``: entries a..b of the i-th
    parameter, float32) so that :func:`~landscape.foundation.params.set_offset` never holds a whole
    parameter's ε. The i-th parameter is read before it is written (ASAM's T uses its weights)."""

    def __init__(self, pairs, scaled, scale, adaptive: bool, eta: float):
        self.pairs, self.scaled, self.scale, self.adaptive, self.eta = pairs, scaled, scale, adaptive, eta

    def read_flat(self, i: int, a: int, b: int) -> torch.Tensor:
        tg = self.scaled[i].reshape(-1)[a:b]
        e = tg * (self.pairs[i][0].detach().reshape(-1)[a:b].abs() + self.eta) if self.adaptive else tg
        return e.float() * self.scale.to(e.device)


class SAM(torch.optim.Optimizer):
    """SAM / ASAM around any base optimizer (``torch.optim.AdamW`` by default).

    ``first_step()`` perturbs the weights by ε computed from the current ``.grad``;
    ``second_step()`` restores the saved weights and takes the base step with the ``.grad`` now
    present (the gradient at w + ε); ``step(closure)`` does both, calling ``closure`` twice (it must
    zero the gradients, run forward and backward, and return the loss).

    The parameter groups are the base optimizer's, so LR schedulers attached to this optimizer drive
    the base step. ``state_dict()`` is the base optimizer's state plus SAM's settings.
    """

    def __init__(self, params, base_optimizer: type[torch.optim.Optimizer] = torch.optim.AdamW,
                 rho: float = 0.05, adaptive: bool = False, eta: float = 0.0, shard_group=None,
                 **base_kwargs):
        params = list(params)
        self.base_optimizer = base_optimizer(params, **base_kwargs)
        super().__init__(self.base_optimizer.param_groups, dict(self.base_optimizer.defaults))
        self.param_groups = self.base_optimizer.param_groups  # one list, shared
        self.state = self.base_optimizer.state
        flat = [p for g in self.param_groups for p in g["params"]]
        self.perturbation = Perturbation(flat, rho=rho, adaptive=adaptive, eta=eta, shard_group=shard_group)

    @property
    def rho(self) -> float:
        return self.perturbation.rho

    @property
    def adaptive(self) -> bool:
        return self.perturbation.adaptive

    def first_step(self, grads: list | None = None, zero_grad: bool = True) -> float:
        """w ← w + ε(g), g = ``grads`` or each parameter's ``.grad``; returns the gradient norm used.

        Per-micro-batch SAM (see the module docstring) passes the micro-batch's own gradient and
        ``zero_grad=False``, so the second-pass gradients already in ``.grad`` keep accumulating.
        """
        norm = self.perturbation.perturb(grads)
        if zero_grad:
            self.zero_grad(set_to_none=True)
        return norm

    def restore(self) -> None:
        """w ← the weights saved by :meth:`first_step` (bit-exact), without a step."""
        self.perturbation.restore()

    def base_step(self) -> None:
        """The base optimizer's step from the current (restored) weights with the current ``.grad``."""
        self.base_optimizer.step()

    def second_step(self, zero_grad: bool = True) -> None:
        """w ← saved w, then the base step with the gradient taken at w + ε."""
        self.restore()
        self.base_step()
        if zero_grad:
            self.zero_grad(set_to_none=True)

    def step(self, closure: Callable[[], torch.Tensor] | None = None):
        if closure is None:
            raise RuntimeError("SAM.step needs a closure (zero_grad, forward, backward, return loss); "
                               "or call first_step()/second_step() yourself")
        with torch.enable_grad():
            loss = closure()
        self.first_step(zero_grad=True)
        try:
            with torch.enable_grad():
                closure()
        except BaseException:
            self.perturbation.restore()  # never leave the model perturbed
            raise
        self.second_step(zero_grad=False)
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base_optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"base": self.base_optimizer.state_dict(),
                "sam": {"rho": self.rho, "adaptive": self.adaptive, "eta": self.perturbation.eta}}

    def load_state_dict(self, state_dict: dict) -> None:
        self.base_optimizer.load_state_dict(state_dict["base"])
        self.param_groups = self.base_optimizer.param_groups
        self.state = self.base_optimizer.state
        s = state_dict.get("sam", {})
        self.perturbation.rho = float(s.get("rho", self.rho))
        self.perturbation.adaptive = bool(s.get("adaptive", self.adaptive))
        self.perturbation.eta = float(s.get("eta", self.perturbation.eta))


class SAMMixin:
    """SAM/ASAM for any ``transformers.Trainer`` subclass: ``class SAMSFT(SAMMixin, trl.SFTTrainer)``.

    Keyword arguments ``sam_rho`` (0.05), ``sam_adaptive`` (False: SAM; True: ASAM) and ``sam_eta``
    join the trainer's own. Every micro-batch is a SAM micro-step: the first-pass gradient at w is
    taken with the trainer's own ``compute_loss`` (under ``no_sync`` when distributed), the weights move
    to w + ε, the trainer's own ``training_step`` does the second pass (its backward accumulates into
    ``.grad`` as usual: mixed precision, accumulation and clipping untouched) and the weights are put
    back bit-exactly. The optimizer step the trainer takes afterwards is SAM's base step, with
    per-micro-batch perturbations (see the module docstring). The loss the trainer logs is the
    second pass's, L(w + ε) (as SAMTrainer always did).

    Metrics a trainer's ``compute_loss`` records on every call (TRL's token count and its
    entropy/token-accuracy, the attributes named in ``sam_quiet_state``) are kept from the first pass
    only: counted once per micro-batch and measured at the unperturbed weights. A trainer with other
    such state extends ``sam_quiet_state``.
    """

    sam_quiet_state: tuple = ("_metrics", "_total_train_tokens")

    def __init__(self, *args, sam_rho: float = 0.05, sam_adaptive: bool = False, sam_eta: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.sam_rho, self.sam_adaptive, self.sam_eta = sam_rho, sam_adaptive, sam_eta
        self._sam = None

    def _sam_first_pass(self, model, inputs, num_items_in_batch, params) -> list:
        """∇L(w) of this micro-batch through the trainer's own loss; ``.grad`` is left as it was.

        Unsharded (one process, DDP): ``torch.autograd.grad`` under ``no_sync`` — this rank's own
        gradient. FSDP2 (DTensor parameters): the graph's leaves are the all-gathered tensors, so
        ``autograd.grad`` on the parameters returns None for every one (SAM would silently be the base
        optimizer at twice the cost); the gradient exists only as the reduce-scattered ``.grad`` of each
        parameter's rows, so pass 1 runs ``backward`` with the accumulated ``.grad`` set aside, and its ε
        is that of the data-parallel batch (all ranks' rows of this micro-batch), as on one process with
        that batch.
        """
        first = self._prepare_inputs(dict(inputs))
        if not any_sharded(params):
            sync = self.accelerator.no_sync(model) if self.accelerator.num_processes > 1 else _null()
            with sync:
                with self.compute_loss_context_manager():
                    loss1 = self.compute_loss(model, first, num_items_in_batch=num_items_in_batch)
                return list(torch.autograd.grad(loss1, params, allow_unused=True))
        _refuse_deferred_reduction(model)
        kept = [p.grad for p in params]
        for p in params:
            p.grad = None
        try:
            with self.compute_loss_context_manager():
                loss1 = self.compute_loss(model, first, num_items_in_batch=num_items_in_batch)
            loss1.backward()
            grads = [p.grad for p in params]
        finally:
            for p, g in zip(params, kept):
                p.grad = g
        _average_replicated(params, grads)
        return grads

    def training_step(self, model, inputs, num_items_in_batch=None):
        import copy

        params = [p for p in model.parameters() if p.requires_grad]
        if self._sam is None or self._sam.params != params:
            self._sam = Perturbation(params, rho=self.sam_rho, adaptive=self.sam_adaptive, eta=self.sam_eta)
        model.train()
        grads = self._sam_first_pass(model, inputs, num_items_in_batch, params)
        self._sam.perturb(grads)
        del grads
        kept = {k: copy.deepcopy(getattr(self, k)) for k in self.sam_quiet_state if hasattr(self, k)}
        try:
            return super().training_step(model, inputs, num_items_in_batch)
        finally:
            self._sam.restore()
            for k, v in kept.items():  # the perturbed pass's metrics are dropped
                setattr(self, k, v)


def _make_sam_trainer():
    from transformers import Trainer

    class SAMTrainer(SAMMixin, Trainer):
        """A ``transformers.Trainer`` whose every micro-batch is a SAM (or ASAM) micro-step
        (:class:`SAMMixin` over the stock Trainer).

        Drop-in: ``SAMTrainer(model=..., args=..., train_dataset=..., sam_rho=0.05,
        sam_adaptive=False)``. The Trainer's own optimizer, scheduler, clipping, mixed precision,
        gradient accumulation and accelerate/torchrun set-up are untouched.
        """

    return SAMTrainer


def _refuse_deferred_reduction(model) -> None:
    """Under FSDP2 gradient accumulation (reduction deferred to the last micro-batch), pass 1's
    gradient would never reach ``.grad``, or would be reduced together with the earlier micro-batches'
    pass-2 sums: refused with what works instead."""
    for m in model.modules():
        state = getattr(m, "_get_fsdp_state", None)
        group = getattr(state(), "_fsdp_param_group", None) if state else None
        if group is not None and not getattr(group, "reduce_grads", True):
            raise RuntimeError("SAM under FSDP2 needs each micro-batch's gradient reduced: use gradient_accumulation_"
                               "steps=1 (a larger per-device batch), or accelerate's sync_each_batch=True")


def _average_replicated(params, grads) -> None:
    """Under FSDP2, gradients of parameters every rank holds whole (not managed by FSDP) averaged over
    the ranks, in place, as FSDP's reduce-scatter averages the rows: every rank then takes one ε."""
    import torch.distributed as tdist

    whole = [g for p, g in zip(params, grads) if g is not None and not is_sharded(p)]
    if whole and tdist.is_available() and tdist.is_initialized():
        for g in whole:
            tdist.all_reduce(g, op=tdist.ReduceOp.SUM)
            g.div_(tdist.get_world_size())


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def __getattr__(name):
    # SAMTrainer needs transformers' Trainer (and accelerate); import it only when asked for, once:
    # the class is built on first access and kept, so every access gives the same class.
    if name == "SAMTrainer":
        trainer = _make_sam_trainer()
        globals()["SAMTrainer"] = trainer
        return trainer
    raise AttributeError(name)
