"""Layer 3, training: the SAM/ASAM optimizer and the fine-tuning recipe. Imports ``foundation``
(and never ``measures`` or ``study``)."""
