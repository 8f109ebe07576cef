"""Layer 2, measures: curvature (``hessian``), sharpness, directions and surfaces, forgetting,
lm-evaluation-harness scoring. Imports only ``foundation`` and itself."""
