"""Evaluation of saved checkpoints: one, all, or each new one as training writes it.

Library: `evaluator.py`. Command: `python -m train.evaluate` (this package's `__main__.py`).
The held-out metrics themselves are core (`train/heldout.py`): the training loop uses them too.

May import: train's core, model, data.
"""
