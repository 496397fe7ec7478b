"""N copies of a layer held as one module with stacked parameters, applied by a scan.

Stacking (leading 'layers' axis) plus `nnx.scan` traces and compiles the layer once,
so compile time stays flat in depth; the layer itself is any module, so the encoder
and the decoder share this.
"""

from __future__ import annotations

from typing import Callable, TypeVar

import jax
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


def scan_stack(stack: Layer, x: jax.Array, layer_keys: jax.Array | None,
               apply_layer: Callable[[Layer, jax.Array, jax.Array | None], jax.Array], *,
               remat: bool = False) -> jax.Array:
    """Runs x through the stacked layers in order; `layer_keys` [N] (or None) is scanned too.

    With `remat`, each layer's activations are recomputed in the backward pass.
    """

    def step(x: jax.Array, layer: Layer, key: jax.Array | None) -> jax.Array:
        return apply_layer(layer, x, key)

    if remat:
        step = nnx.remat(step, prevent_cse=False)  # scan already keeps XLA from CSE-ing
    key_axis = None if layer_keys is None else 0
    scan = nnx.scan(step, in_axes=(nnx.Carry, 0, key_axis), out_axes=nnx.Carry,
                    transform_metadata=LAYERS_AXIS)
    return scan(x, stack, layer_keys)
