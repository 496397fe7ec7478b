"""Logical axis names: annotating parameters at creation and constraining activations.

Parameters and activations use disjoint names (see `model/__init__.py`) because the
rules table is a plain lookup: one mesh axis may not appear twice in a spec.
"""

from __future__ import annotations

import jax
from flax import nnx
from flax.core import spmd as core_spmd
from flax.linen import spmd as linen_spmd

LogicalNames = tuple[str | None, ...]


def param_init(init: nnx.Initializer, names: LogicalNames) -> nnx.Initializer:
    """Wraps an initializer so its parameter carries logical names, sharded at birth on a mesh.

    Flax 0.12 raises when an annotated variable is created with eager sharding on and no
    mesh, so without a mesh the names are only recorded and nothing is placed.
    """

    def annotated_init(*args):
        eager = nnx.using_eager_sharding() and mesh_is_set()
        if eager:
            check_rules_cover(names)
        return nnx.with_partitioning(init, names, eager_sharding=eager)(*args)

    return annotated_init


def named_param(value: jax.Array, names: LogicalNames) -> nnx.Param:
    """A parameter holding `value` under logical names, placed like `param_init`'s (only with a mesh)."""
    eager = nnx.using_eager_sharding() and mesh_is_set()
    if eager:
        check_rules_cover(names)
    return nnx.Param(value, out_sharding=names, eager_sharding=eager)


def mesh_is_set() -> bool:
    """Whether a mesh is active (`jax.set_mesh`), i.e. whether sharding can happen."""
    return not jax.sharding.get_abstract_mesh().empty


def check_rules_cover(names: LogicalNames) -> None:
    """Fails, naming them, when parameters are sharded at birth without rules for their names.

    Flax would pass an unknown logical name through as a mesh axis name and fail deep in
    JAX; this says which rule to add instead.
    """
    if not (mesh_is_set() and nnx.using_eager_sharding()):
        return
    ruled = {name for name, _ in core_spmd.get_logical_axis_rules()}
    mesh_axes = set(jax.sharding.get_abstract_mesh().axis_names)
    missing = [name for name in names if name is not None and name not in ruled | mesh_axes]
    if missing:
        raise ValueError(
            f"logical axis names {missing} have no rule in the active nnx.logical_axis_rules "
            f"(rules name {sorted(ruled)}; mesh axes {sorted(mesh_axes)}); "
            "add a (name, mesh axis or None) rule for each")


def constrain(x: jax.Array, names: LogicalNames) -> jax.Array:
    """Pins an activation's layout by logical names; a no-op without rules or a mesh."""
    return linen_spmd.with_logical_constraint(x, names)


def logical_spec(names: LogicalNames) -> jax.sharding.PartitionSpec | None:
    """The mesh axes the active rules give `names`, or None when no mesh and rules are active."""
    if not (mesh_is_set() and core_spmd.get_logical_axis_rules()):
        return None
    return linen_spmd.logical_to_mesh_axes(names)


def mesh_axes_size(entry: str | tuple[str, ...] | None) -> int:
    """How many ways one PartitionSpec entry splits a dimension on the active mesh."""
    if entry is None:
        return 1
    shape = jax.sharding.get_abstract_mesh().shape
    names = (entry,) if isinstance(entry, str) else entry
    size = 1
    for name in names:
        size *= shape[name]
    return size
