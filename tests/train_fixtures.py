"""Small configs and synthetic batches for train/ tests (no corpus needed)."""

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
