"""Extreme eigenvalues by the plain Lanczos recurrence, without reorthogonalisation, with three
weight-sized vectors whatever the number of steps (Cullum & Willoughby 1985, "Lanczos algorithms for
large symmetric eigenvalue computations", vol. 1; Paige 1976/1980 for the theory).

Why it is right without a basis: in finite precision the Lanczos vectors lose orthogonality exactly
as Ritz values converge (Paige), and the effect on T = tridiag(β, α, β) is that converged
eigenvalues reappear as further Ritz values — "ghost" copies of the same eigenvalue — while every
Ritz value θ with a small residual estimate β·|s[last]| is within that estimate (plus O(ε‖A‖)) of an
eigenvalue of A. So eigenvalues are read off T as in exact arithmetic once copies are merged:

- a Ritz value is *converged* when β·|s[last]| ≤ max(tol·|θ|, η) (the test used with a basis,
  floored at the products' own accuracy η below: no residual estimate means more than that);
- two converged values within their error bars are one eigenvalue: |θ − θ'| ≤ r + r' + 4η + tol·|θ|,
  r = β·|s[last]| and η the operator's own rounding error, measured at the start as the
  linearity defect ‖A(q + u) − Aq − Au‖/√3 of two unit vectors (two extra products). Copies
  agree with each other only to the accuracy of the products: on SmolLM2-135M in float32 five
  copies of λ_max = 222.784 spread over 1.5e-3, far outside r + r' and tol·|θ| alone; on a
  matrix with injected noise of norm η per product, copies spread over ~2η and sit within ~3η of
  the eigenvalue (tests/test_scale.py), hence 4η — the factor is ours, from that test, not from
  the literature. η also carries the recurrence's own rounding, 3·j·u·max|θ| after j steps (u the
  vectors' unit roundoff). A random-walk model (√j) was too narrow: on the 4.2M float32 diagonal,
  at one thread, the copies of λ = 10 had drifted *upward* to 10.00005–10.00013 by step 222
  (≈ j·u‖A‖, the growth Paige's bounds allow), two of them stayed apart and "10.000132" was
  reported. Hence also: an eigenvalue is reported as its copy *first seen converged* (it has drifted
  least), and the wider window lets a run stop once residuals reach the recurrence's own accuracy
  (the same diagonal: 45 steps instead of 222, 10, 9, 8 within 2e-6);
- an unconverged Ritz value within that window of an accepted one (its own residual left out) is a
  copy still forming and is skipped; any other unconverged value above the k-th distinct converged
  one blocks acceptance (it may be an eigenvalue not found yet: this costs products, never a wrong
  answer); λ_min likewise at the bottom.

Limit found on SmolLM2-135M (float32): its "top 5" came back as five copies of λ_max within
1.5e-3 of each other (7e-6 relative) — beyond the 4η window — where a thick-restarted basis found
222.78, 186.85, 174.88, 145.51, 130.88. λ_max itself agreed to 2e-7. So ``reorth="auto"`` uses this
path only for λ_max/λ_min (top-1); asking for ``reorth="none"`` with k > 1 is at the user's risk.

A genuine multiple eigenvalue shows once, as with any single-vector Lanczos.

Memory: **two** weight-sized vectors in the operator's dtype (float32 for float32 and bf16
models), whatever the number of steps — Paige's two-vector form: the product is accumulated in
place into the buffer that holds −β·q_prev (``matvec_add``), so q_prev, q and Aq never coexist.
Earlier this recurrence kept three float64 vectors (6× float32 weights: 26 GB at 1.1B parameters)
because a float32 recurrence had let copies drift by ~1e-5 relative; with the reductions accumulated
in float64 (``operator.dot``) the float32 recurrence's rounding is u per entry, and on the 4.2M
diagonal test λ_max = 10 comes back within 2e-7 (tests/test_hessian.py; the drift had come from
float32 reductions, not from float32 storage). The start vector is regenerated from its seed
instead of being kept while the products' noise is measured (one product more, no third vector).
Check: equal to ``torch.linalg.eigvalsh`` on dense matrices and a tiny transformer's dense Hessian,
and to the full-basis run on a 4.2M float32 operator (tests/test_scale.py).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal
from landscape.foundation.progress import tqdm

from landscape.measures.hessian.basis import DiskVector, OnDisk
from landscape.measures.hessian.operator import add_matvec, dot, norm, random_unit, sharded
from landscape.measures.hessian.spectrum import Spectrum


def plain_lanczos(op, k: int, max_iter: int, tol: float, seed: int, want_min: bool, progress: bool,
                  disk: OnDisk | None = None):
    """Spectrum of ``op`` (already :class:`~.operator.Counted`) by the two-vector recurrence;
    ``disk`` (:class:`~.basis.OnDisk`): q lives in a :class:`~.basis.DiskVector` (one weight-sized
    vector in memory instead of two; the same arithmetic, so the same bits; per step q is read ~6
    times and written once)."""
    w = torch.empty(op.shape[0], dtype=op.dtype, device=op.device)
    q = DiskVector(op.shape[0], op.dtype, op.device, disk.directory, sharded(op)) if disk else torch.empty_like(w)
    try:
        return _run(op, k, max_iter, tol, seed, want_min, progress, (q, w))
    finally:
        if disk:
            q.close()


def _dot(w: torch.Tensor, q, split: bool) -> float:
    return q.dot(w) if isinstance(q, DiskVector) else dot(w, q, split)


def _sub(w: torch.Tensor, q, a: float) -> None:
    if isinstance(q, DiskVector):
        q.add_to(w, -a)
    else:
        w.sub_(q, alpha=a)


def _run(op, k, max_iter, tol, seed, want_min, progress, qw):
    q, w = qw
    eta = _noise(op, seed, q, w)
    limit = op.calls + max_iter  # max_iter Lanczos steps after the noise's three products (not instead of them)
    unit = torch.finfo(op.dtype).eps / 2
    random_unit(op, torch.Generator().manual_seed(seed), q)
    w.zero_()
    alphas: list[float] = []
    betas: list[float] = []
    history: list[float] = []
    bar = tqdm(total=max_iter, desc="lanczos (no basis)", disable=not progress, leave=False)
    found, converged = None, False
    anchors: list = []  # each eigenvalue as first seen converged (later copies have drifted more)
    last_ends = None  # the extreme Ritz values at the previous check
    try:
        while op.calls < limit:
            add_matvec(op, q, w)  # w = A q − β q_prev (w held −β q_prev)
            a = _dot(w, q, sharded(op))
            _sub(w, q, a)
            a2 = _dot(w, q, sharded(op))  # local reorthogonalisation against q only (one dot, one axpy)
            _sub(w, q, a2)
            alphas.append(a + a2)
            beta = norm(w, sharded(op))
            bar.update(1)
            if len(alphas) <= 100 or len(alphas) % (len(alphas) // 100 + 1) == 0 or op.calls >= limit:
                theta, last = _ritz(alphas, betas)  # O(j²): checked less often on long runs
                res = np.abs(beta * last)
                history.append(float(theta[-1]))
                # the recurrence's own rounding widens the window in which two copies are one
                # eigenvalue: copies drift by about j·u‖A‖ after j steps (see the module docstring)
                rec = 3.0 * len(alphas) * unit * float(np.abs(theta).max())
                found = _accept(theta, res, k, want_min, (tol, eta + rec))
                anchors += [t for t in found[1] if t[2] and not any(_same(a, t, tol, eta + rec) for a in anchors)]
                ends = (float(theta[-1]), float(theta[0])) if want_min else (float(theta[-1]),)
                settled = _settled(res, ends, last_ends, tol, eta + rec)
                last_ends = ends
                if (found[0] and settled) or beta < 1e-10 * max(1.0, float(np.abs(theta).max())):
                    converged = True
                    break
            betas.append(beta)
            if isinstance(q, DiskVector):  # the same two operations, through the file
                q.exchange(w, beta)
                continue
            w.div_(beta)  # the next q
            q.mul_(-beta)  # −β q: the next step's product is added to it
            q, w = w, q
    finally:
        bar.close()
    _, top, bottom = found
    # an eigenvalue is reported as its copy first seen converged: on a 4.2M float32 diagonal the
    # copies of λ = 10 had drifted to 10.00005–10.00013 by step 222, the first was within 1e-6
    top = [next((a for a in anchors if _same(a, t, tol, eta + rec)), t) for t in top]
    return Spectrum(eigenvalues=[t[0] for t in top], lambda_max=top[0][0],
                    lambda_min=bottom[0] if want_min else None, residuals=[t[1] for t in top],
                    residual_min=bottom[1] if want_min else None, converged=converged, hvps=op.calls,
                    iterations=len(alphas), method="lanczos", history=history,
                    basis={"where": "none" if not isinstance(q, DiskVector) else "disk (q)",
                           "capacity": 2, "bytes": 2 * op.shape[0] * w.element_size()},
                    noise=eta)


def linearity_defect(op, seed: int = 0) -> float:
    """The products' measured error ‖A(q+u) − Au − Aq‖/√3 (three products, two vectors)."""
    x = torch.empty(op.shape[0], dtype=op.dtype, device=op.device)
    return _noise(op, seed, x, torch.empty_like(x))


