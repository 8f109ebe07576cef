"""landscape: loss-landscape flatness, curvature, SAM fine-tuning and forgetting for HF causal LMs.

``import landscape as ls``: the public API is the names in ``__all__`` — functions from
:mod:`landscape.api`, the configs, the result containers, the SAM optimizer and Trainer mixin, and
the Trainer callback. Names are resolved on first use, so ``import landscape`` stays cheap (the CLI
imports it) and ``transformers`` is imported only by what needs it. The ``landscape`` CLI is a thin
layer over the same library. Manual: docs/ (``make docs``).
"""

__version__ = "0.1.0"

from landscape.foundation.errors import UserError  # noqa: E402

_EXPORTS = {
    # functions
    "load": "landscape.api", "batches": "landscape.api", "loss": "landscape.api", "sharpness": "landscape.api",
    "surface": "landscape.api", "forgetting": "landscape.api", "predict": "landscape.api",
    "correlate": "landscape.api", "finetune": "landscape.api",
    # configs
    "LoadConfig": "landscape.foundation.configs", "DataConfig": "landscape.foundation.configs",
    "SharpnessConfig": "landscape.foundation.configs", "SurfaceConfig": "landscape.foundation.configs",
    "ForgettingConfig": "landscape.foundation.configs", "PredictConfig": "landscape.foundation.configs",
    "FinetuneConfig": "landscape.foundation.configs", "ProbeConfig": "landscape.foundation.configs",
    # what they return
    "Checkpoint": "landscape.foundation.checkpoint", "Batches": "landscape.foundation.data",
    "LossResult": "landscape.foundation.loss",
    # training
    "SAM": "landscape.training.sam", "SAMMixin": "landscape.training.sam", "SAMTrainer": "landscape.training.sam",
    "StochasticAdamW": "landscape.training.rounding", "LandscapeCallback": "landscape.training.callback",
}

__all__ = ["UserError", *_EXPORTS]


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'landscape' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
