"""A bounded store of weight-sized vectors: the Krylov basis of Lanczos, the sketches of Hutch++/XTrace.

At LLM scale one vector is the size of the model (0.54 GB in float32 for 135M parameters), so where
the basis lives decides whether a solve fits. A :class:`Basis` holds at most ``capacity`` vectors of
length n in one of three places:

- ``"memory"``: one (capacity × n) tensor on the operator's device (fastest);
- ``"host"``: the same in CPU memory while the operator runs on a GPU (chunks go to the device);
- ``"disk"``: an anonymous temporary file (deleted by the OS when the process ends, even on a crash),
  read and written chunk by chunk with ``pread``/``pwrite``, so the process's resident memory does
  not grow with the basis (the OS page cache may keep the file in otherwise free memory).

Every operation walks the coordinates in chunks, so besides the store it needs only a
(rows × chunk) buffer. Inner products are accurate at any length: each chunk is one BLAS
matrix-vector product over at most 65,536 entries per row and the chunks are summed in float64 (a
float32 reduction over millions of entries costs Lanczos its orthogonality, see ``operator.dot``).

Where a basis goes by default (:func:`choose_basis`): in memory when all the vectors fit in the
*budget*; the default budget is the memory the process already holds for the model and its graph
(RSS on the CPU, allocated memory on a GPU), capped at half of what is free — the basis may at most
double a solve's footprint — and otherwise on disk.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

import numpy as np
import torch

from landscape.foundation import distributed as dist
from landscape.foundation.params import footprint, free_memory

CHUNK = 1 << 16  # entries per row per chunk in memory
DOT_CHUNK = CHUNK  # entries per BLAS dot of an accurate inner product (operator.dot, DiskVector.dot)
DISK_CHUNK = 1 << 20  # entries per row per read from disk (4 MB of float32)
WHERE = ("auto", "memory", "host", "disk")
REORTH = ("auto", "full", "none")


@dataclass(frozen=True)
class BasisPolicy:
    """How many vectors a basis may hold and where: ``max_basis`` (None: chosen, see
    :func:`choose_basis`), ``where`` ("auto", "memory", "host", "disk"), ``budget`` (bytes the basis
    may take in memory; None: the process's current footprint, at most half the free memory),
    ``directory`` (where a disk basis's temporary file goes; None: the system's temp dir) and
    ``reorth``: keep a basis to reorthogonalise against ("full"), none ("none": Lanczos runs the
    three-term recurrence with two vectors), or "auto": full when the basis fits the budget in
    memory or a place was asked for explicitly, else none. ``stop`` (Lanczos with a basis only):
    what ``tol`` bounds, the residual or the eigenvalue's error (see :func:`~.lanczos1950.lanczos`)."""

    max_basis: int | None = None
    where: str = "auto"
    budget: int | None = None
    directory: str | None = None
    reorth: str = "auto"
    stop: str = "residual"  # Lanczos with a basis: what tol bounds ("residual" or "eigenvalue", see lanczos)


def default_budget(device) -> int:
    """The memory a basis may take by default (see the module docstring)."""
    free = free_memory(device)
    own = footprint(device)
    return own if free is None else min(own, free // 2)


def _spare(device, vec: int) -> int:
    free = free_memory(device)
    return 0 if free is None else free // 2 // vec


def choose_basis(op, policy: BasisPolicy, wanted: int, max_iter: int, beyond: bool = True) -> tuple[int, str]:
    """(capacity, where) for a solve wanting ``wanted`` eigenpairs in at most ``max_iter`` products
    (``wanted=0``: a sketch of exactly ``policy.max_basis`` vectors).

    The whole run's basis (``max_iter`` vectors: no restart) when it fits the budget in memory
    (beside two working vectors); otherwise as many as fit, up to ``max(20, 2·wanted + 10)``, with
    thick restarts, if that is at least ``wanted + 3``; for more than one eigenpair (``wanted ≥ 2``;
    :func:`resolve_reorth` sends λ_max/λ_min alone to the basis-free recurrence when the basis does
    not fit) the smallest thick-restart basis, ``wanted + 3`` vectors, in memory if half the free
    memory holds them; otherwise ``max(20, 2·wanted + 10)`` on disk.
    An explicit ``policy.max_basis`` or ``policy.where`` wins; ``beyond=False`` never goes beyond
    the budget.
    """
    n = op.shape[0]
    vec = n * torch.empty((), dtype=op.dtype).element_size()
    budget = policy.budget if policy.budget is not None else default_budget(op.device)
    fits = max(0, budget // vec - 2)  # vectors the budget holds beside two working vectors
    restart = max(20, 2 * wanted + 10)
    if policy.max_basis:
        cap = policy.max_basis
    elif max_iter <= fits:
        cap = max_iter
    elif wanted and fits >= wanted + 3:
        cap = min(fits, restart)  # a smaller basis in memory, restarted more often
    elif beyond and wanted >= 2 and _spare(op.device, vec) >= wanted + 3:
        # top-k: the smallest thick-restart basis (keeps the k wanted Ritz vectors and one more, adds
        # two per cycle), in memory beyond the budget: on SmolLM2 top-5 this is 8 vectors, a peak of
        # 1.98× that of one HVP (benchmarks/real.py), where a disk basis was I/O-bound (0.5 GB/s,
        # 35 s a step)
        cap = fits = wanted + 3
    else:
        cap = restart
    cap = max(cap, wanted + 3) if wanted else max(cap, 1)
    where = policy.where
    if where == "auto":
        where = "memory" if cap <= fits else "disk"
        if where == "disk" and torch.device(op.device).type == "cuda" and cap * vec <= default_budget("cpu"):
            where = "host"
    return min(cap, n + 1), where


def resolve_reorth(op, policy: BasisPolicy, wanted: int, max_iter: int) -> str:
    """"full" or "none" for ``policy.reorth`` (see :class:`BasisPolicy`)."""
    if policy.reorth not in REORTH:
        raise ValueError(f"reorth must be one of {', '.join(REORTH)}, not {policy.reorth!r}")
    if policy.reorth != "auto":
        return policy.reorth
    if policy.where != "auto" or wanted > 2:
        # beyond λ_max and λ_min the copies of a basis-free run are not merged reliably at LLM scale:
        # on SmolLM2-135M its "top 5" were five copies of λ_max 1.5e-3 apart, where a thick-restarted
        # basis found 222.78, 186.85, 174.88, 145.51, 130.88
        return "full"
    # λ_max/λ_min: a basis only when it fits the budget (three float64 vectors cost about as much
    # as the smallest thick-restart basis and need no restarts)
    return "full" if choose_basis(op, policy, wanted, max_iter, beyond=False)[1] in ("memory", "host") else "none"


class Basis:
    """Up to ``capacity`` vectors of length ``n`` (see the module docstring); ``len(basis)`` held."""

    def __init__(self, n: int, capacity: int, dtype, device, where: str = "memory", directory: str | None = None,
                 sharded: bool = False):
        if where not in WHERE[1:]:
            raise ValueError(f"basis location must be one of {', '.join(WHERE[1:])}, not {where!r}")
        self.n, self.capacity, self.dtype, self.device = n, capacity, dtype, torch.device(device)
        self.where, self.count = where, 0
        self.sharded = sharded  # its vectors are this rank's rows (FSDP): projections sum over the ranks
        self.itemsize = torch.empty((), dtype=dtype).element_size()
        self.nbytes = capacity * n * self.itemsize
        if where != "disk":
            self.store = torch.empty(capacity, n, dtype=dtype, device=self.device if where == "memory" else "cpu")
            self.file = None
        else:
            self.store = None
            self.file = tempfile.TemporaryFile(dir=directory)
            self.np_dtype = torch.empty((), dtype=dtype).numpy().dtype

    def __len__(self) -> int:
        return self.count

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        self.store = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ----------------------------------------------------------------------------------------- rows
    def append(self, v: torch.Tensor) -> None:
        if self.count >= self.capacity:
            raise RuntimeError("basis is full")
        self._write_row(self.count, 0, v)
        self.count += 1

    def row(self, i: int) -> torch.Tensor:
        """Vector ``i``: a view in memory, a fresh tensor read from disk."""
        if self.store is not None:
            return self.store[i].to(self.device)  # a view unless the store is on the host
        return self._read(i, i + 1, 0, self.n)[0].to(self.device)

    def _write_row(self, i: int, start: int, v: torch.Tensor) -> None:
        if self.store is not None:
            self.store[i, start:start + v.numel()].copy_(v)
            return
        buf = memoryview(v.detach().to("cpu", self.dtype).contiguous().numpy()).cast("B")
        offset, done = (i * self.n + start) * self.itemsize, 0
        while done < len(buf):
            done += os.pwrite(self.file.fileno(), buf[done:], offset + done)

    def _read(self, lo: int, hi: int, start: int, stop: int) -> torch.Tensor:
        """Rows lo..hi-1, coordinates start..stop-1, as a CPU tensor (from disk)."""
        out = np.empty((hi - lo, stop - start), dtype=self.np_dtype)
        width = (stop - start) * self.itemsize
        for r, i in enumerate(range(lo, hi)):
            view, offset, done = memoryview(out[r]).cast("B"), (i * self.n + start) * self.itemsize, 0
            while done < width:
                got = os.preadv(self.file.fileno(), [view[done:]], offset + done)
                if got <= 0:
                    raise OSError("short read from the basis file")
                done += got
        return torch.from_numpy(out)

    def _chunks(self, rows: int):
        """(start, stop, block) over the coordinates; block = rows × chunk on the device."""
        step = CHUNK if self.store is not None else DISK_CHUNK
        for start in range(0, self.n, step):
            stop = min(self.n, start + step)
            if self.store is not None:
                yield start, stop, self.store[:rows, start:stop].to(self.device)
            else:
                yield start, stop, self._read(0, rows, start, stop).to(self.device)

    # ------------------------------------------------------------------------------------- algebra
    def project(self, w: torch.Tensor, rows: int | None = None) -> np.ndarray:
        """Qᵀw over the first ``rows`` vectors, in float64, accurate at any length."""
        rows = self.count if rows is None else rows
        if rows == 0:
            return np.zeros(0)
        acc = None  # float64 on the vectors' device: one host synchronisation at the end, not one a chunk
        for start, stop, block in self._chunks(rows):
            for a in range(0, stop - start, CHUNK):
                b = min(stop - start, a + CHUNK)
                part = (block[:, a:b] @ w[start + a:start + b].to(block.dtype)).double()
                acc = part if acc is None else acc.add_(part.to(acc.device))
        return dist.sharded_sum(acc.cpu().numpy(), self.sharded)  # FSDP: each rank projected its rows

    def subtract(self, w: torch.Tensor, h: np.ndarray) -> None:
        """w ← w − Q h (in place), Q the first ``len(h)`` vectors."""
        rows = len(h)
        if rows == 0:
            return
        hh = torch.as_tensor(h, dtype=self.dtype, device=self.device)
        for start, stop, block in self._chunks(rows):
            w[start:stop].addmv_(block.t(), hh, alpha=-1)

    def orthogonalize(self, w: torch.Tensor, passes: int = 2) -> np.ndarray:
        """Remove from w its components on the basis (classical Gram–Schmidt, ``passes`` times:
        "twice is enough"); returns the coefficients removed, summed over the passes."""
        total = np.zeros(self.count)
        for _ in range(passes):
            h = self.project(w)
            self.subtract(w, h)
            total += h
        return total

    def combine(self, S: np.ndarray) -> None:
        """Replace the basis by its ``S.shape[1]`` combinations Q·S (S: len × l), in place, chunk by chunk."""
        rows, keep = S.shape
        St = torch.as_tensor(S.T, dtype=self.dtype, device=self.device)
        for start, stop, block in self._chunks(rows):
            new = St @ block  # l × chunk, computed from the whole block before anything is overwritten
            if self.store is not None:
                self.store[:keep, start:stop].copy_(new)
            else:
                for i in range(keep):
                    self._write_row(i, start, new[i])
        self.count = keep


class OnDisk:
    """Where a weight-sized copy should live when it is not in memory: a temporary file in ``directory``
    (None: the system's temp dir). ``HessianOperator(origin=OnDisk())`` keeps fd's saved weights there."""

    def __init__(self, directory: str | None = None):
        self.directory = directory


class DiskVector:
    """One flat vector of length ``n`` in an anonymous temporary file (deleted by the OS when the
    process ends, even on a crash), read and written :data:`DISK_CHUNK` entries at a time — a
    weight-sized vector that costs the process no resident memory: the fd products' saved weights,
    the two-vector Lanczos recurrence's q when only one vector fits (:mod:`.cullum1985plain`).

    Its algebra is the in-memory one, chunk by chunk, with the same operations in the same order, so
    a run with a vector on disk gives the same bits as one with it in memory (tested). ``views``
    gives the per-parameter pieces lazily, each read whole when reached (one parameter in memory at
    a time), which is all an fd product needs of its direction and of the saved weights.
    """

    def __init__(self, n: int, dtype, device, directory: str | None = None, sharded: bool = False):
        self.n, self.dtype, self.device = n, dtype, torch.device(device)
        self.sharded = sharded  # this rank's rows (FSDP): its dots sum over the ranks
        self.itemsize = torch.empty((), dtype=dtype).element_size()
        self.np_dtype = torch.empty((), dtype=dtype).numpy().dtype
        self.nbytes = n * self.itemsize
        self.file = tempfile.TemporaryFile(dir=directory)
        self.file.truncate(self.nbytes)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None

    def __del__(self):
        self.close()

    def write(self, start: int, t: torch.Tensor) -> None:
        """Entries start.. ← t, converted to the vector's dtype :data:`DISK_CHUNK` entries at a time (a
        float64 draw of a 233M-entry embedding is not copied whole into float32 first)."""
        flat = t.detach().reshape(-1)
        for a in range(0, flat.numel(), DISK_CHUNK):
            part = flat[a:a + DISK_CHUNK].to("cpu", self.dtype).contiguous()
            buf = memoryview(part.numpy()).cast("B")
            offset, done = (start + a) * self.itemsize, 0
            while done < len(buf):
                done += os.pwrite(self.file.fileno(), buf[done:], offset + done)

    def read(self, start: int, stop: int) -> torch.Tensor:
        """Entries start..stop-1 on the vector's device."""
        out = np.empty(stop - start, dtype=self.np_dtype)
        view, offset, done = memoryview(out).cast("B"), start * self.itemsize, 0
        while done < len(view):
            got = os.preadv(self.file.fileno(), [view[done:]], offset + done)
            if got <= 0:
                raise OSError("short read from a disk vector")
            done += got
        return torch.from_numpy(out).to(self.device)

    def chunks(self):
        for start in range(0, self.n, DISK_CHUNK):
            stop = min(self.n, start + DISK_CHUNK)
            yield start, stop, self.read(start, stop)

    def views(self, like) -> "_LazyViews":
        """The vector cut like the tensors of ``like`` (as :func:`params.unflatten`), read on access."""
        return _LazyViews(self, [tuple(t.shape) for t in like])

    @classmethod
    def of(cls, tensors, directory: str | None = None) -> "DiskVector":
        """A disk copy of a list of tensors (one flat vector of their entries)."""
        tensors = list(tensors)
        v = cls(sum(t.numel() for t in tensors), tensors[0].dtype, tensors[0].device, directory)
        i = 0
        for t in tensors:
            v.write(i, t)
            i += t.numel()
        return v

    def map_(self, fn) -> "DiskVector":
        """self ← fn(self), chunk by chunk (``fn`` takes and returns a chunk and its start)."""
        for start, stop, c in self.chunks():
            self.write(start, fn(c, start, stop))
        return self

    def sqnorm(self) -> float:
        """⟨self, self⟩ as :func:`.operator.dot` forms it."""
        parts = []
        for start, stop, c in self.chunks():
            parts += [torch.dot(c[a:a + DOT_CHUNK], c[a:a + DOT_CHUNK]) for a in range(0, stop - start, DOT_CHUNK)]
        if self.n <= DOT_CHUNK:
            return dist.sharded_sum(float(parts[0]), self.sharded)
        return dist.sharded_sum(float(torch.stack(parts).sum(dtype=torch.float64)), self.sharded)

    # ------------------------------------------------------------------ algebra with a memory vector
    def dot(self, w: torch.Tensor) -> float:
        """⟨self, w⟩ exactly as :func:`.operator.dot` forms it (65,536-entry BLAS dots, summed in float64)."""
        if self.n <= DOT_CHUNK:
            return dist.sharded_sum(float(torch.dot(w, self.read(0, self.n))), self.sharded)
        parts = []
        for start, stop, c in self.chunks():
            parts += [torch.dot(w[start + a:start + a + DOT_CHUNK], c[a:a + DOT_CHUNK]) for a in range(0, stop - start, DOT_CHUNK)]
        return dist.sharded_sum(float(torch.stack(parts).sum(dtype=torch.float64)), self.sharded)

    def add_to(self, w: torch.Tensor, alpha: float) -> None:
        """w ← w + α·self (``w.add_(self, alpha=α)``)."""
        for start, stop, c in self.chunks():
            w[start:stop].add_(c, alpha=alpha)

    def exchange(self, w: torch.Tensor, beta: float) -> None:
        """The Lanczos hand-over: self ← w / β and w ← −β·self_old, in one pass."""
        for start, stop, c in self.chunks():
            self.write(start, w[start:stop].div(beta))
            w[start:stop].copy_(c.mul_(-beta))


class _LazyViews:
    """Per-parameter pieces of a :class:`DiskVector`, each read from disk when reached."""

    def __init__(self, vec: DiskVector, shapes: list):
        self.vec, self.shapes = vec, shapes
        self.offsets = np.concatenate([[0], np.cumsum([int(np.prod(s)) for s in shapes])]).tolist()

    def __len__(self) -> int:
        return len(self.shapes)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.vec.read(self.offsets[i], self.offsets[i + 1]).view(self.shapes[i])

    def read_flat(self, i: int, a: int, b: int) -> torch.Tensor:
        """Entries a..b-1 of the i-th piece, flattened (:func:`landscape.foundation.params.flat_piece`)."""
        return self.vec.read(self.offsets[i] + a, self.offsets[i] + b)

    def __iter__(self):
        return (self[i] for i in range(len(self)))
