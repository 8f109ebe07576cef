"""One frozen, self-validating config per measurement, and the choice lists they use.

Each config's fields are the single source of
- the CLI options (``landscape.cli._common.config_options`` turns every field into ``--field-name``),
- the manifest keys (``flatness:`` and ``flatness.surface:`` of a correlate manifest),
- the results-store keys and h5 attributes (:meth:`Config.numbers`),
- and the rule "which settings change the numbers": a field declared with ``numbers=False`` (a
  speed/memory switch such as ``cache_graph``) is left out of every key, so it never splits a cache.

Configs validate themselves on construction and speak the library's terms: a bad value raises
:class:`ConfigError` naming the *field* (``points_per_pass must be between 1 and 4096``); the CLI
adds its flag name. This module imports neither torch nor numpy at import time, so the CLI can
build its options without loading them.

To add a setting: add a field with :func:`option` to the right config; the CLI flag, the manifest
key and the store key follow.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field, fields
from typing import Any

from landscape.foundation.errors import UserError

# ---------------------------------------------------------------------------------------------
# Choice lists (torch-free: shared by the library and the CLI)

SHARPNESS_METRICS = ("lambda_max", "lambda_min", "trace", "density", "eps", "eps_subspace", "sam", "asam", "avg")
DEFAULT_SHARPNESS_METRICS = ("lambda_max", "lambda_min", "trace", "eps", "sam", "avg")
SURFACE_METRICS = ("surface_curvature", "average_gradient", "mean_absolute_gradient", "center_curvature",
                   "max_increase")
EIGEN_METHODS = ("lanczos", "power")
HVP_METHODS = ("auto", "reverse", "forward", "fd")
TRACE_METHODS = ("hutchinson", "hutchpp", "xtrace")
BASIS_PLACES = ("auto", "memory", "host", "disk")
REORTH = ("auto", "full", "none")
CACHE_GRAPH = ("auto", "on", "off")
NORMS = ("filter", "layer", "none")
IGNORES = ("biasbn", "none")
DIRECTION_MODES = ("auto", "held", "regenerated")
OPTIMIZERS = ("adamw", "sam", "asam")
DTYPE_NAMES = ("float32", "bfloat16", "float64", "float16")
ATTN_IMPLS = ("auto", "sdpa", "eager")
ADAPTER_MODES = ("merge", "keep")
SHARD_MODES = ("none", "fsdp", "auto")
# Forgetting predictors of a (base, tuned) pair on general data (landscape.measures.predictors):
# result key → (where it is measured, what it is). Every one is also a correlate metric.
PREDICTOR_METRICS = {
    "delta_norm": ("base→tuned", "‖Δw‖₂, Δw = w_tuned − w_base"),
    "delta_rel": ("base→tuned", "‖Δw‖ / ‖w_base‖"),
    "grad_delta": ("base", "gᵀΔw, g = ∇L_general(w_base)"),
    "kappa_base": ("base", "ΔwᵀHΔw / ‖Δw‖², H = ∇²L_general(w_base)"),
    "quad_pred": ("base", "F̂ = gᵀΔw + ½ΔwᵀHΔw (second-order forgetting of the general loss)"),
    "bound": ("base", "gᵀΔw + ½ λ_max(H) ‖Δw‖² (upper bound of F̂)"),
    "general_loss_increase": ("base→tuned", "F = L_general(w_tuned) − L_general(w_base), measured"),
    "critical_sharpness": ("base", "λc = 2/t_c, t_c the smallest t > 0 with L_general(w_base + tΔw) > L_general(w_base) "
                                   "(Kalra et al. 2026's relative critical sharpness; forward passes only)"),
    "kl_base_tuned": ("base→tuned", "E_t Σ_v p_base log(p_base/p_tuned): token-mean KL(base ‖ tuned) of the next-token "
                                    "distributions on the general data (Shenfeld et al. 2025; forward passes only)"),
    "kl_tuned_base": ("base→tuned", "E_t Σ_v p_tuned log(p_tuned/p_base): the reverse KL(tuned ‖ base)"),
    "kl_base_tuned_task": ("base→tuned", "KL(base ‖ tuned) on the task data (--kl-data), as kl_base_tuned"),
    "kl_tuned_base_task": ("base→tuned", "KL(tuned ‖ base) on the task data (--kl-data)"),
    "grad_delta_tuned": ("tuned", "g_tᵀΔw, g_t = ∇L_general(w_tuned)"),
    "kappa_tuned": ("tuned", "ΔwᵀH_tΔw / ‖Δw‖², H_t = ∇²L_general(w_tuned)"),
    "quad_pred_tuned": ("tuned", "g_tᵀΔw − ½ΔwᵀH_tΔw (F expanded around the tuned weights)"),
}


class ConfigError(UserError):
    """A setting with an impossible value. ``field`` is the library's name for it."""

    def __init__(self, field_name: str, detail: str):
        super().__init__(f"{field_name}: {detail}", field=field_name)
        self.detail = detail


