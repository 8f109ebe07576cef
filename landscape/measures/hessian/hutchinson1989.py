"""The trace by Hutchinson's estimator (Hutchinson 1989).

    tr(A) ≈ (1/n) Σᵢ zᵢᵀ A zᵢ,   zᵢ with independent Rademacher (±1) entries,

unbiased, with variance 2(‖A‖_F² − Σ A_jj²)/n; the reported standard error is the sample standard
deviation / √n. One product per sample, one extra vector of memory (none with z on disk).

Check: on ``DenseOperator(A)`` the estimate lies within a few standard errors of ``A.trace()``
(tests/test_hessian.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from landscape.foundation.progress import tqdm

from landscape.measures.hessian.basis import DiskVector
from landscape.measures.hessian.operator import Counted, add_matvec, dot, rademacher, sharded


@dataclass
class Trace:
    trace: float
    stderr: float
    samples: int
    hvps: int  # products this estimator spent
    estimates: list[float]
    method: str = "hutchinson"
    where: str = "memory"  # where the probe vectors lived ("disk": Hutchinson's z in a file)

    def as_dict(self) -> dict:
        return {"trace": self.trace, "stderr": self.stderr, "samples": self.samples, "hvps": self.hvps,
                "method": self.method, "where": self.where}


def hutchinson_trace(op, samples: int = 50, seed: int = 0, progress: bool = False, basis=None) -> Trace:
    """tr(A) ± standard error from ``samples`` Rademacher probes. Hutchinson keeps no basis: two
    vectors, z and Az, reused by every probe; with ``basis.where == "disk"`` (a
    :class:`~.basis.BasisPolicy`) z lives in a :class:`~.basis.DiskVector` and only Az is in memory —
    the same draws and the same dot, so the same bits (tested), for a file write and two reads a probe."""
    op = Counted(op)
    g = torch.Generator().manual_seed(seed)
    est = []
    on_disk = basis is not None and basis.where == "disk"
    z = DiskVector(op.shape[0], op.dtype, op.device, basis.directory, sharded(op)) if on_disk else \
        torch.empty(op.shape[0], dtype=op.dtype, device=op.device)
    az = torch.empty(op.shape[0], dtype=op.dtype, device=op.device)
    try:
        for _ in tqdm(range(samples), desc="trace", disable=not progress, leave=False):
            rademacher(op, g, z)
            az = add_matvec(op, z, az.zero_())
            est.append(z.dot(az) if on_disk else dot(z, az, sharded(op)))
    finally:
        if on_disk:
            z.close()
    a = np.asarray(est)
    se = float(a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else float("nan")
    return Trace(float(a.mean()), se, len(a), op.calls, est, where="disk" if on_disk else "memory")
