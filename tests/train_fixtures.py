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
