"""Directions in weight space for loss surfaces (Li et al. 2018, "Visualizing the Loss Landscape").

A random direction is Gaussian, one tensor per named parameter, drawn on the CPU from a generator
seeded by (seed, axis, parameter name): the same seed gives the same direction on any device, for
any subset of parameters, and a direction never needs to be stored to be reproduced.

Normalisation, per parameter w with direction d:
- ``filter``: each row along dim 0 (a filter / an output neuron) is rescaled, d_r ← d_r·‖w_r‖/‖d_r‖;
- ``layer``:  the whole tensor, d ← d·‖w‖/‖d‖;
- ``none``:   unchanged.
1-D parameters (biases, norm scales): with ``ignore="biasbn"`` they are zeroed; otherwise, as in the
original code, d ← w for them under filter/layer normalisation.
"""

from __future__ import annotations

import hashlib

import torch

from landscape import params as P
from landscape.errors import UserError

NORMS = ("filter", "layer", "none")
IGNORES = ("biasbn", "none")


def _generator(seed: int, axis: str, name: str) -> torch.Generator:
    h = hashlib.sha256(f"{seed}/{axis}/{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(h[:8], "little") & ((1 << 63) - 1))


def random_direction(named, seed: int, axis: str = "x", norm: str = "filter", ignore: str = "biasbn") -> list:
    """A normalised Gaussian direction, regenerable from (seed, axis, parameter name)."""
    if norm not in NORMS:
        raise UserError(f"unknown normalisation {norm!r}; choose filter, layer or none")
    if ignore not in IGNORES:
        raise UserError(f"unknown ignore rule {ignore!r}; choose biasbn or none")
    out = []
    for name, w in named.items():
        d = torch.randn(w.shape, generator=_generator(seed, axis, name), dtype=torch.float32)
        out.append(normalize(d.to(w.device), w.detach(), norm, ignore))
    return out


@torch.no_grad()
def normalize(d: torch.Tensor, w: torch.Tensor, norm: str, ignore: str) -> torch.Tensor:
    """Filter/layer normalisation of one parameter's direction (see module docstring); float32 result."""
    w = w.to(torch.float32)
    if w.dim() <= 1:
        if ignore == "biasbn":
            return torch.zeros_like(d)
        return w.clone() if norm != "none" else d
    if norm == "filter":
        dn = d.reshape(d.shape[0], -1).norm(dim=1)
        wn = w.reshape(w.shape[0], -1).norm(dim=1)
        scale = wn / (dn + 1e-10)
        return d * scale.reshape(-1, *([1] * (d.dim() - 1)))
    if norm == "layer":
        return d * (w.norm() / (d.norm() + 1e-10))
    return d


def orthogonalize(y: list, x: list) -> list:
    """y − (⟨y,x⟩/⟨x,x⟩)·x (applied after normalisation, when asked)."""
    c = float(P.dot(y, x) / P.dot(x, x))
    return [yi - c * xi for yi, xi in zip(y, x)]


def target_direction(named, other_named) -> list:
    """w_other − w, per parameter name (the line/plane through checkpoints); names must match."""
    missing = [n for n in named if n not in other_named]
    if missing:
        raise UserError(f"target checkpoint lacks parameter(s) {', '.join(missing[:3])}: not the same architecture")
    out = []
    for n, w in named.items():
        o = other_named[n]
        if o.shape != w.shape:
            raise UserError(f"parameter {n} has shape {tuple(o.shape)} in the target, {tuple(w.shape)} here")
        out.append((o.detach().to(w.device, torch.float32) - w.detach().to(torch.float32)))
    return out
