"""N copies of a layer held as one module with stacked parameters, applied by a scan.

Stacking (leading 'layers' axis) plus `nnx.scan` traces and compiles the layer once,
so compile time stays flat in depth; the layer itself is any module, so the encoder
and the decoder share this.
"""

from __future__ import annotations

from typing import Callable, TypeVar

import jax
import jax.numpy as jnp
from flax import nnx

from model.sharding import check_rules_cover

Layer = TypeVar("Layer", bound=nnx.Module)

# Names the stacked axis in every parameter's logical sharding metadata.
LAYERS_AXIS = {nnx.PARTITION_NAME: "layers"}


def create_stack(make_layer: Callable[[nnx.Rngs], Layer], num_layers: int, rngs: nnx.Rngs) -> Layer:
    """Builds `num_layers` independently initialized layers as one module of stacked params."""
    check_rules_cover(("layers",))

    @nnx.split_rngs(splits=num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata=LAYERS_AXIS)
    def create(rngs: nnx.Rngs) -> Layer:
        return make_layer(rngs)

    return create(rngs)


# Remat policies by config name; True/False (older configs) mean full/none.
REMAT_POLICIES = ("none", "full", "dots")


def remat_policy(name: str | bool) -> tuple[bool, Callable | None]:
    """(recompute?, jax checkpoint policy) for a remat name; `dots` saves matmul outputs."""
    name = {True: "full", False: "none"}.get(name, name) if isinstance(name, bool) else name
    if name not in REMAT_POLICIES:
        raise ValueError(f"model.remat={name!r}; accepted: {', '.join(REMAT_POLICIES)}")
    return name != "none", jax.checkpoint_policies.dots_saveable if name == "dots" else None


def scan_stack(stack: Layer, x: jax.Array, layer_keys: jax.Array | None,
               apply_layer: Callable[[Layer, jax.Array, jax.Array | None], jax.Array], *,
               remat: str | bool = "none", scan: bool = True) -> jax.Array:
    """Runs x through the stacked layers in order; `layer_keys` [N] (or None) is scanned too.

    `remat` picks what each layer recomputes in the backward pass (see `remat_policy`).
    With `scan=False` the layers are unrolled (one traced copy per layer, same parameters),
    which compiles slower but lets XLA fuse across layer boundaries.
    """

    def step(x: jax.Array, layer: Layer, key: jax.Array | None) -> jax.Array:
        return apply_layer(layer, x, key)

    recompute, policy = remat_policy(remat)
    if recompute:  # inside a scan, XLA cannot CSE the recompute away
        step = nnx.remat(step, prevent_cse=not scan, policy=policy)
    if not scan:
        graphdef, stacked = nnx.split(stack)
        for i, layer_state in enumerate(unstack_layers(stacked)):
            x = step(x, nnx.merge(graphdef, layer_state), None if layer_keys is None else layer_keys[i])
        return x
    key_axis = None if layer_keys is None else 0
    scan_fn = nnx.scan(step, in_axes=(nnx.Carry, 0, key_axis), out_axes=nnx.Carry,
                       transform_metadata=LAYERS_AXIS)
    return scan_fn(x, stack, layer_keys)


def unstack_layers(stacked: nnx.State) -> list[nnx.State]:
    """Each layer's slice of stacked parameters, by one split per array.

    The gradient of a split is one concatenate; per-layer indexing would instead give each
    layer's gradient as a zero-padded copy of the whole stack, summed layer by layer.
    """
    leaves, treedef = jax.tree.flatten(stacked)
    num_layers = leaves[0].shape[0]
    parts = [[jnp.squeeze(p, 0) for p in jnp.split(leaf, num_layers)] for leaf in leaves]
    return [jax.tree.unflatten(treedef, [leaf_parts[i] for leaf_parts in parts]) for i in range(num_layers)]
