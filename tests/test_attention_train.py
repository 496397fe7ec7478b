"""The attention switch in training: Splash (interpreted) trains like the XLA path on a sharded
mesh under scan and remat; a sequence axis splits the length and gives the one-device losses;
choices that cannot run get one line; bf16 attention's CPU form trains alike sharded. (Bidirectional
Splash per shard: test_attention_kernels.py.)"""

import dataclasses
import functools

import jax
import numpy as np
import pytest

from train.config import Config, ConfigError, DataConfig, MeshConfig, config_from_json, validate
from train.mesh import attention_kernel, make_mesh, to_global
from train.optimizer import make_optimizer
from train.state import init_state, state_layout
from train.steps import compile_train_step

from tests.train_fixtures import packed_batch, tiny_config, tiny_spec


def _config(arch: str, impl: str, seq_len: int, remat: str = "none") -> Config:
    config = tiny_config(steps=10)
    llama = dict(num_kv_heads=2, layer_norm_eps=1e-5, init_std=0.1) if arch == "llama" else {}
    config.model = dataclasses.replace(config.model, arch=arch, max_len=seq_len, attention_impl=impl,
                                       remat=remat, **llama)
    config.data = DataConfig(seq_len=seq_len)
    validate(config)
    return config


@functools.lru_cache(maxsize=None)  # tests share runs: each costs a compile
def _run(arch: str, impl: str, seq_len: int, remat: str, mesh_shape: tuple[int, ...]) -> tuple[float, ...]:
    devices = jax.devices()[:int(np.prod(mesh_shape))]
    return tuple(_losses(_config(arch, impl, seq_len, remat), mesh_shape, devices=devices))


def _losses(config: Config, mesh_shape, steps: int = 3, devices=None) -> list[float]:
    mesh = make_mesh(mesh_shape, devices)
    attention_kernel(config.model, mesh, config.data.seq_len)  # the trainer's checks pass
    tx, schedule = make_optimizer(config.optim, config.train.steps)
    layout = state_layout(config.model, tx, mesh)
    state = init_state(config.model, tx, layout, mesh, seed=0)
    spec = tiny_spec(0.3) if config.model.arch == "bert" else None
    step = compile_train_step(layout, mesh, tx=tx, schedule=schedule, spec=spec, seed=0)
    batch = to_global(packed_batch(8, config.data.seq_len, seed=2), mesh)
    losses = []
    for _ in range(steps):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    return losses


def test_splash_train_step_equals_xla_on_a_2_2_2_mesh():
    """Causal, grouped-query layers under nnx.scan and remat=dots, Splash per shard of (2,2,2)."""
    splash = _run("llama", "splash", 256, "dots", (2, 2, 2))
    xla = _run("llama", "xla", 256, "none", (1, 1, 1))
    np.testing.assert_allclose(splash, xla, rtol=2e-5)
    assert xla[-1] < xla[0]


@pytest.mark.parametrize("impl,shape", [("xla", (2, 1, 1, 4)), ("splash", (1, 2, 2, 2))])
def test_sequence_axis_gives_the_one_device_losses(impl, shape):
    """Activations split along the length over `sequence`; attention gathers keys and values."""
    np.testing.assert_allclose(_run("llama", impl, 256, "none", shape),
                               _run("llama", "xla", 256, "none", (1, 1, 1)), rtol=2e-5)


def test_three_entry_mesh_shapes_still_load_as_sequence_one():
    config = tiny_config()
    saved = config.to_json()
    assert '"shape": [\n      1,\n      1,\n      1\n    ]' in saved  # what workdirs hold today
    loaded = config_from_json(saved)
    validate(loaded)
    assert loaded.mesh.sizes() == {"data": 1, "fsdp": 1, "tensor": 1, "sequence": 1, "dcn": 1}
    assert dict(make_mesh((2, 2, 2)).shape) == {"data": 2, "fsdp": 2, "tensor": 2, "sequence": 1, "dcn": 1}
    assert dict(make_mesh((1, 2, 1, -1)).shape) == {"data": 1, "fsdp": 2, "tensor": 1, "sequence": 4, "dcn": 1}


@pytest.mark.parametrize("change,words", [
    (dict(mesh=(1, 1, 1, 1, 1, 1)), "mesh.shape=(1, 1, 1, 1, 1, 1); accepted: 3 to 5 sizes for (data, fsdp, tensor, sequence, dcn)"),
    (dict(mesh=(1, 1, 1, 3)), "data.seq_len=128 does not divide by the mesh's sequence=3"),
    (dict(impl="splash", attention_dropout=0.1), "model.attention_impl=splash has no attention dropout"),
    (dict(impl="cudnn"), "model.attention_impl=cudnn: cuDNN attention computes in bfloat16 or float16 only, not float32"),
    (dict(impl="cudnn", dtype="bfloat16"), "model.attention_impl=cudnn needs a GPU, this job runs on cpu"),
    (dict(impl="splash", mesh=(1, 1, 1, 2)), "Splash attention needs a multiple of 128"),
])
def test_attention_choices_that_cannot_run_get_one_line(change, words):
    config = _config("llama", "xla", 128)
    config.model = dataclasses.replace(config.model, attention_impl=change.get("impl", "xla"),
                                       attention_dropout=change.get("attention_dropout", 0.0),
                                       dtype=change.get("dtype", "float32"))
    config.mesh = MeshConfig(shape=change.get("mesh", (1, 1, 1)))
    with pytest.raises(ConfigError) as error:
        validate(config)
        shape = config.mesh.shape
        attention_kernel(config.model, make_mesh(shape, jax.devices()[:int(np.prod(shape))]), config.data.seq_len)
    assert words in str(error.value) and "\n" not in str(error.value), str(error.value)


def test_bf16_attention_on_a_sharded_mesh_gives_the_one_device_losses():
    """bf16 on a CPU takes precision.cpu_bf16_attention: under fsdp x tensor x data, scan and remat=dots too."""
    losses = {}
    for shape, remat in (((1, 1, 1), "none"), ((2, 2, 2), "dots")):
        config = _config("llama", "xla", 256, remat)
        config.model = dataclasses.replace(config.model, dtype="bfloat16")
        losses[shape] = _losses(config, shape, devices=jax.devices()[:int(np.prod(shape))])
    np.testing.assert_allclose(losses[(2, 2, 2)], losses[(1, 1, 1)], rtol=1e-4)
    assert losses[(1, 1, 1)][-1] < losses[(1, 1, 1)][0]
