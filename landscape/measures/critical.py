"""Critical sharpness: curvature along a direction from forward passes only (Kalra et al. 2026).

Kalra, Gagnon-Audet, Gromov, Mediratta, Niu, Miller, Shvartsman, "A Scalable Measure of Loss
Landscape Curvature for Analyzing the Training Dynamics of LLMs" (arXiv 2601.16979; definitions read
from the paper's source, facebookresearch/scalable-curvature ``paper/main.tex``):

- critical learning rate, Definition 2.1: η_c = min{η > 0 : L(θ − ηΔθ) > L(θ)} for an update
  direction Δθ; critical sharpness λ_c = 2/η_c;
- relative critical sharpness, Definition 4.1: the same with the loss of one task (here: the
  general/old data) and the update direction of another (the fine-tune) — the quantity that says
  whether a step along the fine-tune leaves the old task's basin;
- under the quadratic model L(θ − ηΔθ) ≈ L − ηΔθᵀg + ½η²ΔθᵀHΔθ it equals the directional sharpness
  λ_dir = ΔθᵀHΔθ / Δθᵀg, for gradient descent a weighted average of the Hessian eigenvalues
  (weights (gᵀu_i)²), so λ_dir ≤ λ_max.

The search is the paper's two phases: an exponential search from η₀ (factor 2 — the paper does not
state its factor: our choice) until the loss change changes sign, then bisection until
1 − η_lo/η_hi ≤ ε (the paper's ε = 1/16, about 5–6 forward passes after the bracket); η_c is the
middle of the last bracket. Like the paper's procedure it finds *a* crossing near η₀, the smallest
one when the loss along the line has one minimum (the quadratic case).

Two outcomes have no finite η_c and are reported as such, never as a number: the loss rises at every
tried step down to ``eta_min`` (the direction is ascent for this loss: λ_c "infinite", with the lower
bound 2/η_min), or never rises up to ``eta_max`` (λ_c ≤ 2/η_max).
"""

from __future__ import annotations

from typing import Callable

EPS = 1 / 16


def critical_step(rises: Callable[[float], bool], eta0: float = 1.0, eps: float = EPS, eta_min: float = 1e-6,
                  eta_max: float = 1e6) -> dict:
    """η_c by exponential search then bisection; ``rises(η)`` is L(θ − ηΔθ) > L(θ) (one forward pass).

    Returns ``{"eta_c", "lambda_c", "bracket", "evals", "status"}`` with status "ok",
    "rises at once" (λ_c ≥ ``lambda_c_bound``) or "never rises" (λ_c ≤ ``lambda_c_bound``).
    """
    if not (eta0 > 0 and 0 < eps < 1 and 0 < eta_min <= eta0 <= eta_max):
        raise ValueError("need 0 < eta_min <= eta0 <= eta_max and 0 < eps < 1")
    evals = [0]

    def up(eta: float) -> bool:
        evals[0] += 1
        return bool(rises(eta))

    lo, hi = _bracket(up, eta0, eta_min, eta_max)
    if lo is None:
        return {"eta_c": None, "lambda_c": None, "lambda_c_bound": 2 / hi, "bracket": [0.0, hi], "evals": evals[0],
                "status": "rises at once"}
    if hi is None:
        return {"eta_c": None, "lambda_c": None, "lambda_c_bound": 2 / lo, "bracket": [lo, None], "evals": evals[0],
                "status": "never rises"}
    while 1 - lo / hi > eps:
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if up(mid) else (mid, hi)
    eta_c = 0.5 * (lo + hi)
    return {"eta_c": eta_c, "lambda_c": 2 / eta_c, "bracket": [lo, hi], "evals": evals[0], "status": "ok"}


def _bracket(up, eta0: float, eta_min: float, eta_max: float) -> tuple[float | None, float | None]:
    """(η_lo, η_hi) with the loss not risen at η_lo and risen at η_hi; None where the search ran out."""
    eta = eta0
    if up(eta):
        hi = eta
        while eta / 2 >= eta_min:
            eta /= 2
            if not up(eta):
                return eta, hi
            hi = eta
        return None, hi
    lo = eta
    while eta * 2 <= eta_max:
        eta *= 2
        if up(eta):
            return lo, eta
        lo = eta
    return lo, None
