"""The result of an eigenvalue estimator (Lanczos with or without a basis, power iteration)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Spectrum:
    """Extreme eigenvalues from one estimator."""

    eigenvalues: list[float]  # top-k, algebraically largest first
    lambda_max: float
    lambda_min: float | None
    residuals: list[float]  # ‖Ay − θy‖ for each of ``eigenvalues``
    residual_min: float | None
    converged: bool
    hvps: int  # products this estimator spent
    iterations: int
    method: str
    history: list[float] = field(default_factory=list)  # λ_max estimate after each product
    restarts: int = 0  # Lanczos: thick restarts (the bounded basis was full)
    max_basis: int | None = None  # Lanczos: the most basis vectors held at once
    basis: dict | None = None  # Lanczos: where the basis lived and its size
    noise: float | None = None  # Lanczos without a basis: the products' measured rounding error ‖δ(Av)‖
    stop: str = "residual"  # Lanczos: what ``tol`` bounded (the residual, or the eigenvalue's error)
    error_bounds: list | None = None  # Lanczos with a basis: bound on |θ − λ| of each of ``eigenvalues``

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("eigenvalues", "lambda_max", "lambda_min", "residuals",
                                              "residual_min", "converged", "hvps", "iterations", "method",
                                              "restarts", "max_basis", "basis", "noise", "stop", "error_bounds")}
