"""The one loss every measurement shares: token-weighted mean next-token cross-entropy.

    L(w) = (1 / N) · Σ_batches Σ_{(b,t) : labels[b,t] ≠ -100, t ≥ 1}  −log p_w(x[b,t] | x[b,<t])

where N is the number of loss-bearing tokens over *all* batches. Because the sum runs over tokens,
not batches, the loss of two batches equals the loss of their concatenation (batch-split
invariance), and gradients/HVPs accumulated batch by batch with :func:`batch_term` are exact.

Cross-entropy is computed in at least float32 (bf16 logits are upcast; float64 stays float64).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from landscape.foundation.data import IGNORE, Batch


def param_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


class functional:
    """``model`` run with ``weights`` (parameter name → tensor) in place of its own parameters
    (``torch.func.functional_call``), callable like the model, so :func:`nll_sum` and
    :func:`batch_term` work under ``torch.func`` transforms (vmap over weight sets, jvp)."""

    def __init__(self, model: torch.nn.Module, weights: dict):
        self.model, self.weights = model, weights

    def __call__(self, **kwargs):
        from torch.func import functional_call

        return functional_call(self.model, self.weights, (), kwargs, strict=False)


def logits_of(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """(B, T, V) next-token logits."""
    return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits


def nll_sum(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Σ of −log p over the loss-bearing tokens of one batch (a 0-d tensor, differentiable)."""
    logits = logits_of(model, batch)[:, :-1]  # (B, T-1, V): position t predicts token t+1
    targets = batch.labels[:, 1:]  # (B, T-1)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           ignore_index=IGNORE, reduction="sum")


def batch_term(model: torch.nn.Module, batch: Batch, total_tokens: int) -> torch.Tensor:
    """This batch's share of L(w): ``nll_sum / total_tokens``. Summing over batches gives L(w)."""
    return nll_sum(model, batch) / total_tokens


def total_tokens(batches) -> int:
    n = sum(b.n_tokens for b in batches)
    if n == 0:
        raise ValueError("no loss-bearing tokens in the batches")
    return n


@dataclass
class LossResult:
    """The mean next-token loss (nats per loss-bearing token) and how many tokens it averages."""

    loss: float
    tokens: int


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches, reduce: bool = True) -> LossResult:
    """L(w) over all batches (no gradients). Batches are moved to the model's device.

    Under torch.distributed (``reduce=True``) each rank evaluates its share of the batches and the
    sums are all-reduced; ``reduce=False`` evaluates every batch locally (no communication).
    """
    from landscape.foundation import distributed as dist
    from landscape.foundation.params import any_sharded

    device = param_device(model)
    n = total_tokens(batches)
    acc = torch.zeros((), dtype=torch.float64, device=device)
    for b, weight in (dist.share(list(batches), any_sharded(model.parameters())) if reduce else [(b, 1.0) for b in batches]):
        acc += weight * nll_sum(model, b.to(device)).double()  # weight 0: a sharded rank's padding pass
    total = dist.all_reduce_scalar(float(acc)) if reduce else float(acc)
    return LossResult(total / n, n)


def math_attention():
    """Force the differentiable-twice math path of SDPA (exact HVPs; the plans of exact products probe
    their activations under it)."""
    import contextlib

    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel(SDPBackend.MATH)
    except ImportError:  # pragma: no cover - very old torch
        return contextlib.nullcontext()
