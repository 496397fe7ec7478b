"""The device mesh and the one table that maps logical axis names onto its axes.

Changing parallelism means changing the mesh shape or this table, never the model.
The axes (`MESH_AXES`, in train/config.py: the order `mesh.shape` lists them):

    data      rows of the batch (parameters replicated)
    fsdp      rows of the batch, and parameters and optimizer state split along `embed`
    tensor    attention heads, MLP units and the vocabulary (Megatron-style)
    sequence  the length of every activation (context parallelism): attention gathers
              keys and values whole over it, queries stay split (model/attention.py)

To add an axis: append it to MESH_AXES (older shapes then give it size 1), name what it
splits in LOGICAL_RULES, and say here what it is for.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from model.attention import attention_backend
from model.config import ModelConfig, cudnn_misfit
from model.splash import LANES as SPLASH_BLOCK
from train.config import MESH_AXES, ConfigError

BATCH_AXES = ("data", "fsdp")

# Parameters shard their `embed` dimension over fsdp and their wide dimensions over
# tensor; activations shard the batch over data and fsdp and the length over sequence
# (keys and values, `act_kv_length`, stay whole along it). Every logical name the model
# uses must appear here: flax passes an unknown name through as a mesh axis name.
LOGICAL_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    # parameters
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("transform", "tensor"),
    ("layers", None),
    ("norm", None),
    ("classes", None),  # a classifier's label axis: a handful of entries
    # activations
    ("act_batch", BATCH_AXES),
    ("act_length", "sequence"),
    ("act_kv_length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_head_dim", None),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
)


def make_mesh(shape: Sequence[int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Builds the mesh over MESH_AXES (sizes a shorter shape leaves out are 1); one -1 entry takes the rest."""
    devices = list(jax.devices() if devices is None else devices)
    given = len(shape)  # messages show the sizes as the user wrote them
    shape = list(shape) + [1] * (len(MESH_AXES) - len(shape))
    if shape.count(-1) == 1:
        known = math.prod(s for s in shape if s != -1)
        if len(devices) % known:
            raise ConfigError(
                f"mesh.shape={tuple(shape[:given])}: {len(devices)} devices do not divide by the fixed axes' product {known}")
        shape[shape.index(-1)] = len(devices) // known
    if math.prod(shape) < len(devices) and jax.process_count() == 1:
        devices = devices[:math.prod(shape)]  # e.g. the default 1-device mesh on an 8-chip host
    if math.prod(shape) != len(devices):
        raise ConfigError(
            f"mesh.shape={tuple(shape[:given])} needs {math.prod(shape)} devices but this job has {len(devices)}; "
            "accepted: sizes whose product is the device count (one may be -1)")
    device_grid = np.asarray(devices).reshape(shape)
    return Mesh(device_grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


@contextlib.contextmanager
def sharding_context(mesh: Mesh) -> Iterator[None]:
    """Activates the mesh and the logical rules, for building models and tracing steps."""
    with jax.set_mesh(mesh), nnx.logical_axis_rules(LOGICAL_RULES):
        yield


def batch_shardings(mesh: Mesh, keys: Sequence[str]) -> dict[str, NamedSharding]:
    """The same row sharding for each named array of a batch."""
    return {k: batch_sharding(mesh) for k in keys}


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Rows of a batch split over data and fsdp; the length axis whole."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def check_divisibility(mesh: Mesh, *, batch_size: int, num_heads: int, num_kv_heads: int = 0) -> None:
    """Fails before compiling when the batch or the (query or key/value) heads do not split evenly.

    `num_kv_heads` 0 means as many as `num_heads`; grouped-query key/value heads have their
    own `kv_heads` axis over tensor, so they must divide by it too.
    """
    batch_ways = mesh.shape["data"] * mesh.shape["fsdp"]
    if batch_size % batch_ways:
        raise ConfigError(
            f"train.batch_size={batch_size} does not divide by data*fsdp={batch_ways} of mesh {dict(mesh.shape)}")
    if num_heads % mesh.shape["tensor"]:
        raise ConfigError(
            f"model.num_heads={num_heads} does not divide by tensor={mesh.shape['tensor']} of mesh {dict(mesh.shape)}")
    if num_kv_heads and num_kv_heads % mesh.shape["tensor"]:
        raise ConfigError(
            f"model.num_kv_heads={num_kv_heads} does not divide by tensor={mesh.shape['tensor']} of mesh "
            f"{dict(mesh.shape)}; accepted: a tensor axis that divides the key/value heads")


def attention_kernel(model: ModelConfig, mesh: Mesh, seq_len: int) -> str:
    """The attention kernel this job runs (auto resolved for the mesh's platform).

    Fails before compiling, in one line, where the kernel named outright cannot run here.
    """
    platform, sequence, impl = mesh.devices.flat[0].platform, mesh.shape["sequence"], model.attention_impl
    if impl == "cudnn" and platform != "gpu":
        raise ConfigError(f"model.attention_impl=cudnn needs a GPU, this job runs on {platform}; "
                          "accepted here: auto, xla or splash")
    if impl == "cudnn" and sequence > 1:
        raise ConfigError(f"model.attention_impl=cudnn with mesh sequence={sequence}: "
                          f"{cudnn_misfit(model.dtype, model.resolved_head_dim, True)}; accepted: auto or xla")
    if impl == "splash" and platform == "gpu":
        raise ConfigError("model.attention_impl=splash is TPU's kernel (on a CPU it runs interpreted, for tests); "
                          "accepted on a GPU: auto, cudnn or xla")
    kernel = attention_backend(impl, dtype=model.dtype, dropout_rate=model.attention_dropout,
                               head_dim=model.resolved_head_dim, length_sharded=sequence > 1, platform=platform)
    if kernel == "splash" and sequence > 1 and (seq_len // sequence) % SPLASH_BLOCK:
        raise ConfigError(f"data.seq_len={seq_len} over mesh sequence={sequence} gives {seq_len // sequence} tokens "
                          f"a device; Splash attention needs a multiple of {SPLASH_BLOCK}")
    return kernel


def process_rows(global_batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """This process's contiguous block of a global batch's rows."""
    count, index = jax.process_count(), jax.process_index()
    return {k: np.array_split(v, count)[index] for k, v in global_batch.items()}


def to_global(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles each process's rows into one global array, rows split over data and fsdp."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}
