"""Layer 1, foundation: errors, configs, io, checkpoint loading, toy models, data, the shared loss,
objectives, parameter vectors, torch.distributed helpers and the results store.

Nothing here imports from ``measures``, ``training`` or ``study`` (tests/test_layers.py checks it).
"""
