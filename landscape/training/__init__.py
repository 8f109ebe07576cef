"""Layer 3, training: the SAM/ASAM optimizer, SAM inside any ``transformers.Trainer`` (``SAMMixin``,
``SAMTrainer``), the fine-tuning recipe, and ``LandscapeCallback`` (measurements while a Trainer runs).
Imports ``foundation``; only ``callback`` imports ``measures`` (a fine-tuner needs no curvature code,
a measuring callback does)."""

_EXPORTS = {"SAM": "sam", "Perturbation": "sam", "SAMMixin": "sam", "SAMTrainer": "sam",
            "StochasticAdamW": "rounding", "LandscapeCallback": "callback"}


def __getattr__(name):
    # lazy: `import landscape.training` stays cheap, and SAMTrainer/LandscapeCallback need transformers
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"landscape.training.{_EXPORTS[name]}"), name)
    raise AttributeError(name)


__all__ = list(_EXPORTS)
