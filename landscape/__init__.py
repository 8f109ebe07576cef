"""landscape: loss-landscape flatness, curvature, SAM fine-tuning and forgetting for HF causal LMs.

The library is pure functions over ``(model, batches)``; the ``landscape`` CLI (``landscape.cli``)
is a thin layer over it. See README.md.
"""

__version__ = "0.1.0"

from landscape.foundation.errors import UserError  # noqa: E402,F401