# fields that say how a number is computed, not what is measured (HVP method, where the basis lives,
# the fd step): the memory plan chooses them; ``--help`` lists them in a section of their own
ENGINE = frozenset({"max_basis", "basis", "reorth", "basis_memory", "weights_copy", "basis_dir", "stop",
                    "hvp_method", "fd_step", "fd_order", "vector_dtype", "cache_graph"})


def option(default, help: str, *, kind: str | None = None, choices: tuple | None = None, numbers: bool = True,
           bounds: tuple | str | None = None, flag: str | None = None, flag_value: str | None = None):
    """A config field.

    ``kind``: int | float | str | bool | list (comma list → tuple of str) | grid | path, from the
    default's type when not given; a trailing ``?`` (``"float?"``) allows None (always allowed when
    the default is None). ``bounds``: ``(low, high)`` inclusive (either may be None) or
    ``"positive"``. ``numbers=False``: the field never changes a result (left out of every key).
    ``flag``: the CLI flag when it is not the field's name; ``flag_value``: the value of a bare flag.
    """
    kind = kind or {bool: "bool", int: "int", float: "float", str: "str", tuple: "list"}.get(type(default), "str")
    optional = kind.endswith("?") or default is None
    low, high = (None, None) if bounds in (None, "positive") else bounds
    meta = dict(help=help, kind=kind.rstrip("?"), choices=choices, numbers=numbers, low=low, high=high,
                positive=bounds == "positive", flag=flag, optional=optional, flag_value=flag_value)
    return field(default=default, metadata=meta)


def parse_grid(spec: str, name: str = "x"):
    """``"MIN:MAX:N"`` → N evenly spaced coordinates (N = 1 means the single point MIN, MIN = MAX)."""
    import numpy as np

    try:
        lo, hi, n = spec.split(":")
        lo, hi, n = float(lo), float(hi), int(n)
    except (ValueError, AttributeError):
        raise ConfigError(name, f"grid {spec!r}: expected MIN:MAX:COUNT, e.g. -1:1:51") from None
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ConfigError(name, f"grid {spec!r}: bounds must be finite")
    if n < 1 or n > 100_000:
        raise ConfigError(name, f"grid {spec!r}: COUNT must be between 1 and 100000")
    if n == 1 and lo != hi:
        raise ConfigError(name, f"grid {spec!r}: one point needs MIN = MAX")
    if n > 1 and not lo < hi:
        raise ConfigError(name, f"grid {spec!r}: MIN must be below MAX")
    return np.linspace(lo, hi, n)


def _coerce(name: str, meta: dict, value):
    """The value in the field's kind, or a :class:`ConfigError`."""
    kind = meta["kind"]
    if kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(name, f"must be true or false, got {value!r}")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(name, f"must be an integer, got {value!r}")
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise ConfigError(name, f"must be a number, got {value!r}") from None
        if not math.isfinite(value):
            raise ConfigError(name, f"must be finite, got {value!r}")
        return float(value)
    if kind == "list":
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ConfigError(name, f"must be a list or a comma-separated string, got {value!r}")
        return tuple(str(v).strip() for v in items if str(v).strip())
    if kind == "grid":
        if isinstance(value, str):
            parse_grid(value, name)
            return value
        try:
            coords = tuple(float(v) for v in value)
        except (TypeError, ValueError):
            raise ConfigError(name, f"must be MIN:MAX:COUNT or a list of coordinates, got {value!r}") from None
        if not coords or not all(math.isfinite(c) for c in coords):
            raise ConfigError(name, "must hold at least one finite coordinate")
        return coords
    if kind in ("str", "path"):
        if hasattr(value, "__fspath__"):
            value = str(value)
        if not isinstance(value, str) or (kind == "path" and not value):
            raise ConfigError(name, f"must be a string, got {value!r}")
        return value
    raise TypeError(f"unknown option kind {kind!r}")


