"""The core of training: config, mesh, state, optimizer, masking, losses, steps, loop, checkpoints, metrics.

Owns the training command (`python -m train.main`) and what every other capability builds
on. Each further capability is a sub-package with its library and its commands together:
`generate/` (decoding, beam search, fill-mask), `interop/` (Hugging Face and jax.export
writers, import), `finetune/` (classification heads, supervised fine-tuning of decoders),
`evaluate/` (checkpoint evaluation). Which parameters train (all, or LoRA adapters) is core:
`trainable.py`.
`checkpoints/` is core: saving, restoring, reading one step's parameters, listing.
Multi-process jobs: `distributed.py` joins them, `peers.py` stops them all when one dies,
`stderr_relay.py` turns JAX's abort dump into one line.

May import: model, data, jax, optax, orbax. The core never imports a capability package.
"""
