"""Linear operators: the one type every curvature estimator takes.

An operator is anything with

- ``shape`` ``(n, n)``, ``dtype`` and ``device`` of the vectors it acts on,
- ``blocks``: the shapes of the tensors a flat vector of length n is made of (one parameter tensor
  each for a Hessian; ``[(n,)]`` for a matrix) — random vectors are drawn block by block, so a
  seed gives the same vector whether the estimator or a caller draws it per parameter,
- ``matvec(v)``: A·v for a flat vector v of length n.

Estimators (``lanczos1950``, ``mises1929power``, ``hutchinson1989``, ``ghorbani2019slq``) see only
that, wrap the operator in :class:`Counted` and report *their own* number of products. So every
estimator can be checked against a dense matrix (:class:`DenseOperator`), and the Hessian of a
model (:class:`HessianOperator`) is one operator among others.

:class:`HessianOperator` is exact: v ↦ ∇(∇L·v) by double backward (``method="reverse"``) or the
objective's forward-over-reverse (``method="forward"``), accumulated term by term and reduced across
processes. Second-order autograd through fused scaled-dot-product-attention kernels is not
implemented in PyTorch, so every product runs under the math SDPA backend.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from typing import Protocol

import torch

from landscape.foundation import params as P
from landscape.foundation.configs import CACHE_GRAPH, HVP_METHODS, ConfigError


class LinearOperator(Protocol):
    shape: tuple
    dtype: torch.dtype
    device: torch.device
    blocks: list

    def matvec(self, v: torch.Tensor) -> torch.Tensor: ...


class DenseOperator:
    """A (symmetric) matrix as an operator — the exact reference every estimator is tested against."""

    def __init__(self, A: torch.Tensor):
        self.A = A
        self.shape = tuple(A.shape)
        self.dtype, self.device = A.dtype, A.device
        self.blocks = [torch.Size([A.shape[0]])]

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self.A @ v


class Counted:
    """An operator that counts its products and their seconds (each estimator wraps its own)."""

    def __init__(self, op: LinearOperator):
        self.op = op
        self.shape, self.dtype, self.device, self.blocks = op.shape, op.dtype, op.device, op.blocks
        self.calls, self.seconds = 0, 0.0

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        out = self.op.matvec(v)
        self.calls += 1
        self.seconds += time.perf_counter() - t0
        return out


def math_attention():
    """Force the differentiable-twice math path of SDPA."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel(SDPBackend.MATH)
    except ImportError:  # pragma: no cover - very old torch
        return contextlib.nullcontext()


class _SavedBytes(torch.autograd.graph.saved_tensors_hooks):
    """Counts the bytes of distinct storages autograd saves inside the block (the graph's memory),
    leaving out the parameters' own storages."""

    def __init__(self, params):
        self.bytes = 0
        skip = {p.untyped_storage().data_ptr() for p in params}
        seen = set()

        def pack(t):
            st = t.untyped_storage()
            key = st.data_ptr()
            if key not in skip and key not in seen:
                seen.add(key)
                self.bytes += st.nbytes()
            return t

        super().__init__(pack, lambda t: t)


