"""AdamW for bf16/fp16 weights that does not lose the small updates: float32 arithmetic, stochastic
rounding on the way back to the weights' dtype.

``torch.optim.AdamW`` on bf16 parameters keeps its moments in bf16 and rounds every update to the
nearest bf16. An update below half a weight's spacing (2⁻⁸|w| in bf16) is lost whole, every step, and
the second moment's EMA step (1 − β₂ = 1e-3 of itself) is below bf16's resolution (2⁻⁸), so v hardly
moves. Measured (``tests/test_rounding.py``'s ``_drift``: 30 steps of a steady gradient on 1e5 weights
of scale 0.02, the displacement projected on float32 AdamW's): at lr 1e-5 torch's bf16 AdamW went 0.15
of the way and 84% of the weights never changed; at 5e-5, 0.62 and 44%; at 1e-4, 0.95 and 12% — the
learning rates full fine-tunes of 1–7B models use. This optimizer: 0.9995, 0.998 and 0.9998. A study
of forgetting on torch's bf16 runs would compare under-trained runs with float32 ones.

Here each step reads the parameter, its gradient and both moments in float32 (a chunk of
:data:`CHUNK` entries at a time: no weight-sized float32 copy), applies AdamW's update there, and
writes the weight and the moments back with **stochastic rounding**: up with probability equal to the
distance to the lower neighbour over the spacing, so E[round(x)] = x and no update is lost on average
(Gupta et al. 2015; Zamirai et al. 2020 for bf16 training). Memory is the bf16 optimizer's (moments
in the parameter's dtype); float32 parameters take the same float32 arithmetic with no rounding, the
update of ``torch.optim.AdamW(foreach=False)`` bit for bit (tested).

The random bits come from one generator a parameter and step, seeded by (``seed``, step, parameter
index), on the parameter's device: a run is reproducible and a resumed run continues the same stream; data-parallel
ranks draw the same bits and stay identical.
"""

from __future__ import annotations

import math

import torch

from landscape.foundation.params import HALF, local

CHUNK = 1 << 20  # entries read in float32 at once (4 MB a tensor)


def stochastic_round(x: torch.Tensor, dtype: torch.dtype, generator: torch.Generator) -> torch.Tensor:
    """``x`` (float32) rounded to ``dtype`` at random, unbiased: to the upper neighbour with probability
    (x − lower) / (upper − lower). bf16 adds 16 random low bits to the float32 pattern and truncates
    (exact for every finite x); fp16 picks between the nearest value and its neighbour across x."""
    if dtype == torch.bfloat16:
        bits = x.contiguous().view(torch.int32)
        noise = torch.randint(0, 1 << 16, x.shape, dtype=torch.int32, device=x.device, generator=generator)
        return ((bits + noise) & -65536).view(torch.float32).to(torch.bfloat16)  # low half zero: exact
    near = x.to(dtype)
    err = x - near.float()
    other = torch.nextafter(near, torch.where(err > 0, torch.full_like(near, math.inf), torch.full_like(near, -math.inf)))
    gap = (other.float() - near.float()).abs()
    p = torch.where(gap > 0, err.abs() / gap, torch.zeros_like(err))
    u = torch.rand(x.shape, device=x.device, generator=generator)
    return torch.where(u < p, other, near)


class StochasticAdamW(torch.optim.Optimizer):
    """AdamW for bf16/fp16 weights that keeps the small updates: PyTorch's AdamW formula computed in
    float32 a chunk at a time, the weights and both moments written back with unbiased stochastic
    rounding (:func:`stochastic_round`). Same memory as ``torch.optim.AdamW`` on those weights (moments
    in the weights' dtype); float32 parameters get torch's update bit for bit.

    Why: torch's AdamW on bf16 weights rounds each update to the nearest bf16, so updates below half a
    weight's spacing are lost — 30 steps at lr 1e-5 moved the weights 0.15 of float32 AdamW's way (84%
    of them never changed), at 5e-5 0.62; this optimizer 0.9995 and 0.998 (``tests/test_rounding.py``).
    ``landscape finetune`` uses it for bf16/fp16 weights. ``seed`` and the step fix the random bits:
    runs are reproducible, resumed runs continue the stream, data-parallel ranks stay identical.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, seed: int = 0):
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})
        self.seed = int(seed)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        index = 0
        for group in self.param_groups:
            for p in group["params"]:
                index += 1
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:  # an FSDP2 parameter: moments of this rank's rows
                    st["step"] = torch.zeros((), dtype=torch.float32)
                    st["exp_avg"] = torch.zeros_like(local(p), memory_format=torch.preserve_format)
                    st["exp_avg_sq"] = torch.zeros_like(local(p), memory_format=torch.preserve_format)
                st["step"] += 1
                _update(local(p), local(p.grad), st, group, self._generator(p, int(st["step"]), index))
        return loss

    def _generator(self, p, step: int, index: int) -> torch.Generator | None:
        if p.dtype not in HALF:
            return None
        g = torch.Generator(device=p.device)
        return g.manual_seed((self.seed * 1_000_003 + step) * 65_537 + index)


@torch.no_grad()
def _update(p, grad, st: dict, group: dict, gen) -> None:
    """One AdamW step of ``p`` in float32, :data:`CHUNK` entries at a time (PyTorch's single-tensor
    formula and order of operations)."""
    lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
    step = float(st["step"])
    bc1, bc2 = 1 - b1 ** step, 1 - b2 ** step
    tensors = (p.data, grad, st["exp_avg"], st["exp_avg_sq"])
    whole = not all(t.is_contiguous() for t in tensors)  # a strided view: one piece, written back whole
    w_all, g_all, m_all, v_all = tensors if whole else (t.view(-1) for t in tensors)
    for a in [0] if whole else range(0, w_all.numel(), CHUNK):
        sl = ... if whole else slice(a, a + CHUNK)
        w, g, m, v = (t[sl].float() for t in (w_all, g_all, m_all, v_all))
        w.mul_(1 - lr * wd)
        m.lerp_(g, 1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        denom = (v.sqrt() / bc2 ** 0.5).add_(eps)
        w.addcdiv_(m, denom, value=-lr / bc1)
        for dst, src in ((w_all, w), (m_all, m), (v_all, v)):
            dst[sl].copy_(src if gen is None else stochastic_round(src, dst.dtype, gen))
