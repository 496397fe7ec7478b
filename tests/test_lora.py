"""LoRA (model/lora.py, train/trainable.py): adapters beside their base weights and sharded by the same
rules, a fresh adapter changes nothing, only adapters train and only they carry optimizer state, and
sharding, scan and remat give the same steps as one unrolled device."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from model import LlamaLM
from train.config import LoraConfig, OptimConfig
from train.mesh import make_mesh
from train.optimizer import make_optimizer
from train.state import param_shardings, state_layout
from train.trainable import join, split_trainable

from tests.train_fixtures import tiny_batch, tiny_config, train_decoder_steps

ALL = ("q", "k", "v", "o", "gate", "up", "down")


def lora_config(rank=4, targets=ALL, dropout=0.0, **model):
    config = tiny_config(steps=10)
    config.model = dataclasses.replace(config.model, arch="llama", num_kv_heads=2, layer_norm_eps=1e-5, init_std=0.1,
                                       lora=LoraConfig(rank=rank, alpha=8.0, dropout=dropout, targets=targets), **model)
    config.optim = OptimConfig(learning_rate=1e-2, schedule="constant", warmup_steps=0, weight_decay=0.0)
    return config


def _flat(tree):
    return {jax.tree_util.keystr(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def test_adapters_sit_beside_their_base_weights_and_shard_by_its_rules():
    config = lora_config(targets=("q", "v", "o", "down"))
    _, abstract, shardings = param_shardings(config.model, make_mesh((2, 2, 2)))
    shapes = {name: x.shape for name, x in _flat(abstract).items()}
    specs = {name: tuple(s.spec) + (None,) * (len(shapes[name]) - len(s.spec)) for name, s in _flat(shardings).items()}
    assert len([name for name in specs if "'lora'" in name]) == 8  # a and b of the four targets; none on k, gate, up
    for owner, in_axes in (("['attention']['query']", 1), ("['attention']['value']", 1),
                           ("['attention']['out']", 2), ("['mlp']['down']", 1)):
        kernel, a, b = (f"['layers']{owner}{leaf}" for leaf in ("['kernel']", "['lora']['a']", "['lora']['b']"))
        # After the layers axis: A [in..., rank] laid out as the kernel's inputs, B [rank, out...] as its outputs.
        assert shapes[a] == shapes[kernel][:1 + in_axes] + (4,) and shapes[b] == (2, 4) + shapes[kernel][1 + in_axes:]
        assert specs[a] == specs[kernel][:1 + in_axes] + (None,)
        assert specs[b] == specs[kernel][:1] + (None,) + specs[kernel][1 + in_axes:]
    assert specs["['layers']['attention']['query']['lora']['a']"] == (None, "fsdp", None)  # embed over fsdp
    assert specs["['layers']['attention']['value']['lora']['b']"] == (None, None, "tensor", None)  # kv heads over tensor


def _logits(model):
    """The model's logits on a fixed batch, compiled (eager calls on 8 simulated devices crawl)."""
    graphdef, state = nnx.split(model)
    batch = tiny_batch(rows=2)
    forward = jax.jit(lambda s, *x: nnx.merge(graphdef, s)(*x))
    return np.asarray(forward(state, *(jnp.asarray(batch[k]) for k in ("tokens", "segment_ids", "positions"))))


def test_fresh_adapters_change_nothing_and_the_decoding_layout_merges_trained_ones():
    config = lora_config()
    base = LlamaLM(dataclasses.replace(config.model, lora=LoraConfig()), rngs=nnx.Rngs(0))
    model = LlamaLM(config.model, rngs=nnx.Rngs(1))
    adapters, _ = split_trainable(nnx.to_pure_dict(nnx.state(model)))
    base_params = nnx.to_pure_dict(nnx.state(base))
    nnx.update(model, join(adapters, base_params))  # the base's weights, fresh adapters
    np.testing.assert_array_equal(_logits(model), _logits(base))  # B starts at zero
    nnx.update(model, join(jax.tree.map(lambda x: x + 0.05, adapters), base_params))  # as if trained: B not zero
    logits = _logits(model)
    assert np.abs(logits - _logits(base)).max() > 1e-2
    model.to_decode_layout()  # decoding reads merged kernels: W + alpha/rank * A B
    np.testing.assert_allclose(_logits(model), logits, atol=2e-5)


def _bytes(tree):
    return sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(tree))


def test_only_adapters_train_and_only_they_carry_optimizer_state():
    config = lora_config()
    layout, before, after, losses = train_decoder_steps(config, (1, 1, 1), steps=5, devices=jax.devices()[:1])
    adapters, base = split_trainable(after["params"])
    _, base_before = split_trainable(before)
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(base_before), jax.tree.leaves(base)):
        np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))  # frozen, bit for bit
    assert float(np.abs(adapters["layers"]["attention"]["query"]["lora"]["b"]).max()) > 0  # B left zero
    assert losses[-1] < losses[0]
    # AdamW's two moments exist for the adapters alone: the base has no optimizer state at all.
    moments = [x for x in jax.tree.leaves(layout.abstract["opt_state"]) if x.ndim]
    assert sorted(x.shape for x in moments) == sorted(2 * [x.shape for x in jax.tree.leaves(adapters)])
    full = dataclasses.replace(config.model, lora=LoraConfig())
    tx, _ = make_optimizer(config.optim, 10)
    full_layout = state_layout(full, tx, make_mesh((1, 1, 1), jax.devices()[:1]))
    lora_bytes, full_bytes = _bytes(layout.abstract["opt_state"]), _bytes(full_layout.abstract["opt_state"])
    print(f"optimizer state: LoRA {lora_bytes} bytes vs full fine-tuning {full_bytes} bytes "
          f"({lora_bytes / full_bytes:.1%}); trainable {layout.trainable_count} of {layout.param_count}")
    assert lora_bytes == 2 * _bytes(adapters) + 8 and lora_bytes < 0.5 * full_bytes  # + step counts


def test_lora_steps_equal_across_meshes_scan_and_remat():
    """Adapter dropout on, so its keys are checked too: the same losses sharded 8 ways, unrolled, rematerialized."""
    config = lora_config(dropout=0.1)
    reference = train_decoder_steps(config, (1, 1, 1), devices=jax.devices()[:1])[3]
    np.testing.assert_allclose(train_decoder_steps(config, (2, 2, 2))[3], reference, rtol=2e-5)
    unrolled = dataclasses.replace(config, model=dataclasses.replace(config.model, scan_layers=False, remat="dots"))
    np.testing.assert_allclose(train_decoder_steps(unrolled, (1, 1, 1), devices=jax.devices()[:1])[3], reference, rtol=2e-5)
    no_dropout = lora_config(dropout=0.0)
    assert train_decoder_steps(no_dropout, (1, 1, 1), steps=2, devices=jax.devices()[:1])[3][1] != pytest.approx(reference[1], rel=1e-6)
