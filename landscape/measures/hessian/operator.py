"""Linear operators: the one type every curvature estimator takes.

An operator is anything with

- ``shape`` ``(n, n)``, ``dtype`` and ``device`` of the vectors it acts on,
- ``blocks``: the shapes of the tensors a flat vector of length n is made of (one parameter tensor
  each for a Hessian; ``[(n,)]`` for a matrix) — random vectors are drawn block by block, so a
  seed gives the same vector whether the estimator or a caller draws it per parameter,
- ``matvec(v)``: A·v for a flat vector v of length n;
- optionally ``matvec_add(v, out)``: out ← out + A·v in place (no new weight-sized vector; the
  two-vector Lanczos of :mod:`.cullum1985plain` relies on it; :func:`add_matvec` falls back to
  ``out += matvec(v)``).

Estimators (``lanczos1950``, ``mises1929power``, ``hutchinson1989``, ``ghorbani2019slq``) see only
that, wrap the operator in :class:`Counted` and report *their own* number of products. So every
estimator can be checked against a dense matrix (:class:`DenseOperator`), and the Hessian of a
model (:class:`HessianOperator`) is one operator among others.

:class:`HessianOperator` gives v ↦ H·v exactly by double backward (``method="reverse"``) or the
objective's forward-over-reverse (``method="forward"``), or by central finite differences of
gradients (``method="fd"``), accumulated term by term and reduced across processes. Second-order
autograd through fused scaled-dot-product-attention kernels is not implemented in PyTorch, so the
exact products run under the math SDPA backend; fd products need only first-order gradients and run
on whatever attention and activation checkpointing the model uses (see :func:`fd_step`).
"""

from __future__ import annotations

import contextlib
import itertools
import time
from typing import Protocol

import torch

from landscape.foundation import distributed as dist
from landscape.foundation import params as P
from landscape.foundation.loss import math_attention  # noqa: F401 (re-exported by hessian)
from landscape.foundation.configs import CACHE_GRAPH, HVP_METHODS, ConfigError
from landscape.foundation.objective import accumulate_grad
from landscape.foundation.plan import SavedBytes
from landscape.measures.hessian.basis import DOT_CHUNK, DiskVector, OnDisk


class LinearOperator(Protocol):
    shape: tuple
    dtype: torch.dtype
    device: torch.device
    blocks: list
    sharded: bool  # its vectors are this rank's rows (FSDP): dots sum over the ranks; absent = False

    def matvec(self, v: torch.Tensor) -> torch.Tensor: ...


