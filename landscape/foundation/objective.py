"""Objectives: a scalar function of a list of tensors, in the shape every curvature tool expects.

The protocol (:class:`Objective`), which the Hessian operator, the sharpness measures and SAM's
references rely on — nothing else about the objective is probed:

- ``params``: the tensors L is differentiated with respect to (the rest of a model is held fixed);
  under FSDP sharding, this rank's local rows of them (plain tensors sharing the parameters'
  storage), with ``leaves`` the sharded parameters themselves (autograd's leaves, and the layout
  random vectors are drawn in: :func:`landscape.foundation.params.draw`); ``leaves`` is ``params``
  otherwise;
- ``terms()``: differentiable scalars whose sum over this process, then over processes
  (:meth:`reduce`), is L — one per batch, so gradients and HVPs accumulate batch by batch;
- ``reduce(tensors)``: sum per-process partial results in place (identity on one process);
- ``value()``: L itself, without gradients;
- ``versions()``: the in-place version counters of every tensor the graph of ``terms()`` reads
  (a kept graph is stale when one changes);
- ``n_terms``: how many terms this process yields;
- ``hvp_forward(v)``: H·v by forward-over-reverse (``torch.func.jvp`` of the gradient), where the
  objective can express itself functionally; otherwise NotImplementedError.

:class:`ModelObjective` is the shared loss of :mod:`landscape.foundation.loss` over fixed batches;
:class:`FunctionObjective` wraps a closed form (tests, quadratics).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Iterator, Protocol

import torch

from landscape.foundation import distributed as dist
from landscape.foundation import params as P
from landscape.foundation.loss import batch_term, functional, param_device, total_tokens


class Objective(Protocol):
    params: list

    def terms(self) -> Iterator[torch.Tensor]: ...

    def reduce(self, tensors: list) -> list: ...

    def value(self) -> float: ...

    def versions(self) -> list: ...

    @property
    def n_terms(self) -> int: ...

    def hvp_forward(self, v: list) -> list: ...


class FunctionObjective:
    """An objective given by ``fn()`` over explicit tensors ``params`` (tests, closed forms)."""

    def __init__(self, fn, params):
        self.fn = fn
        self.params = list(params)
        self.leaves = self.params
        self.names = [f"p{i}" for i in range(len(self.params))]

    def terms(self):
        yield self.fn()

    def reduce(self, tensors: list) -> list:
        return tensors

    @torch.no_grad()
    def value(self) -> float:
        return float(self.fn())

    def versions(self) -> list:
        return [p._version for p in self.params]

    @property
    def n_terms(self) -> int:
        return 1

    def hvp_forward(self, v: list) -> list:
        raise NotImplementedError("forward-over-reverse HVPs need a model objective")


class ModelObjective:
    """L(w) of :func:`landscape.foundation.loss.evaluate` as a function of a chosen subset of a
    model's parameters (``params``: name → parameter; default all trainable ones)."""

    def __init__(self, model: torch.nn.Module, batches, params=None):
        from landscape.foundation.params import select

        self.model = model
        self.device = param_device(model)
        self.batches = [b.to(self.device) for b in batches]
        self.n_tokens = total_tokens(self.batches)
        named = select(model) if params is None else params
        self.names = list(named.keys())
        self.leaves = list(named.values())
        self.sharded = P.any_sharded(self.leaves)  # the measured vectors are this rank's rows
        # the model's forwards gather FSDP rows on every rank (an adapter over a sharded base, too):
        # every rank must run as many passes
        self.lockstep = self.sharded or P.any_sharded(model.parameters())
        self.params = [P.local(p) for p in self.leaves] if self.sharded else self.leaves

    @property
    def local_batches(self) -> list:
        """This process's share of the batches (all of them on one process) as (batch, weight)
        pairs; under sharding padded with weight-0 repeats so that every rank runs as many passes."""
        return dist.share(self.batches, self.lockstep)

    @property
    def n_terms(self) -> int:
        return len(self.local_batches)

    def terms(self):
        for b, weight in self.local_batches:
            term = batch_term(self.model, b, self.n_tokens)
            yield term if weight == 1.0 else term * weight

    def reduce(self, tensors: list) -> list:
        """Sum per-process partial vectors; under sharding FSDP's reduce-scatter already summed
        them (each rank holds its rows of the global gradient): nothing to do."""
        return tensors if self.sharded else dist.all_reduce_(tensors)

    @torch.no_grad()
    def value(self) -> float:
        return dist.all_reduce_scalar(float(sum(t.double() for t in self.terms())))

    def versions(self) -> list:
        return [P.local(p)._version for p in self.model.parameters()]  # the fixed ones are in the graph too

    def hvp_forward(self, v: list) -> list:
        """H·v as the jvp of the gradient (forward-over-reverse), batch by batch; not reduced."""
        from torch.func import grad, jvp

        if self.sharded:
            raise NotImplementedError("forward-over-reverse HVPs do not run on a sharded model")
        base = dict(zip(self.names, [p.detach() for p in self.params]))
        tangent = dict(zip(self.names, [x.to(p.dtype) for x, p in zip(v, self.params)]))
        out = [torch.zeros_like(p) for p in self.params]
        for b, _ in self.local_batches:
            def f(pdict, b=b):
                return batch_term(functional(self.model, pdict), b, self.n_tokens)

            _, hv = jvp(grad(f), (base,), (tangent,))
            for o, n in zip(out, self.names):
                o.add_(hv[n])
        return out


