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

from landscape.foundation import distributed as dist
from landscape.foundation import params as P
from landscape.foundation.errors import UserError

NORMS = ("filter", "layer", "none")
IGNORES = ("biasbn", "none")


def _generator(seed: int, axis: str, name: str, device="cpu") -> torch.Generator:
    h = hashlib.sha256(f"{seed}/{axis}/{name}".encode()).digest()
    return torch.Generator(device=device).manual_seed(int.from_bytes(h[:8], "little") & ((1 << 63) - 1))


def _check(norm: str, ignore: str) -> None:
    if norm not in NORMS:
        raise UserError(f"unknown normalisation {norm!r}; choose filter, layer or none")
    if ignore not in IGNORES:
        raise UserError(f"unknown ignore rule {ignore!r}; choose biasbn or none")


def random_tensor(name: str, w: torch.Tensor, seed: int, axis: str, norm: str, ignore: str,
                  on_device: bool = False, out: torch.Tensor | None = None) -> torch.Tensor:
    """One parameter's normalised direction (float32, on w's device).

    Drawn on the CPU (the same numbers whatever the device), or with ``on_device`` by a generator on
    w's own device: the same numbers on the CPU, a device-specific but reproducible stream on CUDA.
    ``out``: a float32 buffer on w's device to draw into (``on_device`` only), so that rebuilding
    directions point after point allocates nothing. ``w`` a sharded parameter (FSDP): the whole
    tensor is drawn and cut to this rank's rows — the one-process numbers, normalised by those rows.
    """
    if P.is_sharded(w):
        g = _generator(seed, axis, name)
        d = P.draw(w, lambda s: torch.randn(s, generator=g, dtype=torch.float32))
        return normalize(d.to(w.device), P.local(w), norm, ignore, sharded=True)
    dev = w.device if on_device else torch.device("cpu")
    g = _generator(seed, axis, name, dev)
    if out is not None and on_device:
        d = torch.randn(w.shape, generator=g, dtype=torch.float32, device=dev, out=out)
    else:
        d = torch.randn(w.shape, generator=g, dtype=torch.float32, device=dev)
    return normalize(d.to(w.device), w.detach(), norm, ignore)


def random_direction(named, seed: int, axis: str = "x", norm: str = "filter", ignore: str = "biasbn") -> list:
    """A normalised Gaussian direction, regenerable from (seed, axis, parameter name); of sharded
    parameters, this rank's rows of it (see :func:`random_tensor`)."""
    _check(norm, ignore)
    return [random_tensor(name, w, seed, axis, norm, ignore) for name, w in named.items()]


@torch.no_grad()
def normalize(d: torch.Tensor, w: torch.Tensor, norm: str, ignore: str, sharded: bool = False) -> torch.Tensor:
    """Filter/layer normalisation of one parameter's direction (see module docstring); float32 result.
    ``d`` is rescaled in place (callers pass a freshly drawn tensor). ``sharded``: ``d`` and ``w`` are this
    rank's rows of an FSDP parameter (filter norms are per row; a layer norm sums over the ranks)."""
    w = w.to(torch.float32)
    if w.dim() <= 1:
        if ignore == "biasbn":
            return torch.zeros_like(d)
        return w.clone() if norm != "none" else d
    if norm == "filter":
        dn = d.reshape(d.shape[0], -1).norm(dim=1)
        wn = w.reshape(w.shape[0], -1).norm(dim=1)
        scale = wn / (dn + 1e-10)
        return d.mul_(scale.reshape(-1, *([1] * (d.dim() - 1))))
    if norm == "layer" and sharded:  # whole-tensor norms: sums of squares over the ranks' rows
        wn, dn = (float(dist.sharded_sum(t.double().pow(2).sum(), True)) ** 0.5 for t in (w, d))
        return d.mul_(wn / (dn + 1e-10))
    if norm == "layer":
        return d.mul_(w.norm() / (d.norm() + 1e-10))
    return d


def orthogonalize(y: list, x: list, sharded: bool = False) -> list:
    """y − (⟨y,x⟩/⟨x,x⟩)·x (applied after normalisation, when asked); ``sharded``: the lists hold this
    rank's rows (the dots sum over the ranks)."""
    c = float(P.dot(y, x, sharded) / P.dot(x, x, sharded))
    return [yi - c * xi for yi, xi in zip(y, x)]


def target_direction(named, other_named) -> list:
    """w_other − w, per parameter name (the line/plane through checkpoints); names must match."""
    _check_target(named, other_named)
    out = []
    for n, w in named.items():
        o = other_named[n]
        out.append((o.detach().to(w.device, torch.float32) - w.detach().to(torch.float32)))
    return out


class Lazy:
    """A direction that is never held whole: parameter i's tensor is rebuilt on demand.

    Random axes are redrawn from (seed, axis, name) by the generator of the parameter's device and
    normalised against the origin; checkpoint axes are ``target − origin``; an orthogonalised y axis
    is ``y_i − c·x_i`` with c computed once, in one pass, as for stored directions. On the CPU every
    tensor equals the stored direction's bit for bit. Holds nothing but the target weights (if any).
    """

    def __init__(self, names: list, origin: list, seed: int, axis: str, norm: str, ignore: str,
                 target: dict | None = None, against: "Lazy | None" = None):
        if target is None:
            _check(norm, ignore)
        else:
            _check_target(dict(zip(names, origin)), target)
        self.names, self.origin, self.seed, self.axis = names, origin, seed, axis
        self.norm, self.ignore, self.target = norm, ignore, target
        self.against, self.c = None, 0.0
        self._buf = None  # one float32 scratch tensor of the largest parameter's size
        if against is not None:  # orthogonalise: c = <y, x> / <x, x>, float64 sums as in P.dot
            yx = xx = 0
            for i in range(len(names)):
                xi, yi = against[i], self[i]
                yx = yx + (yi.double() * xi.double()).sum()
                xx = xx + (xi.double() * xi.double()).sum()
            self.against, self.c = against, float(yx / xx)

    def __len__(self):
        return len(self.names)

    def __getitem__(self, i: int) -> torch.Tensor:
        """Parameter i's direction; valid until the next call (it lives in a reused buffer)."""
        o = self.origin[i]
        if self._buf is None:
            self._buf = torch.empty(max(t.numel() for t in self.origin), dtype=torch.float32, device=o.device)
        buf = self._buf[: o.numel()].view(o.shape)
        if self.target is not None:
            d = torch.sub(self.target[self.names[i]].detach().to(o.device, torch.float32), o.to(torch.float32), out=buf)
        else:
            d = random_tensor(self.names[i], o, self.seed, self.axis, self.norm, self.ignore, on_device=True, out=buf)
        if self.against is not None:
            d = d - self.c * self.against[i]
        return d

    def items(self):
        """(name, tensor) pairs, one tensor at a time, each valid until the next (for writing to h5)."""
        for i, n in enumerate(self.names):
            yield n, self[i]


def _check_target(named, other_named) -> None:
    missing = [n for n in named if n not in other_named]
    if missing:
        raise UserError(f"target checkpoint lacks parameter(s) {', '.join(missing[:3])}: not the same architecture")
    for n, w in named.items():
        o = other_named[n]
        if o.shape != w.shape:
            raise UserError(f"parameter {n} has shape {tuple(o.shape)} in the target, {tuple(w.shape)} here")
