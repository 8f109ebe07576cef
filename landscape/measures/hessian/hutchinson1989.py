"""The trace by Hutchinson's estimator (Hutchinson 1989).

    tr(A) ≈ (1/n) Σᵢ zᵢᵀ A zᵢ,   zᵢ with independent Rademacher (±1) entries,

unbiased, with variance 2(‖A‖_F² − Σ A_jj²)/n; the reported standard error is the sample standard
deviation / √n. One product per sample, one extra vector of memory.

Check: on ``DenseOperator(A)`` the estimate lies within a few standard errors of ``A.trace()``
(tests/test_hessian.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from landscape.foundation.progress import tqdm

from landscape.measures.hessian.operator import Counted, add_matvec, dot, rademacher


@dataclass
class Trace:
    trace: float
    stderr: float
    samples: int
    hvps: int  # products this estimator spent
    estimates: list[float]
    method: str = "hutchinson"

    def as_dict(self) -> dict:
        return {"trace": self.trace, "stderr": self.stderr, "samples": self.samples, "hvps": self.hvps,
                "method": self.method}


def hutchinson_trace(op, samples: int = 50, seed: int = 0, progress: bool = False, basis=None) -> Trace:
    """tr(A) ± standard error from ``samples`` Rademacher probes (``basis`` is accepted for the
    signature the sketched estimators share; Hutchinson keeps no basis: two vectors, z and Az, reused)."""
    op = Counted(op)
    g = torch.Generator().manual_seed(seed)
    est = []
    z = torch.empty(op.shape[0], dtype=op.dtype, device=op.device)
    az = torch.empty_like(z)  # two vectors, reused by every probe
    for _ in tqdm(range(samples), desc="trace", disable=not progress, leave=False):
        rademacher(op, g, z)
        est.append(dot(z, add_matvec(op, z, az.zero_())))
    a = np.asarray(est)
    se = float(a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else float("nan")
    return Trace(float(a.mean()), se, len(a), op.calls, est)