def _check_range(name: str, meta: dict, value) -> None:
    if meta["choices"] is not None:
        choose = f"choose from {', '.join(meta['choices'])}"
        if meta["kind"] != "list":
            if value not in meta["choices"]:
                raise ConfigError(name, f"unknown {name.replace('_', ' ')} {value!r}; {choose}")
            return
        bad = [v for v in value if v not in meta["choices"]]
        if bad or not value:
            raise ConfigError(name, f"unknown {name.rstrip('s')}(s) {', '.join(bad) or '(none given)'}; {choose}")
    if meta["kind"] not in ("int", "float"):
        return
    if meta["positive"] and not value > 0:
        raise ConfigError(name, f"must be > 0, got {value}")
    lo, hi = meta["low"], meta["high"]
    if lo is not None and hi is not None and not lo <= value <= hi:
        raise ConfigError(name, f"must be between {lo:g} and {hi:g}, got {value}")
    if lo is not None and value < lo:
        raise ConfigError(name, f"must be >= {lo:g}, got {value}")
    if hi is not None and value > hi:
        raise ConfigError(name, f"must be <= {hi:g}, got {value}")


@dataclass(frozen=True)
class Config:
    """Base of every config: coercion and checks per field, then :meth:`check` across fields."""

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.metadata.get("optional"):
                continue  # an optional setting left unset
            value = _coerce(f.name, f.metadata, value)
            _check_range(f.name, f.metadata, value)
            object.__setattr__(self, f.name, value)
        self.check()

    def check(self) -> None:
        """Checks that involve several fields (subclasses)."""

    def as_dict(self) -> dict:
        return {f.name: _jsonable(getattr(self, f.name)) for f in fields(self)}

    def numbers(self) -> dict:
        """The fields that change a result: the store key, the h5 attributes, the resume check."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in fields(self) if f.metadata.get("numbers", True)}

    def hash(self) -> str:
        return hashlib.sha256(json.dumps(self.numbers(), sort_keys=True).encode()).hexdigest()[:16]

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_mapping(cls, mapping: dict | None, where: str = "", **defaults):
        """Build from a mapping (a manifest section named ``where``); unknown keys and bad values are
        one error line naming the section and the key (``m.yaml: flatness.surface.points_per_pass ...``)."""
        if mapping is not None and not isinstance(mapping, dict):
            raise UserError(f"{where} must be a mapping of {', '.join(cls.keys())}")
        mapping = dict(mapping or {})
        unknown = sorted(set(mapping) - set(cls.keys()))
        if unknown:
            raise UserError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; known: {', '.join(cls.keys())}")
        try:
            return cls(**{**defaults, **mapping})
        except ConfigError as e:
            raise UserError(f"{where}.{e}") from None  # "m.yaml: flatness.surface.x: grid ..."


def _jsonable(v):
    return list(v) if isinstance(v, tuple) else v


# ---------------------------------------------------------------------------------------------
# Loading and data (shared by every command)

@dataclass(frozen=True)
class LoadConfig(Config):
    """How a checkpoint is loaded (never what is measured: no field changes a result's key)."""

    device: str = option("auto", "auto | cpu | cuda | cuda:N", numbers=False)
    dtype: str = option("float32", "float32 | bfloat16 | float64 | float16", numbers=False)
    trust_pickle: bool = option(False, "Allow pickle (.bin) weights, still read with torch.load(weights_only=True).",
                                numbers=False)
    trust_remote_code: bool = option(False, "Allow the checkpoint's own Python code (off by default: it runs "
                                            "arbitrary code).", numbers=False)
    attn: str = option("auto", "Attention implementation: auto (SDPA where the architecture supports it, else "
                               "eager), sdpa or eager. Curvature always runs a twice-differentiable path.",
                       choices=ATTN_IMPLS, numbers=False)
    adapter_base: str | None = option(None, "Base checkpoint dir of a PEFT adapter (default: the adapter's "
                                            "base_model_name_or_path when it is a local directory).", kind="path",
                                      numbers=False)
    grad_checkpointing: bool = option(False, "Recompute each decoder block's activations in the backward pass "
                                             "(non-reentrant activation checkpointing, in eval mode too): "
                                             "activation memory of one block instead of all, for one more forward.",
                                      numbers=False)
    adapter: str = option("merge", "A PEFT adapter is measured merged into its base's weights, or kept apart so "
                                   "that --params adapter measures in the adapter's own (LoRA A/B) space.",
                          choices=ADAPTER_MODES, numbers=False)
    shard: str = option("none", "Under torchrun: fsdp splits every parameter's rows across the processes "
                                "(FSDP2; each reads only its rows of the safetensors); auto: fsdp when three "
                                "copies of the weights do not fit one process; none: each holds the model.",
                        choices=SHARD_MODES, numbers=False)
    device_memory: float | None = option(None, "With --dry-run: plan for a device with this many GB (a GPU you do not "
                                               "have) instead of this machine; no weight is read, and a directory "
                                               "with only config.json is enough.", kind="float?", bounds="positive",
                                         numbers=False)
    world_size: int | None = option(None, "With --dry-run and --shard fsdp: plan one rank of this many processes (each "
                                          "holds 1/N of every weight and of every weight-sized vector).", kind="int",
                                    bounds=(1, None), numbers=False)
    chat_template: str | None = option(None, "A Jinja chat-template file that replaces the tokenizer's own (chat data "
                                             "is rendered with it; the batches' fingerprint follows the tokens).",
                                       kind="path", numbers=False)


@dataclass(frozen=True)
class DataConfig(Config):
    """Which tokens a measurement sees: a data file (or datasets directory) cut into fixed batches."""

    data: str | None = option(None, "Records {text} | {prompt, completion} | {input_ids} | chat {messages}: a "
                                    ".jsonl/.json/.parquet/.csv file or a datasets save_to_disk directory. "
                                    "Default: embedded eval data.", kind="path")
    data_split: str | None = option(None, "The split of a DatasetDict directory given as data.", kind="str")
    batch_size: int = option(8, "Sequences per batch.", bounds=(1, None))
    max_length: int | None = option(None, "Tokens per sequence (longer ones are cut). Default: min(128, model "
                                          "positions).", kind="int", bounds=(2, None))
    num_batches: int | None = option(None, "Use only the first N batches.", kind="int", bounds=(1, None))


# ---------------------------------------------------------------------------------------------
# Measurements

@dataclass(frozen=True)
class SharpnessConfig(Config):
    """`landscape sharpness`: which curvature/sharpness metrics, and how they are estimated."""

    metrics: tuple = option(DEFAULT_SHARPNESS_METRICS, "Comma list of " + ",".join(SHARPNESS_METRICS) + ".",
                            choices=SHARPNESS_METRICS)
    top_k: int = option(1, "How many top eigenvalues.", bounds=(1, None))
    params: str | None = option(None, "Only parameters whose name matches this regex.", kind="str")
    per_layer: bool = option(False, "Also λ_max (and trace) of each transformer block's Hessian.")
    method: str = option("lanczos", "Eigenvalue method.", choices=EIGEN_METHODS)
    max_iter: int = option(100, "Lanczos steps / power iterations (HVPs per eigenvalue run).", bounds=(1, None))
    max_basis: int | None = option(None, "Lanczos basis vectors held at once (one weight-sized vector each); a full "
                                         "basis thick-restarts. Default: the whole run's when it fits the basis "
                                         "budget, else max(20, 2k+10).", kind="int", bounds=(4, None), numbers=False)
    basis: str = option("auto", "Where the Lanczos/Hutch++/XTrace vectors live: memory, host (CPU memory for a GPU "
                                "run), or disk (a temporary file, bounded RSS); auto: memory when they fit the "
                                "budget, else disk.", choices=BASIS_PLACES, numbers=False)
    reorth: str = option("auto", "Lanczos (eigenvalues, density): reorthogonalise against a stored basis (full), or "
                                 "run the two-vector recurrence and merge ghost copies (none: Cullum & Willoughby; "
                                 "Papyan 2020 for the density); auto: full when the basis fits the budget in memory.",
                         choices=REORTH, numbers=False)
    basis_memory: float | None = option(None, "GB the basis may take in memory (default: what the process already "
                                              "holds for the model and its graph, at most half the free memory).",
                                        kind="float?", bounds="positive", numbers=False)
    weights_copy: str = option("auto", "Where fd products keep the saved copy of the weights they restore from: memory, "
                                       "or disk (a temporary file read back three times a product: one weight-sized "
                                       "vector less in memory); auto: disk when the plan does not fit otherwise — then "
                                       "also the basis-free Lanczos's q vector, if that is what fits.",
                               choices=("auto", "memory", "disk"), numbers=False)
    basis_dir: str | None = option(None, "Directory of a disk basis's temporary file (default: the system's).",
                                   kind="str", numbers=False)
    tol: float = option(1e-3, "Relative accuracy to stop at (see --stop).", bounds="positive")
    stop: str = option("residual", "Lanczos with a basis stops when the residual r = ‖Hv−λv‖ is ≤ tol·|λ| "
                                   "(residual), or when the Kato–Temple bound min(r, r²/gap) is (eigenvalue: fewer "
                                   "HVPs, but the Ritz gap can overstate the true gap early on, and then the bound "
                                   "fails). Power iteration and basis-free Lanczos always use the residual.",
                       choices=("residual", "eigenvalue"))
    trace_samples: int = option(30, "HVPs for the trace (Hutchinson: one per sample).", bounds=(1, None))
    trace_method: str = option("hutchinson", "Trace estimator at that budget: Hutchinson, Hutch++ (Meyer et al. "
                                             "2021) or XTrace (Epperly et al. 2024).", choices=TRACE_METHODS)
    eps: float | None = option(None, "Box size of ε-sharpness (Keskar et al. use 1e-3); default: matched to --rho, "
                                     "the box's corner at ℓ2 distance ρ, so the box fits in SAM's ball.",
                               kind="float?", bounds="positive")
    eps_steps: int = option(10, "Projected ascent steps of ε-sharpness.", bounds=(1, None))
    subspace: int = option(10, "Random directions of eps_subspace.", bounds=(1, None))
    rho: float = option(0.05, "Ball radius of SAM/ASAM sharpness.", bounds="positive")
    sam_steps: int = option(1, "Ascent steps of SAM/ASAM sharpness (1 = SAM's own perturbation).", bounds=(1, None))
    sigma: float = option(0.01, "Noise scale of average sharpness.", bounds="positive")
    avg_samples: int = option(16, "Samples of average sharpness.", bounds=(1, None))
    hvp_method: str = option("auto", "Hessian-vector products: exact by double backward (reverse) or "
                                     "forward-over-reverse (forward), or central differences of two gradients (fd: "
                                     "gradient memory, any attention kernel and checkpointing, ~1e-4 relative in "
                                     "float32); auto: reverse when its planned memory fits and is at most 1.5× fd's "
                                     "(float32 weights), else fd.",
                             choices=HVP_METHODS, numbers=False)
    fd_step: float | None = option(None, "Step length ‖εv‖ of fd HVPs in weight space (default 0.0075·(u·‖w‖)^(1/3), "
                                         "u the parameters' unit roundoff; bf16: 0.015·…).", kind="float?", bounds="positive",
                                   numbers=False)
    fd_order: int = option(2, "Order of fd HVPs' central difference: 2 (two gradients a product) or 4 (four: "
                              "(−g₊₂ + 8g₊ − 8g₋ + g₋₂)/12ε, truncation O(ε⁴)).", bounds=(2, 4), numbers=False)
    vector_dtype: str = option("auto", "dtype of the estimators' weight-sized vectors (auto: float32, float64 for "
                                       "float64 models).", choices=("auto", "float32", "float64", "bfloat16"),
                               numbers=False)
    dry_run: bool = option(False, "Print the memory plan (predicted peak, its parts, what auto chooses) and stop.",
                           numbers=False)
    cache_graph: str = option("auto", "Keep the gradient's graph for all batches, so each HVP costs one backward "
                                      "(faster, more memory; a bare flag means on); auto: when one batch's measured "
                                      "graph × batches fits in half the free memory.", choices=CACHE_GRAPH,
                              numbers=False, flag_value="on")
    seed: int = option(0, "Random seed (recorded in outputs).")

    def check(self) -> None:
        if self.fd_order not in (2, 4):
            raise ConfigError("fd_order", f"must be 2 or 4, got {self.fd_order}")
        least = {"hutchpp": 3, "xtrace": 4}.get(self.trace_method, 1)
        if "trace" in self.metrics and self.trace_samples < least:
            raise ConfigError("trace_samples", f"{self.trace_method} needs at least {least} HVPs, got {self.trace_samples}")

    def basis_policy(self) -> dict:
        """The :class:`~landscape.measures.hessian.basis.BasisPolicy` these settings ask for (as a dict)."""
        budget = None if self.basis_memory is None else int(self.basis_memory * 2**30)
        return {"max_basis": self.max_basis, "where": self.basis, "budget": budget, "directory": self.basis_dir,
                "reorth": self.reorth, "stop": self.stop}


@dataclass(frozen=True)
class SurfaceConfig(Config):
    """`landscape surface`: the grid, the directions and their normalisation."""

    x: Any = option("-1:1:21", "MIN:MAX:COUNT along the first direction.", kind="grid")
    y: Any = option(None, "MIN:MAX:COUNT along the second direction (2-D surface).", kind="grid")
    norm: str = option("filter", "Direction normalisation.", choices=NORMS)
    ignore: str = option("biasbn", "biasbn: zero the directions of 1-D parameters (biases, norm scales).",
                         choices=IGNORES)
    orthogonal: bool = option(False, "Make the y direction orthogonal to x (after normalisation).")
    params: str | None = option(None, "Perturb only parameters matching this regex.", kind="str")
    seed: int = option(0, "Random seed of the directions (recorded in the file).")
    # Speed and memory switches. They enter the file's identity only where they change its bytes
    # (see landscape.measures.surface: points_per_pass != 1, GPU-drawn regenerated directions).
    directions: str = option("auto", "Hold the directions in memory, or rebuild them per point so that the only "
                                     "extra copy is the origin (auto: held when they fit in half the free memory).",
                             choices=DIRECTION_MODES, numbers=False)
    points_per_pass: int = option(1, "Evaluate this many grid points per vectorised forward (torch.func.vmap): K "
                                     "copies of the weights; faster for small models on the CPU.", bounds=(1, 4096),
                                  numbers=False)
    save_directions: bool = option(False, "Store the directions in the h5 (directions/x/<name>).", numbers=False)
    dry_run: bool = option(False, "Print the memory plan (predicted peak, its parts, what auto chooses) and stop.",
                           numbers=False)

    def coords(self, axis: str):
        """The coordinates of axis ``x`` or ``y`` as a numpy array (None for an unset y)."""
        import numpy as np

        v = getattr(self, axis)
        if v is None:
            return None
        return parse_grid(v, axis) if isinstance(v, str) else np.asarray(v, dtype=float)


PROBE_METRICS = ("loss", "meter", "lambda_max", "predictors", "forgetting", "task_loss")


@dataclass(frozen=True)
class ProbeConfig(Config):
    """`LandscapeCallback` (and `finetune --probe-every`): what is measured while training runs."""

    probe_every: int | None = option(None, "Measure every N optimizer steps (and at steps 0 and the last); off when "
                                           "not given.", kind="int", bounds=(1, None))
    probe_data: str | None = option(None, "General data the measurements use, any data format (default: the "
                                          "embedded eval data).", kind="path")
    probe_metrics: tuple = option(("loss", "meter"), "Comma list of " + ",".join(PROBE_METRICS) + " (meter: the "
                                  "forgetting meter — ‖Δw‖, gᵀΔw with g the general gradient at step 0, and "
                                  "KL(base ‖ now) both ways — one forward a probe batch; predictors: also κ, F̂ and "
                                  "the measured general-loss rise against step 0, an HVP and more; lambda_max: "
                                  "Lanczos, the most expensive).", choices=PROBE_METRICS)
    probe_suites: tuple = option((), "Suite file or directory for the forgetting metric (repeatable; default the "
                                     "embedded suites).", flag="probe-suite")
    probe_suite_items: int | None = option(None, "Items of each suite the forgetting metric scores (the first N; "
                                                 "default all): cheaper probes, noisier forgetting.", kind="int",
                                           bounds=(1, None))
    probe_task_data: str | None = option(None, "Held-out task data for the task_loss metric (how much the run has "
                                               "learned: with forgetting, a point of the trade-off frontier).",
                                         kind="path")
    probe_batch_size: int = option(8, "Sequences per probe batch.", bounds=(1, None))
    probe_num_batches: int = option(1, "Probe batches (the first N of the data).", bounds=(1, None))
    probe_max_length: int | None = option(None, "Tokens per probe sequence (default: min(128, positions)).",
                                          kind="int", bounds=(2, None))
    probe_max_iter: int = option(20, "Lanczos steps per λ_max, the bound on its cost (HVPs: these, plus three "
                                     "that measure the products' noise when no basis is kept).", bounds=(1, None))
    probe_tol: float = option(1e-3, "Relative residual that stops λ_max's Lanczos early.", bounds="positive")
    probe_hvp_method: str = option("auto", "HVPs of λ_max and κ: auto (exact when it fits, fd under gradient "
                                           "checkpointing), reverse, forward or fd.", choices=HVP_METHODS,
                                   numbers=False)

    def check(self) -> None:
        if "task_loss" in self.probe_metrics and self.probe_task_data is None:
            raise ConfigError("probe_task_data", "is needed by the task_loss metric (held-out task records)")


@dataclass(frozen=True)
class FinetuneConfig(Config):
    """`landscape finetune`: everything that determines a run (hashed: a resume under another
    config is refused)."""

    optimizer: str = option("adamw", "Base AdamW, or SAM/ASAM around it.", choices=OPTIMIZERS)
    lr: float = option(1e-4, "Peak learning rate (warm-up, cosine to 10%).", bounds="positive")
    rho: float = option(0.05, "SAM/ASAM radius ρ (ASAM radii are larger: ~0.5-2 in Kwon et al.).", bounds="positive")
    eta: float = option(0.0, "ASAM: T = |w| + η.", bounds=(0, None))
    epochs: float = option(1.0, "Passes over the training data (unless max_steps is given).", bounds="positive")
    max_steps: int | None = option(None, "Optimizer steps (overrides epochs).", kind="int", bounds=(1, None))
    batch_size: int = option(8, "Sequences per micro-batch.", bounds=(1, None))
    grad_accum: int = option(1, "Micro-batches per optimizer step.", bounds=(1, None))
    max_length: int | None = option(None, "Tokens per sequence (default: min(128, positions)).", kind="int", bounds=(2, None))
    weight_decay: float = option(0.0, "AdamW weight decay (base step only).", bounds=(0, None))
    warmup: int = option(0, "Linear warm-up steps.", bounds=(0, None))
    grad_clip: float | None = option(1.0, "Max gradient norm (0 or None: off).", kind="float?", bounds=(0, None))
    bf16: bool = option(False, "Autocast forward passes to bfloat16.")
    lora: int | None = option(None, "Train a LoRA adapter of this rank instead of every weight (peft; the output "
                                    "is a PEFT adapter directory over the base).", kind="int", bounds=(1, None))
    lora_alpha: float | None = option(None, "LoRA scaling α (the update is α/r·BA; default 2r).", kind="float?",
                                      bounds="positive")
    lora_targets: str = option("all-linear", "Comma list of module names LoRA adapts (e.g. q_proj,v_proj), or "
                                             "all-linear (every linear layer but the output head).")
    seed: int = option(0, "Seed of the batch order and the train/eval split.")
    data_split: str | None = option(None, "The split of a DatasetDict directory given as the training data.",
                                    kind="str")
    eval_split: str | None = option(None, "The split of a DatasetDict directory given as eval_data.", kind="str")
    eval_data: str | None = option(None, "Held-out records, any data format (default: eval_fraction of the data, "
                                         "split by seed).",
                                   kind="path", numbers=False)
    eval_fraction: float = option(0.1, "Share of the data held out for evaluation when no eval_data.", bounds=(0, None),
                                  numbers=False)
    eval_every: int | None = option(None, "Evaluate every N steps (always at the end).", kind="int", bounds=(1, None),
                                    numbers=False)
    save_every: int = option(100, "Save the resumable state every N steps.", bounds=(1, None), numbers=False)
    resume: bool = option(False, "Continue the interrupted run kept in OUT.partial.", numbers=False)
    overwrite: bool = option(False, "Replace OUT if it exists.", numbers=False)
    dry_run: bool = option(False, "Print the memory plan (predicted peak, its parts, what auto chooses) and stop.",
                           numbers=False)

    def check(self) -> None:
        if not self.eval_fraction < 1:
            raise ConfigError("eval_fraction", f"must be in [0, 1), got {self.eval_fraction}")
        if self.lora is None and self.lora_alpha is not None:
            raise ConfigError("lora_alpha", "is a LoRA setting: give the rank (lora) too")
        if not [t for t in self.lora_targets.split(",") if t.strip()]:
            raise ConfigError("lora_targets", "names no module")


@dataclass(frozen=True)
class ForgettingConfig(Config):
    """`landscape forgetting`: which suites, and the optional lm-evaluation-harness tasks."""

    suites: tuple = option((), "Suite jsonl file or directory of them (repeatable). Default: the embedded "
                               "data/suites.", flag="suite")
    categories: str | None = option(None, "JSON {category: [suite, ...]} (default: categories.json beside the "
                                          "suites).", kind="path")
    batch_size: int = option(32, "Sequences per scoring batch (changes float rounding only).", bounds=(1, None), numbers=False)
    lm_eval_tasks: tuple = option((), "Also score this lm-evaluation-harness task (repeatable; extra [lmeval]).",
                                  flag="lm-eval-task")
    lm_eval_include: str | None = option(None, "Directory of your own lm-eval task YAMLs.", kind="path")
    lm_eval_limit: int | None = option(None, "Score only the first N documents of each task.", kind="int", bounds=(1, None))


@dataclass(frozen=True)
class PredictConfig(Config):
    """`landscape predict`: what forgetting the general loss predicts for a (base, tuned) pair.

    Everything is measured on the general data (``DataConfig``), at the base weights, the tuned
    weights and along the line between them (Mirzadeh et al. 2020's second-order view of forgetting).
    """

    line: Any = option("0:1:11", "MIN:MAX:COUNT of t on the line w_base + t·Δw (t = 0 is the base, 1 the tuned "
                                 "checkpoint; both must be on the grid).", kind="grid")
    lambda_max: bool = option(True, "λ_max of the general Hessian at the base (Lanczos, once per base) for the bound "
                                    "gᵀΔw + ½λ_max‖Δw‖².", flag="lambda-max/--no-lambda-max")
    at_tuned: bool = option(True, "Also the curvature of the general loss at the tuned weights along Δw.",
                            flag="at-tuned/--no-at-tuned")
    params: str | None = option(None, "Only parameters whose name matches this regex (Δw is zero elsewhere).",
                                kind="str")
    kl_data: str | None = option(None, "Also the KL predictors on this data — the fine-tune's own task, where Shenfeld et "
                                       "al. 2025 measured it (kl_base_tuned_task, kl_tuned_base_task); same batch "
                                       "size and length as the general data.", kind="path")
    max_iter: int = option(100, "Lanczos steps for λ_max.", bounds=(1, None))
    tol: float = option(1e-3, "Relative residual that stops λ_max's Lanczos.", bounds="positive")
    hvp_method: str = option("auto", "Hessian-vector products (κ, F̂, λ_max): exact (reverse, forward) or finite "
                                     "differences (fd); auto: exact when its planned memory fits, else fd.",
                             choices=HVP_METHODS, numbers=False)
    seed: int = option(0, "Random seed of λ_max's start vector (recorded in outputs).")
    dry_run: bool = option(False, "Print the memory plan (predicted peak, its parts, what auto chooses) and stop.",
                           numbers=False)

    def check(self) -> None:
        import numpy as np

        t = self.coords()
        if not (np.isclose(t, 0.0).any() and np.isclose(t, 1.0).any()):
            raise ConfigError("line", f"{self.line!r} must contain t = 0 and t = 1 (e.g. 0:1:11 or -0.5:1.5:9)")

    def coords(self):
        """The t coordinates of the line (a numpy array)."""
        import numpy as np

        return parse_grid(self.line, "line") if isinstance(self.line, str) else np.asarray(self.line, dtype=float)


def flag_for(field_name: str) -> str:
    """The CLI flag of a config field: ``points_per_pass`` → ``--points-per-pass`` (or the field's own
    ``flag``, e.g. ``suites`` → ``--suite``)."""
    for cls in Config.__subclasses__():
        for f in fields(cls):
            if f.name == field_name and f.metadata.get("flag"):
                return "--" + f.metadata["flag"]
    return "--" + field_name.replace("_", "-")