def _noise(op, seed: int, x: torch.Tensor, d: torch.Tensor) -> float:
    """The products' own error: the linearity defect ‖A(q+u) − Au − Aq‖/√3 for the unit start q
    and a unit u, formed in the two buffers ``x`` and ``d`` (q and u are redrawn from their seeds
    rather than kept)."""
    q_gen = lambda: torch.Generator().manual_seed(seed)  # noqa: E731
    u_gen = lambda: torch.Generator().manual_seed(seed + 7919)  # noqa: E731
    disk = isinstance(x, DiskVector)
    random_unit(op, u_gen(), d)
    x = random_unit(op, q_gen(), x)
    x.map_(lambda c, a, b: c.add_(d[a:b])) if disk else x.add_(d)  # x = q + u
    d.zero_()
    add_matvec(op, x, d)
    x = random_unit(op, u_gen(), x)
    x.map_(lambda c, *_: c.neg_()) if disk else x.neg_()
    add_matvec(op, x, d)
    x = random_unit(op, q_gen(), x)
    x.map_(lambda c, *_: c.neg_()) if disk else x.neg_()
    add_matvec(op, x, d)
    return norm(d, sharded(op)) / 3 ** 0.5


def _settled(res, ends, last, tol: float, eta: float) -> bool:
    """Whether an acceptance that leans on the noise floor may stand: a residual at or below the
    products' error η says only that θ is within η of *some* eigenvalue — after one step, the random
    start's Rayleigh quotient in the bulk near 0 (seen on Qwen2.5-1.5B with fd products: θ = 5e-5,
    r = 0.78 < η = 1.02, "converged" after one step). So where a wanted extreme Ritz value's residual
    is within the floor but not within tol·|θ|, it is accepted only once it stopped moving: within the
    acceptance window of its value at the previous check. ``ends``: the wanted ends, (θ_max,) or
    (θ_max, θ_min) — the bottom of the spectrum does not gate λ_max (it did: the 1.5B base's λ_max
    came back "converged False" with r = 7.7 ≤ tol·θ = 52 while θ_min still moved). Exact products
    (η ≈ 0) never need this."""
    rs = (res[-1], res[0])[:len(ends)]
    if all(r <= tol * abs(t) for r, t in zip(rs, ends)):
        return True
    if last is None:
        return False
    return all(abs(a - b) <= tol * abs(a) + eta for a, b in zip(ends, last))


