"""Fine-tuning entry: a plain, deterministic training loop over fixed batches, writing HF checkpoints.

The loop minimises the shared loss of :mod:`landscape.loss` (token-weighted mean CE), so the loss
it logs is the loss every measurement reports. Batch order is a seeded permutation per epoch.
"""

from __future__ import annotations

import math
import time

import torch
from tqdm.auto import tqdm

from landscape.loss import batch_term, param_device


def lr_at(step: int, total: int, lr: float, warmup: int) -> float:
    """Linear warm-up for ``warmup`` steps, then cosine decay to 10% of ``lr`` at ``total``."""
    if warmup and step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def batch_order(n_batches: int, steps: int, seed: int) -> list[int]:
    """Which batch each step uses: a fresh seeded permutation every epoch."""
    g = torch.Generator().manual_seed(seed)
    order: list[int] = []
    while len(order) < steps:
        order += torch.randperm(n_batches, generator=g).tolist()
    return order[:steps]


def train(model: torch.nn.Module, batches, steps: int, lr: float = 1e-3, seed: int = 0,
          weight_decay: float = 0.0, warmup: int = 0, grad_clip: float | None = 1.0,
          progress: bool = False, desc: str = "train") -> list[dict]:
    """AdamW on ``batches`` for ``steps`` steps; returns the log (one dict per step).

    Each step's loss is the batch's own token-mean CE. The model is left in eval mode.
    """
    device = param_device(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    order = batch_order(len(batches), steps, seed)
    log = []
    model.train()
    t0 = time.perf_counter()
    try:
        for step in tqdm(range(steps), desc=desc, disable=not progress, leave=False):
            b = batches.batches[order[step]].to(device)
            for group in opt.param_groups:
                group["lr"] = lr_at(step, steps, lr, warmup)
            opt.zero_grad(set_to_none=True)
            loss = batch_term(model, b, b.n_tokens)
            loss.backward()
            gnorm = None
            if grad_clip:
                gnorm = float(torch.nn.utils.clip_grad_norm_(params, grad_clip))
            opt.step()
            log.append({"step": step + 1, "loss": float(loss.detach()), "lr": opt.param_groups[0]["lr"],
                        "grad_norm": gnorm, "seconds": round(time.perf_counter() - t0, 3)})
    finally:
        model.eval()
    return log
