"""Small configs and synthetic batches for train/ tests (no corpus needed)."""

import functools

import numpy as np

from train.config import Config, DataConfig, ModelConfig, OptimConfig, TrainConfig
from train.masking import MaskingSpec

VOCAB = 64
SPECIALS = (0, 1, 2, 3, 4)


def tiny_config(**train) -> Config:
    return Config(
        name="test_tiny",
        model=ModelConfig(vocab_size=VOCAB, max_len=16, hidden=32, num_layers=2, num_heads=4, mlp_dim=64,
                          dropout=0.0, attention_dropout=0.0),
        data=DataConfig(seq_len=16),
        optim=OptimConfig(learning_rate=1e-2, warmup_steps=2, weight_decay=0.0),
        train=TrainConfig(**{"steps": 50, "batch_size": 8, **train}),
    )


def tiny_spec(probability: float = 0.15, max_predictions: int | None = None) -> MaskingSpec:
    return MaskingSpec(mask_id=4, vocab_size=VOCAB, special_ids=SPECIALS, probability=probability,
                       max_predictions=max_predictions)


def tiny_batch(rows: int = 8, seq_len: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    """Rows of two packed documents: [CLS] a.. [SEP] [CLS] b.. [SEP] pad."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(5, VOCAB, (rows, seq_len)).astype(np.int32)
    segment_ids = np.zeros((rows, seq_len), np.int32)
    positions = np.zeros((rows, seq_len), np.int32)
    first = seq_len // 2
    tokens[:, 0], tokens[:, first - 1], tokens[:, first], tokens[:, seq_len - 3] = 2, 3, 2, 3
    tokens[:, seq_len - 2:] = 0
    segment_ids[:, :first], segment_ids[:, first:seq_len - 2] = 1, 2
    positions[:, :first] = np.arange(first)
    positions[:, first:seq_len - 2] = np.arange(seq_len - 2 - first)
    return {"tokens": tokens, "segment_ids": segment_ids, "positions": positions}


MARKOV_VOCAB = 96


def markov_rows(successor: np.ndarray, rows: int, length: int, seed: int) -> np.ndarray:
    """Token rows of a Markov chain: each token is followed by successor[token] 9 times in 10, else any token."""
    rng = np.random.default_rng(seed)
    tokens = np.empty((rows, length), np.int32)
    tokens[:, 0] = rng.integers(5, MARKOV_VOCAB, rows)
    for i in range(1, length):
        follow = rng.random(rows) < 0.9
        tokens[:, i] = np.where(follow, successor[tokens[:, i - 1]], rng.integers(5, MARKOV_VOCAB, rows))
    return tokens


@functools.lru_cache(maxsize=1)
def markov_decoder(steps: int = 150):
    """(model config, trained params on host, successor table): a tiny Llama that learned a Markov chain.

    Its next-token distribution puts 0.9 on one successor, so greedy decoding follows the
    chain with a margin of ~6 nats: a decoder whose numbers are off shows as wrong tokens.
    Trained once per test process (~10 s on one CPU device).
    """
    import dataclasses

    import jax

    from train.mesh import make_mesh, to_global
    from train.optimizer import make_optimizer
    from train.state import init_state, state_layout
    from train.steps import compile_train_step

    successor = np.full(MARKOV_VOCAB, 5, np.int32)
    successor[5:] = 5 + np.random.default_rng(0).permutation(MARKOV_VOCAB - 5)
    cfg = dataclasses.replace(tiny_config().model, arch="llama", vocab_size=MARKOV_VOCAB, max_len=64, hidden=64,
                              num_heads=4, num_kv_heads=2, mlp_dim=128, layer_norm_eps=1e-5, init_std=0.1)
    mesh = make_mesh((1, 1, 1), jax.devices()[:1])
    tx, schedule = make_optimizer(OptimConfig(learning_rate=1e-2, schedule="constant", warmup_steps=0,
                                              weight_decay=0.0), steps)
    layout = state_layout(cfg, tx, mesh)
    state = init_state(cfg, tx, layout, mesh, seed=0)
    step = compile_train_step(layout, mesh, tx=tx, schedule=schedule, spec=None, seed=0)
    for i in range(steps):
        tokens = markov_rows(successor, 16, 32, seed=i)
        batch = {"tokens": tokens, "segment_ids": np.ones_like(tokens),
                 "positions": np.broadcast_to(np.arange(32, dtype=np.int32), tokens.shape).copy()}
        state, metrics = step(state, to_global(batch, mesh))
    jax.block_until_ready(metrics)
    return cfg, jax.tree.map(np.asarray, state["params"]), successor


def packed_segment_ids(rows: int, seq_len: int, seed: int = 0, left_pad: bool = False) -> np.ndarray:
    """Segment ids of rows holding several documents of random lengths and some padding (0)
    at the end of each row (or, `left_pad`, at its start, as a decoding prompt batch has it)."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((rows, seq_len), np.int32)
    for row in ids:
        start, doc = 0, 1
        end = seq_len - int(rng.integers(1, seq_len // 4))
        while start < end:
            size = int(rng.integers(1, seq_len // 3))
            row[start:min(start + size, end)] = doc
            start, doc = start + size, doc + 1
        if left_pad:
            row[:] = np.roll(row, seq_len - end)
    return ids


def packed_batch(rows: int, seq_len: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A batch of such rows: random tokens, positions restarting at 0 in each document."""
    segment_ids = packed_segment_ids(rows, seq_len, seed)
    tokens = np.random.default_rng(seed + 1).integers(5, VOCAB, (rows, seq_len)).astype(np.int32)
    tokens[segment_ids == 0] = 0
    starts = np.concatenate([np.ones((rows, 1), bool), segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
    index = np.broadcast_to(np.arange(seq_len), (rows, seq_len))
    positions = index - np.maximum.accumulate(np.where(starts, index, 0), axis=1)
    positions[segment_ids == 0] = 0
    return {"tokens": tokens, "segment_ids": segment_ids, "positions": positions.astype(np.int32)}


def train_decoder_steps(config: Config, mesh_shape, steps: int = 3, devices=None):
    """`steps` next-token train steps on tiny_batch over a fresh state on a mesh of `mesh_shape`:
    (layout, the initial params and the final state on the host, the losses)."""
    import jax

    from train.mesh import make_mesh, to_global
    from train.optimizer import make_optimizer
    from train.state import init_state, state_layout
    from train.steps import compile_train_step

    mesh = make_mesh(mesh_shape, devices)
    tx, schedule = make_optimizer(config.optim, config.train.steps)
    layout = state_layout(config.model, tx, mesh)
    state = init_state(config.model, tx, layout, mesh, seed=0)
    step = compile_train_step(layout, mesh, tx=tx, schedule=schedule, spec=None, seed=0)
    batch = to_global(tiny_batch(), mesh)
    before = jax.tree.map(np.asarray, state["params"])
    losses = []
    for _ in range(steps):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    return layout, before, jax.tree.map(np.asarray, state), losses
