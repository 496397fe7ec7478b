"""Pre-flight: compile the train step for a target mesh on simulated CPU devices and report
the per-device memory XLA plans for it, so an OOM shows up before a pod is reserved, and
what the backward pass keeps (the saved activations under the remat policy, attention's
[L, L] arrays apart: train/activations.py).

    python -m train.main --config=configs/bert_base.py --config.mesh.shape=1,64,4 --dry_run

No data is read and nothing is allocated: the state and the batch are abstract. The
memory is XLA:CPU's plan for the same partitioned program; an accelerator's compiler
fuses differently, so treat temporaries as an estimate (parameters, optimizer state and
batch are exact: they follow from the shardings alone).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from train.config import Config, ConfigError


def use_simulated_devices(config: Config) -> int:
    """Points JAX at enough CPU devices for the mesh; call before JAX's backend starts."""
    shape = config.mesh.shape
    if -1 in shape:
        raise ConfigError(f"--dry_run needs every mesh size, got mesh.shape={shape}; e.g. --config.mesh.shape=1,64,4")
    import jax

    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", math.prod(shape))
    return math.prod(shape)


def _bytes_per_device(tree: Any) -> int:
    """Bytes one device holds of a tree of ShapeDtypeStructs carrying shardings."""
    import jax

    return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree))


def memory_report(config: Config, saved: bool = True) -> dict[str, Any]:
    """Compiles the train step for config's mesh on the current devices; bytes per device.

    With `saved`, also what the backward pass keeps (one more trace and compile of the forward).
    """
    import jax
    import jax.numpy as jnp

    from train.masking import MaskingSpec, budget_for_mesh, prediction_budget
    from train.activations import saved_activations
    from train.mesh import attention_kernel, batch_sharding, check_divisibility, make_mesh, sharding_context
    from train.optimizer import make_optimizer
    from train.state import state_layout
    from train.steps import BATCH_KEYS, batch_loss, compile_train_step

    mesh = make_mesh(config.mesh.shape)
    check_divisibility(mesh, batch_size=config.train.batch_size, num_heads=config.model.num_heads,
                       num_kv_heads=config.model.resolved_kv_heads)
    kernel = attention_kernel(config.model, mesh, config.data.seq_len)
    tx, schedule = make_optimizer(config.optim, config.train.steps)
    layout = state_layout(config.model, tx, mesh)
    d, vocab = config.data, config.model.vocab_size
    # Token ids do not change the program, only the sizes do: any valid special ids will do.
    spec = None if config.model.arch != "bert" else MaskingSpec(  # None: next-token loss, as train.loop
        mask_id=4, vocab_size=vocab, special_ids=(0, 1, 2, 3, 4), probability=d.mlm_probability,
        mask_ratio=d.mask_token_ratio, random_ratio=d.random_token_ratio,
        word_start_table=np.ones(vocab, bool) if d.whole_word_masking else None,
        max_predictions=budget_for_mesh(prediction_budget(d.seq_len, d.mlm_probability), dict(mesh.shape)))
    step = compile_train_step(layout, mesh, tx=tx, schedule=schedule, spec=spec, seed=config.train.seed)
    rows = jax.ShapeDtypeStruct((config.train.batch_size, d.seq_len), jnp.int32, sharding=batch_sharding(mesh))
    batch = {key: rows for key in BATCH_KEYS + (("loss_mask",) if d.format == "sft" else ())}
    with sharding_context(mesh):  # the jitted function under the step's context wrapper
        compiled = step.__wrapped__.lower(layout.abstract, batch).compile()
    analysis = compiled.memory_analysis()

    def loss(params, batch):
        return batch_loss(params, batch, jnp.zeros((), jnp.int32), graphdef=layout.graphdef, spec=spec,
                          seed=config.train.seed)[0]

    kept = []
    if saved:
        with sharding_context(mesh):
            kept = saved_activations(loss, layout.abstract["params"], batch, layout.shardings["params"],
                                     {key: batch_sharding(mesh) for key in batch}, d.seq_len)
    report = {
        "devices": mesh.devices.size,
        "parameters": _bytes_per_device(layout.abstract["params"]),
        "optimizer_state": _bytes_per_device(layout.abstract["opt_state"]),
        "batch": _bytes_per_device(batch),
        "arguments": analysis.argument_size_in_bytes,
        "temporaries": analysis.temp_size_in_bytes,
        "outputs": analysis.output_size_in_bytes,
        "aliased": analysis.alias_size_in_bytes,
    }
    # Donated state is reused for the new state: outputs that alias arguments cost nothing more.
    report["peak_estimate"] = report["arguments"] + report["temporaries"] + report["outputs"] - report["aliased"]
    report["saved_activations"] = sum(s.bytes_per_device for s in kept)
    report["saved_attention"] = sum(s.bytes_per_device for s in kept if s.attention)
    report["layer_scores"] = _layer_scores_bytes(config, dict(mesh.shape)) if kernel == "xla" else 0
    report["attention_kernel"], report["saved"] = kernel, kept
    return report


