"""Checkpoints (core): Orbax saves of the train state, restore onto any mesh, reading and listing.

`manager.py` saves and restores (async, commit markers, damaged steps set aside, failed
saves in one line), `lease.py` is the writer lease that makes removing dead partial saves
safe, `storage.py` words free space and write failures, `params.py` reads one step's
parameters array by array (readers fall back past a damaged step too), `listing.py`
describes a workdir's steps, and `__main__.py` is the command
`python -m train.checkpoints --workdir=DIR`.

May import: train's core (config, distributed), data (the workdir's tokenizer), jax, orbax.
"""