class DenseOperator:
    """A (symmetric) matrix as an operator — the exact reference every estimator is tested against."""

    def __init__(self, A: torch.Tensor):
        self.A = A
        self.shape = tuple(A.shape)
        self.dtype, self.device = A.dtype, A.device
        self.blocks = [torch.Size([A.shape[0]])]
        self.sharded = False

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self.A @ v

    def matvec_add(self, v: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return out.addmv_(self.A, v)


def add_matvec(op, v, out: torch.Tensor) -> torch.Tensor:
    """out ← out + A·v: in place where the operator can (``matvec_add``), else with one temporary;
    a :class:`~.basis.DiskVector` v is read whole for operators that cannot stream it (``takes_disk``)."""
    if isinstance(v, DiskVector) and not getattr(op, "takes_disk", False):
        v = v.read(0, v.n)
    f = getattr(op, "matvec_add", None)
    if f is not None:
        return f(v, out)
    return out.add_(op.matvec(v))


class Counted:
    """An operator that counts its products and their seconds (each estimator wraps its own)."""

    def __init__(self, op: LinearOperator):
        self.op = op
        self.shape, self.dtype, self.device, self.blocks = op.shape, op.dtype, op.device, op.blocks
        self.leaves = getattr(op, "leaves", None)
        self.takes_disk = getattr(op, "takes_disk", False)
        self.sharded = sharded(op)
        self.calls, self.seconds = 0, 0.0

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        out = self.op.matvec(v)
        self.calls += 1
        self.seconds += time.perf_counter() - t0
        return out

    def matvec_add(self, v: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        add_matvec(self.op, v, out)
        self.calls += 1
        self.seconds += time.perf_counter() - t0
        return out


def fd_step(dtype: torch.dtype, weight_norm: float, order: int = 2) -> float:
    """The default step length h = ‖εv‖ of a finite-difference HVP (a weight-space distance).

    The central difference Hv ≈ (∇L(w + εv) − ∇L(w − εv)) / 2ε, ‖v‖ = 1, has two errors: rounding
    ≈ a·u‖w‖/h (w ± εv is stored with an error of u·|w_i| per weight, ‖r‖ ≈ u‖w‖, which the
    difference divides by ε; the gradients' own rounding is of the same kind) and truncation
    ≈ K·h² (K ~ ‖∇³L[v, v, ·]‖/6: zero on a quadratic). Their sum is smallest at
    h = (a·u‖w‖ / 2K)^{1/3}, so

        h = FD_C · (u · max(‖w‖, 1))^(1/3)

    with u the unit roundoff of the parameters' dtype (float32 6.0e-8, bf16 3.9e-3), never below
    float32's: transformers runs RMSNorm and the attention softmax in float32 whatever the
    parameters' dtype, so a float64 Llama's gradient is accurate to ~1e-7, not 1e-16 (measured: at a
    float64-sized step the fd error was 5.8e-3, falling as 1/h — rounding, not truncation).

    The weights w ± εv are set by *dithered* rounding (:func:`params.set_dithered_offset`): rounded
    to the nearest float, every entry whose step is below half its weight's spacing was lost, a
    bias towards zero along directions that are small where the weights are large — the top
    eigenvector's. On SmolLM2-135M that bias, not the truncation, was the error: the Rayleigh
    quotient along a near-top eigenvector (relative to double backward) was −5.8e-3, −2.6e-3,
    −1.1e-3, −1.4e-3, −4.9e-3 at h/h₀ = ¼, ½, 1, 2, 4 (h₀ = 0.015·(u‖w‖)^(1/3) = 7.5e-4) with nearest
    rounding and −1.0e-4, −3.7e-5, −2.5e-4 at ¼, ½, 1 dithered (at 1: truncation). Hence

        FD_C = 0.0075 (h = 3.8e-4 on SmolLM2), FD_C4 = 0.0075 for order 4 (h ∝ (u‖w‖)^(1/5))

    measured there on the eigenvalue, not on a random product: along the top eigenvector the third
    derivative is far larger than along a random direction, and the residual test cannot see the
    resulting bias (the fd operator is consistent, only not H). Earlier, with nearest rounding and
    h₀: Lanczos λ_max against double backward on a 22.7k-parameter Llama 3.6e-7 to 8e-5 and on a
    4.0M one 1.6e-5, truncation ×16 per ×4 in h above that (docs/howto/memory.md, "Finite-difference HVPs"). The
    fourth-order stencil (``order=4``, four gradients) gave +5.8e-5, +5.5e-5, −7e-5 at h/h₀⁽⁴⁾ = ¼, ½, 1
    on SmolLM2: no better than order 2 at its best step there, so it is an option, not the default.
    Half-precision weights keep FD_C_HALF = 0.015 (see there). What remains is the gradients' own
    float32 rounding (~5e-5 of λ_max a product on SmolLM2); the Rayleigh quotients Lanczos forms
    average it, and its measured linearity defect (``Spectrum.noise``) is reported with every
    basis-free eigenvalue. In bf16 the rounding is 6.5e4×
    larger: expect percent-level eigenvalues, and a warning.
    """
    u = torch.finfo(dtype).eps / 2 if dtype.is_floating_point else 2.0 ** -24
    half = u > 2.0 ** -24
    u = max(u, 2.0 ** -24)
    if order == 4:
        return (FD_C_HALF if half else FD_C4) * (u * max(weight_norm, 1.0)) ** (1.0 / 5.0)
    return (FD_C_HALF if half else FD_C) * (u * max(weight_norm, 1.0)) ** (1.0 / 3.0)


FD_C = 0.0075
FD_C4 = 0.0075
# bf16/fp16 weights: rounding dominates at every step tried (a random product's error on a tiny Llama
# 0.75, 0.41, 0.19, 0.11 at h = 1, 2, 4, 8 × 0.0075·(u‖w‖)^(1/3)), so the step stays where it was
# measured before dithering (percent-level eigenvalues, docs/howto/memory.md)
FD_C_HALF = 0.015

# Central-difference stencils of ∇L at w + k·εv: (k, weight·ε). Order 2: (g₊ − g₋)/2ε, truncation
# (ε²/6)·∇³L[v,v,v]-like; order 4 (Richardson's extrapolation of two order-2 differences at ε and
# 2ε: (4·D(ε) − D(2ε))/3): (−g₊₂ + 8g₊ − 8g₋ + g₋₂)/12ε, truncation O(ε⁴), two more gradients.
FD_STENCILS = {2: ((1.0, 0.5), (-1.0, -0.5)),
               4: ((2.0, -1.0 / 12), (1.0, 8.0 / 12), (-1.0, -8.0 / 12), (-2.0, 1.0 / 12))}


class HessianOperator:
    """v ↦ H v of an objective (see :mod:`landscape.foundation.objective`).

    ``origin``: an exact copy of the current weights the caller holds (a list: no copy made), or
    :class:`~.basis.OnDisk` to keep fd's saved weights in a temporary file (one weight-sized vector
    less in memory; read back three times a product); default a copy in memory. A
    :class:`~.basis.DiskVector` direction is streamed parameter by parameter (``takes_disk``: fd
    products; exact products read it whole).

    ``method``: ``"reverse"`` (double backward, ∇(∇L·v)), ``"forward"`` (the objective's
    forward-over-reverse) or ``"fd"`` (central differences of two streamed gradients at w ± εv,
    ε = h/‖v‖ with h = ``step`` or :func:`fd_step`; the weights are put back bit-exactly from one
    saved copy after every product; memory: that copy and one parameter's gradient at a time, no
    second-order graph). ``cache_graph`` (exact methods only): ``"on"`` builds ∇L (create_graph) once
    and keeps every term's graph, so each product is one backward instead of forward + two
    backwards; ``"off"`` rebuilds it per product with the memory of one term; ``"auto"`` measures the
    first term's graph and keeps them all only if they fit in half the free memory. A kept graph
    (or fd's saved copy) is rebuilt when any tensor the objective reads changes in place (its
    version counter). Same numbers either way.

    Vectors are in ``dtype`` = ``vector_dtype`` or the wider of float32 and the parameters' dtype
    (bf16 models get float32 vectors so that Lanczos keeps its orthogonality; float64 stays float64).

    fd products on bf16/fp16 parameters are refused (a subclass with ``refuse_half = False`` forms
    them anyway, for the benchmark that shows why): measure half-precision weights in a float32 view
    (:func:`landscape.foundation.params.widened`), passing its originals as ``origin``.
    """

    def __init__(self, objective, method: str = "reverse", cache_graph: str = "auto", step: float | None = None,
                 vector_dtype: torch.dtype | None = None, origin=None, order: int = 2,
                 dither: bool | None = None):
        if method not in HVP_METHODS or method == "auto":
            raise ConfigError("hvp_method", f"unknown HVP method {method!r}; choose from "
                                            f"{', '.join(m for m in HVP_METHODS if m != 'auto')}")
        if cache_graph not in CACHE_GRAPH:
            raise ConfigError("cache_graph", f"unknown cache_graph mode {cache_graph!r}; choose from {', '.join(CACHE_GRAPH)}")
        self.obj = objective
        self.method = method
        self.cached = None if cache_graph == "auto" and method == "reverse" else \
            (cache_graph == "on" and method == "reverse")
        self.graph_bytes = None  # measured size of one term's saved graph ("auto")
        self._grads = None
        self._versions = None
        # fd: the weights, to put back bit-exactly after each product (a caller that already holds
        # an exact copy of the current weights, e.g. ``params.perturbed``'s origin, passes it: one
        # weight-sized copy less)
        self.on_disk = origin if isinstance(origin, OnDisk) else None
        self._origin = None if self.on_disk else origin
        self._store = None
        self.calls = 0
        self.seconds = 0.0
        self.sharded = bool(getattr(objective, "sharded", False))
        ps = objective.params
        if self.sharded and method != "fd":
            raise ConfigError("hvp_method", f"{method!r} HVPs need double backward or torch.func, which do not "
                                            "run on an FSDP-sharded model; use 'fd' (or 'auto')")
        if method == "fd" and P.is_half(ps) and self.refuse_half:
            raise ConfigError("hvp_method", "fd HVPs on bf16/fp16 weights measure rounding, not curvature (the step "
                                            "is far below a half-precision spacing): measure them in a float32 view "
                                            "(params.widened; `landscape sharpness` and `predict` do it), or "
                                            "load in float32")
        self.dtype = vector_dtype or torch.promote_types(ps[0].dtype, torch.float32)
        self.device = ps[0].device
        self.blocks = [p.shape for p in ps]
        self.leaves = getattr(objective, "leaves", ps)  # the tensors the blocks are (FSDP: rows of them)
        n = P.numel(ps)
        self.shape = (n, n)
        if order not in FD_STENCILS:
            raise ConfigError("fd_order", f"fd_order must be one of {', '.join(map(str, FD_STENCILS))}, got {order!r}")
        # dithered steps where measured (float32/float64 weights); bf16/fp16 keep nearest rounding, the
        # setting their percent-level accuracy was measured with (dithering's noise there is of the same size)
        self.order = order
        self.dither = dither if dither is not None else objective.params[0].element_size() >= 4
        self.step, self.step_given = step, step is not None
        if method == "fd" and step is None:
            self.step = fd_step(ps[0].dtype, float(P.norm([p.detach() for p in ps], self.sharded)), order)

    def describe(self) -> dict:
        """How the products are formed (for the JSON of every curvature measure)."""
        out = {"hvp_method": self.method, "vector_dtype": str(self.dtype).replace("torch.", "")}
        if self.method == "fd":
            rule = f"h = {FD_C}·(u·‖w‖)^(1/3)" if self.order == 2 else f"h = {FD_C4}·(u·‖w‖)^(1/5)"
            out.update(fd_step=self.step, fd_order=self.order, fd_rounding="dithered" if self.dither else "nearest",
                       fd_rule="given" if self.step_given else f"{rule}, u the parameters' unit roundoff")
        return out

    takes_disk = True
    refuse_half = True

    def _pieces(self, v):
        """A flat vector's per-parameter pieces (views; of a disk vector, read as they are reached)."""
        return v.views(self.obj.params) if isinstance(v, DiskVector) else P.unflatten(v, self.obj.params)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """H·v for a flat vector (written into one flat output: no second weight-sized copy)."""
        out = torch.zeros(self.shape[0], dtype=self.dtype, device=self.device)
        self._apply(self._pieces(v), P.unflatten(out, self.obj.params))
        self.obj.reduce(P.unflatten(out, self.obj.params))  # torch.distributed: each process did its terms
        return out

    def matvec_add(self, v: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """out ← out + H·v in place (under torch.distributed through one temporary, as the partial
        products are summed over processes)."""
        if dist.world() > 1 and not getattr(self.obj, "sharded", False):
            return out.add_(self.matvec(v))
        self._apply(self._pieces(v), P.unflatten(out, self.obj.params))
        return out

    def hvp(self, v: P.Vector) -> P.Vector:
        """H·v for a vector given per parameter tensor (a list shaped like ``params``)."""
        out = [torch.zeros_like(p, dtype=self.dtype) for p in self.obj.params]
        self._apply(v, out)
        self.obj.reduce(out)
        return out

    def _apply(self, v, out) -> None:
        t0 = time.perf_counter()
        if self.method == "reverse":
            self._reverse(v, out)
        elif self.method == "fd":
            self._fd(v, out)
        else:
            with math_attention():
                for o, h in zip(out, self.obj.hvp_forward(v)):
                    o.add_(h.to(o.dtype))
        self.calls += 1
        self.seconds += time.perf_counter() - t0

    def _fd(self, v, out) -> None:
        """out += (∇L(w + εv) − ∇L(w − εv)) / 2ε, each gradient streamed into ``out``."""
        ps = self.obj.params
        if self._origin is None or (self._versions is not None and self._versions != [p._version for p in ps]):
            self._save_origin(ps)
        vn = float(P.norm(v, self.sharded))
        if vn == 0.0:
            return
        eps = self.step / vn
        weights = dict(FD_STENCILS[self.order])
        try:
            if self.dither:  # unbiased rounding of the step to the weights' grid (see params.set_dithered_offset)
                for k in P.set_dithered_offset(ps, self._origin, v, eps, weights, seed=self.calls, leaves=self.leaves):
                    accumulate_grad(self.obj, out, alpha=weights[k] / eps)
            else:
                for k, c in weights.items():
                    P.set_offset(ps, self._origin, v, alpha=k * eps)
                    accumulate_grad(self.obj, out, alpha=c / eps)
        finally:
            P.restore(ps, self._origin)
            self._versions = [p._version for p in ps]

    def _save_origin(self, ps) -> None:
        """fd's exact copy of the current weights: in memory, or on disk (``origin=OnDisk()``: read
        back parameter by parameter, three times a product — for the stencil's two points and the restore)."""
        if self._store is not None:
            self._store.close()
            self._store = None
        if self.on_disk is not None:
            self._store = DiskVector.of([p.detach() for p in ps], self.on_disk.directory)
            self._origin = self._store.views(ps)
        else:
            self._origin = [p.detach().clone() for p in ps]

    def release(self) -> None:
        """Drop the kept graphs and fd's saved weights (e.g. before the weights are moved for ε/SAM
        sharpness)."""
        self._grads = self._versions = self._origin = None
        if self._store is not None:
            self._store.close()
            self._store = None

    def _first_order(self):
        """Per-term gradients with their graphs: rebuilt every call, or kept (see ``cache_graph``)."""
        if self._grads is not None:
            if self._versions == self.obj.versions():
                return self._grads
            self.release()  # the weights moved (in place): the kept graph is stale
        ps = self.obj.params
        grad = lambda term: torch.autograd.grad(term, ps, create_graph=True, allow_unused=True)  # noqa: E731
        terms = iter(self.obj.terms())
        if self.cached is None:
            first = self._measure_first(grad, terms)
            if first is None:
                return []
            if not self.cached:
                return itertools.chain([first], (grad(t) for t in terms))
            self._grads = [first] + [grad(t) for t in terms]
        elif self.cached:
            self._grads = [grad(t) for t in terms]
        else:
            return (grad(t) for t in terms)
        self._versions = self.obj.versions()
        return self._grads

    def _measure_first(self, grad, terms):
        """"auto": build the first term's graph under a byte counter and decide whether to keep all."""
        ps = self.obj.params
        dev = ps[0].device
        cuda0 = torch.cuda.memory_allocated(dev) if dev.type == "cuda" else 0
        sb = SavedBytes(ps)
        first = None
        with sb:
            for term in terms:
                first = grad(term)
                break
        if first is None:
            return None
        self.graph_bytes = sb.bytes
        if dev.type == "cuda":  # the allocator's count is exact there (gradients included)
            self.graph_bytes = max(sb.bytes, torch.cuda.memory_allocated(dev) - cuda0)
        free = P.free_memory(dev)
        self.cached = free is not None and self.graph_bytes * max(1, self.obj.n_terms) <= free // 2
        return first

    def _reverse(self, v, out) -> None:
        ps = self.obj.params
        vv = [x.to(p.dtype) for x, p in zip(v, ps)]
        with math_attention():
            for g in self._first_order():
                gv = sum((gi * vi).sum() for gi, vi in zip(g, vv) if gi is not None)
                if not torch.is_tensor(gv) or not gv.requires_grad:
                    continue  # this term does not depend on the parameters twice (e.g. linear)
                hv = torch.autograd.grad(gv, ps, allow_unused=True, retain_graph=bool(self.cached))
                for o, h in zip(out, hv):
                    if h is not None:
                        o.add_(h.to(o.dtype))


# ---------------------------------------------------------------------------------------------
# Vectors of an operator's space (flat tensors), shared by the estimators

def _blocks(op: LinearOperator, draw):
    """(offset, flat draw) per block of the operator's space (see :func:`_fill`)."""
    leaves = getattr(op, "leaves", None)
    i = 0
    for j, s in enumerate(op.blocks):
        k = int(torch.Size(s).numel())
        yield i, (draw(s) if leaves is None else P.draw(leaves[j], draw)).reshape(-1)
        i += k


def _fill(op: LinearOperator, draw, out):
    """A flat vector filled block by block with ``draw(shape)`` (float64 on the CPU): only one
    block's draw is in memory at a time, never a float64 copy of the whole vector (8.8 GB at 1.1B).
    Where the operator's blocks are rows of sharded parameters (its ``leaves``: FSDP), each block is
    drawn whole and cut to its rows (:func:`params.draw`), so the vector equals the one-process draw."""
    out = torch.empty(op.shape[0], dtype=op.dtype, device=op.device) if out is None else out
    for i, x in _blocks(op, draw):
        if isinstance(out, DiskVector):
            out.write(i, x)  # converted chunk by chunk: the same rounding as copy_ into a memory vector
        else:
            out[i:i + x.numel()].copy_(x)
    return out


def randn(op: LinearOperator, generator: torch.Generator, out: torch.Tensor | None = None) -> torch.Tensor:
    """A Gaussian vector drawn block by block on the CPU in float64 (the same numbers on any
    device, and the same as a per-parameter draw), in the operator's dtype and device (into
    ``out`` when given)."""
    dg = P.device_generator(generator, op.device)
    if dg is not None:  # on a GPU: drawn there, in the operator's dtype (see params.device_generator)
        return _fill(op, lambda s: torch.randn(s, generator=dg, device=op.device, dtype=op.dtype), out)
    return _fill(op, lambda s: torch.randn(s, generator=generator, dtype=torch.float64), out)


def rademacher(op: LinearOperator, generator: torch.Generator, out: torch.Tensor | None = None) -> torch.Tensor:
    """A vector of ±1, drawn block by block on the CPU."""
    dg = P.device_generator(generator, op.device)
    if dg is not None:
        return _fill(op, lambda s: torch.randint(0, 2, s, generator=dg, device=op.device, dtype=op.dtype) * 2 - 1, out)
    return _fill(op, lambda s: torch.randint(0, 2, s, generator=generator) * 2 - 1, out)


def sharded(op) -> bool:
    """Whether ``op``'s vectors are this rank's rows of weight-sized vectors (an operator of an
    FSDP2-sharded model): their dots and norms are summed over the ranks. Operators without the
    attribute (a user's own, a matrix) are whole."""
    return bool(getattr(op, "sharded", False))


def dot(a: torch.Tensor, b: torch.Tensor, sharded: bool = False) -> float:
    """⟨a, b⟩ of two flat vectors, accurate at any length; summed over the ranks when ``sharded``
    (pass the operator's :func:`sharded`).

    ``torch.dot`` and ``Tensor.norm`` on float32 vectors accumulate in float32 with few partial
    sums: on this CPU build their relative error on a coherent sum (⟨w, w⟩, ⟨Hq, q⟩) is 3e-6 at
    4.2M entries and 3e-3 at 134M — enough to make Lanczos lose orthogonality and report a
    "converged" λ_max that is off by 6e-4. Here each chunk of 65536 entries is one BLAS dot
    (error ~1e-8) and the chunks are summed in float64: ~1e-9 at 134M for about twice the time of
    one ``torch.dot``, and no temporary vector.
    """
    n = a.numel()
    if a.device.type in P.DEVICE_DRAWS:  # a GPU: float64 pieces of 16M entries, summed there (see params)
        return dist.sharded_sum(float(P._chunked_dot([(a, b)])), sharded)
    if n <= DOT_CHUNK:
        return dist.sharded_sum(float(torch.dot(a, b)), sharded)
    parts = [torch.dot(a[i:i + DOT_CHUNK], b[i:i + DOT_CHUNK]) for i in range(0, n, DOT_CHUNK)]
    return dist.sharded_sum(float(torch.stack(parts).sum(dtype=torch.float64)), sharded)  # over ranks' rows


def norm(a, sharded: bool = False) -> float:
    """‖a‖₂ with :func:`dot`'s accuracy (of a memory or a :class:`~.basis.DiskVector`, which knows
    whether it is sharded)."""
    if isinstance(a, DiskVector):
        return a.sqnorm() ** 0.5
    return dot(a, a, sharded) ** 0.5


def random_unit(op: LinearOperator, generator: torch.Generator, out=None):
    """A Gaussian vector scaled to unit norm (into ``out``: a memory or a disk vector, when given)."""
    v = randn(op, generator, out)
    n = norm(v, sharded(op))
    return v.map_(lambda c, *_: c.div_(n)) if isinstance(v, DiskVector) else v.div_(n)