def _ritz(alphas, betas):
    """Ritz values (ascending) and the last components of T's eigenvectors."""
    if len(alphas) == 1:
        return np.array(alphas), np.ones(1)
    theta, s = eigh_tridiagonal(np.asarray(alphas), np.asarray(betas))
    return theta, s[-1, :]


def _accept(theta, res, k: int, want_min: bool, tols: tuple):
    """(done, top-k [(θ, r)] distinct, (θ_min, r_min)) by the rules of the module docstring;
    ``tols`` = (tol, η)."""
    tol, eta = tols
    conv = res <= np.maximum(tol * np.abs(theta), max(eta, 1e-300))
    top: list[tuple[float, float]] = []
    done = True
    for i in range(len(theta) - 1, -1, -1):
        if len(top) == k:
            break
        # a copy ("ghost") of an eigenvalue already accepted, converged or still forming (then only
        # the accepted value's error bar counts: a copy forms at the eigenvalue it copies)
        if any(_same(t, (theta[i], res[i] if conv[i] else 0.0), tol, eta) for t in top if t[2]):
            continue
        done = done and bool(conv[i])
        top.append((float(theta[i]), float(res[i]), bool(conv[i])))
    bottom = (float(theta[0]), float(res[0]))
    if want_min:
        done = done and bool(conv[0])
    return done and len(top) == k, top, bottom


def _same(a, b, tol: float, eta: float) -> bool:
    return abs(a[0] - b[0]) <= a[1] + b[1] + 4 * eta + tol * abs(a[0])