def accumulate_grad(obj: Objective, out: list, alpha: float = 1.0) -> float:
    """out ← out + α·∇L (this process's terms; *not* reduced), and the summed loss of the terms.

    The gradient is streamed: each parameter's gradient is added into ``out`` the moment autograd
    has it (a post-accumulate hook) and dropped at once, so besides ``out`` only one parameter's
    gradient exists at a time — a full gradient tuple (one weight-sized vector: 4.4 GB at 1.1B
    float32) is never materialised. The parameters' own ``.grad`` are put back afterwards. Falls
    back to ``torch.autograd.grad`` when a parameter is not a leaf tensor. Under FSDP sharding the
    hooks sit on the sharded parameters and fire after the reduce-scatter, so ``out`` receives this
    rank's rows of the *global* gradient (the backward then runs without ``inputs=``: FSDP's
    parameters are not the graph's leaves; ``grad_only`` keeps the rest out of the graph).
    """
    ps = getattr(obj, "leaves", obj.params)
    sharded = getattr(obj, "sharded", False)
    total = 0.0
    if not all(p.is_leaf and p.requires_grad for p in ps):
        for term in obj.terms():
            for o, gi in zip(out, torch.autograd.grad(term, ps, allow_unused=True)):
                if gi is not None:
                    o.add_(gi.to(o.dtype), alpha=alpha)
            total += float(term.detach().double())
        return total
    saved = [p.grad for p in ps]
    slot = {id(p): o for p, o in zip(ps, out)}

    def hook(p):
        slot[id(p)].add_(P.local(p.grad).to(slot[id(p)].dtype), alpha=alpha)
        p.grad = None

    handles = [p.register_post_accumulate_grad_hook(hook) for p in ps]
    try:
        for p in ps:
            p.grad = None
        for term in obj.terms():
            if sharded:
                term.backward()
            else:
                term.backward(inputs=ps)
            total += float(term.detach().double())
    finally:
        for h in handles:
            h.remove()
        for p, g in zip(ps, saved):
            p.grad = g
    return total


def gradient(obj: Objective, dtype: torch.dtype | None = None) -> tuple[float, list]:
    """(L, ∇L) of an objective, accumulated term by term (streamed, see :func:`accumulate_grad`) and
    reduced over processes; ``dtype``: the gradient's (default: each parameter's)."""
    grads = [torch.zeros_like(p, dtype=dtype or p.dtype) for p in obj.params]
    total = torch.tensor(accumulate_grad(obj, grads), dtype=torch.float64, device=obj.params[0].device)
    if getattr(obj, "sharded", False):
        return dist.all_reduce_scalar(float(total)), grads  # the gradient rows are global already
    obj.reduce(grads + [total])  # one all-reduce for the gradient and the loss
    return float(total), grads


def loss_and_grad(model: torch.nn.Module, batches, params=None):
    """(L(w), [∂L/∂p for p in params]) accumulated batch by batch; the model's .grad is untouched."""
    named = None if params is None else OrderedDict((str(i), p) for i, p in enumerate(params))
    return gradient(ModelObjective(model, batches, named))