class HessianOperator:
    """v ↦ H v of an objective (see :mod:`landscape.foundation.objective`).

    ``method``: ``"reverse"`` (double backward, ∇(∇L·v)) or ``"forward"`` (the objective's
    forward-over-reverse). ``cache_graph``: ``"on"`` builds ∇L (create_graph) once and keeps every
    term's graph, so each product is one backward instead of forward + two backwards; ``"off"``
    rebuilds it per product with the memory of one term; ``"auto"`` measures the first term's graph
    and keeps them all only if they fit in half the free memory. A kept graph is rebuilt when any
    tensor the objective reads changes in place (its version counter). Same numbers either way.

    Vectors are in ``dtype`` = the wider of float32 and the parameters' dtype (bf16 models get
    float32 vectors so that Lanczos keeps its orthogonality; float64 stays float64).
    """

    def __init__(self, objective, method: str = "reverse", cache_graph: str = "auto"):
        if method not in HVP_METHODS:
            raise ConfigError("hvp_method", f"unknown HVP method {method!r}; choose from {', '.join(HVP_METHODS)}")
        if cache_graph not in CACHE_GRAPH:
            raise ConfigError("cache_graph", f"unknown cache_graph mode {cache_graph!r}; choose from {', '.join(CACHE_GRAPH)}")
        self.obj = objective
        self.method = method
        self.cached = None if cache_graph == "auto" else (cache_graph == "on" and method == "reverse")
        self.graph_bytes = None  # measured size of one term's saved graph ("auto")
        self._grads = None
        self._versions = None
        self.calls = 0
        self.seconds = 0.0
        ps = objective.params
        self.dtype = torch.promote_types(ps[0].dtype, torch.float32)
        self.device = ps[0].device
        self.blocks = [p.shape for p in ps]
        n = P.numel(ps)
        self.shape = (n, n)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """H·v for a flat vector (written into one flat output: no second weight-sized copy)."""
        out = torch.zeros(self.shape[0], dtype=self.dtype, device=self.device)
        self._apply(P.unflatten(v, self.obj.params), P.unflatten(out, self.obj.params))
        return out

    def hvp(self, v: P.Vector) -> P.Vector:
        """H·v for a vector given per parameter tensor (a list shaped like ``params``)."""
        out = [torch.zeros_like(p, dtype=self.dtype) for p in self.obj.params]
        self._apply(v, out)
        return out

    def _apply(self, v, out) -> None:
        t0 = time.perf_counter()
        if self.method == "reverse":
            self._reverse(v, out)
        else:
            with math_attention():
                for o, h in zip(out, self.obj.hvp_forward(v)):
                    o.add_(h.to(o.dtype))
        self.obj.reduce(out)  # torch.distributed: each process did its terms
        self.calls += 1
        self.seconds += time.perf_counter() - t0

    def release(self) -> None:
        """Drop the kept graphs (e.g. before the weights are moved for ε/SAM sharpness)."""
        self._grads = self._versions = None

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
        sb = _SavedBytes(ps)
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

def randn(op: LinearOperator, generator: torch.Generator) -> torch.Tensor:
    """A Gaussian vector drawn block by block on the CPU in float64 (the same numbers on any
    device, and the same as a per-parameter draw), in the operator's dtype and device."""
    return torch.cat([torch.randn(s, generator=generator, dtype=torch.float64).reshape(-1) for s in op.blocks]) \
        .to(op.device, op.dtype)


def rademacher(op: LinearOperator, generator: torch.Generator) -> torch.Tensor:
    """A vector of ±1, drawn block by block on the CPU."""
    return torch.cat([(torch.randint(0, 2, s, generator=generator) * 2 - 1).reshape(-1) for s in op.blocks]) \
        .to(op.device, op.dtype)


DOT_CHUNK = 1 << 16


def dot(a: torch.Tensor, b: torch.Tensor) -> float:
    """⟨a, b⟩ of two flat vectors, accurate at any length.

    ``torch.dot`` and ``Tensor.norm`` on float32 vectors accumulate in float32 with few partial
    sums: on this CPU build their relative error on a coherent sum (⟨w, w⟩, ⟨Hq, q⟩) is 3e-6 at
    4.2M entries and 3e-3 at 134M — enough to make Lanczos lose orthogonality and report a
    "converged" λ_max that is off by 6e-4. Here each chunk of 65536 entries is one BLAS dot
    (error ~1e-8) and the chunks are summed in float64: ~1e-9 at 134M for about twice the time of
    one ``torch.dot``, and no temporary vector.
    """
    n = a.numel()
    if n <= DOT_CHUNK:
        return float(torch.dot(a, b))
    parts = [torch.dot(a[i:i + DOT_CHUNK], b[i:i + DOT_CHUNK]) for i in range(0, n, DOT_CHUNK)]
    return float(torch.stack(parts).sum(dtype=torch.float64))


def norm(a: torch.Tensor) -> float:
    """‖a‖₂ with :func:`dot`'s accuracy."""
    return dot(a, a) ** 0.5


def random_unit(op: LinearOperator, generator: torch.Generator) -> torch.Tensor:
    v = randn(op, generator)
    return v / norm(v)