def _layer_scores_bytes(config: Config, mesh: dict[str, int]) -> int:
    """One layer's float32 attention scores and probabilities [B, H, L, L] on one device (XLA path)."""
    m, seq_len = config.model, config.data.seq_len
    rows = config.train.batch_size // (mesh["data"] * mesh["fsdp"])
    return 2 * 4 * rows * (m.num_heads // mesh["tensor"]) * (seq_len // mesh["sequence"]) * seq_len


def format_report(config: Config, report: dict[str, Any]) -> str:
    """The report as the lines a user reads."""
    mesh = config.mesh.sizes()
    lines = [f"pre-flight: {config.name}, mesh {mesh} ({report['devices']} simulated devices), "
             f"batch {config.train.batch_size} x {config.data.seq_len}; per device:"]
    for key, note in (("parameters", "from the shardings"), ("optimizer_state", "from the shardings"),
                      ("batch", "from the shardings"), ("arguments", "XLA: parameters + optimizer state + batch"),
                      ("temporaries", "XLA: activations, gradients, workspace"),
                      ("outputs", "XLA: new state + metrics"), ("aliased", "XLA: outputs reusing donated arguments"),
                      ("peak_estimate", "arguments + temporaries + outputs - aliased")):
        lines.append(f"  {key.replace('_', ' '):<16} {report[key] / 2**20:>12.2f} MiB   ({note})")
    m = config.model
    saved, attention = report["saved_activations"], report["saved_attention"]
    lines.append(f"attention: {report['attention_kernel']} (model.attention_impl={m.attention_impl}); "
                 f"saved for the backward pass under model.remat={m.remat}, per device:")
    lines.append(f"  {'saved':<16} {saved / 2**20:>12.2f} MiB   (activations kept from the forward pass)")
    share = f"{attention / saved:.0%} of saved" if saved else "none saved"
    lines.append(f"  {'of it [L, L]':<16} {attention / 2**20:>12.2f} MiB   (attention scores, probabilities, mask: {share})")
    if report["layer_scores"]:
        temporaries = report["temporaries"]
        lines.append(f"  {'one layer [L, L]':<16} {report['layer_scores'] / 2**20:>12.2f} MiB   (float32 scores + "
                     f"probabilities of one layer, live in its forward and recompute: "
                     f"{report['layer_scores'] / max(temporaries, 1):.0%} of temporaries)")
    for kind in report["saved"][:6]:
        tag = "  <- attention [L, L]" if kind.attention else ""
        lines.append(f"    {kind.count:>3} x {kind.dtype}[{','.join(map(str, kind.shape))}]: "
                     f"{kind.bytes_per_device / 2**20:.2f} MiB{tag}")
    return "\n".join(lines)


def dry_run(config: Config) -> dict[str, Any]:
    """Simulates the mesh's devices, compiles, prints the report; for train.main --dry_run."""
    use_simulated_devices(config)
    report = memory_report(config)
    print(format_report(config, report), flush=True)
    return report
