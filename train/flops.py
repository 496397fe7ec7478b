"""Model FLOPs per trained token and peak FLOP/s per chip: the two halves of MFU.

Training FLOPs per token = 6 x N + 12 x layers x heads x head_dim x seq_len, where N
counts every parameter except the embedding lookup tables (word, position, token type:
a lookup is not a matmul), plus the tied vocabulary projection (hidden x vocab) for the
fraction of positions it is applied to (the MLM head projects only its prediction
budget). The second term is attention's QK^T and AV matmuls (2 x 2 x seq_len x heads x
head_dim per token per layer forward, x3 for forward plus backward), counted over the
whole row because the encoder attends bidirectionally (half of it for the causal decoder,
whose queries see on average half the row; an untied lm_head is an ordinary matmul
parameter in N). Remat recompute is not counted:
MFU measures the model's FLOPs, not the hardware's.
"""

from __future__ import annotations

from typing import Any

import jax

from model.config import ModelConfig

# The embedding lookup tables, by their path in the params tree.
LOOKUP_TABLES = (("embeddings", "word"), ("embeddings", "position"), ("embeddings", "token_type"),
                 ("embed",))  # the decoder's word table

# Dense bf16 peak FLOP/s per chip (vendor figures, no sparsity), matched against
# `jax.Device.device_kind` lowercased; the first matching fragment wins.
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("v6 lite", 918e12), ("v6e", 918e12),
    ("v5 lite", 197e12), ("v5e", 197e12),
    ("v5p", 459e12), ("v5", 459e12),
    ("v4", 275e12),
    ("h200", 989e12),
    ("h100", 989e12),
    ("a100", 312e12),
)


def non_embedding_params(params: Any) -> int:
    """Parameters that take part in matmuls: all but the embedding lookup tables."""
    total = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        keys = tuple(getattr(k, "key", getattr(k, "name", None)) for k in path)
        if not any(keys[:len(table)] == table for table in LOOKUP_TABLES):
            total += leaf.size
    return total


def train_flops_per_token(cfg: ModelConfig, non_embedding: int, seq_len: int,
                          head_fraction: float = 1.0) -> float:
    """Forward plus backward FLOPs per token (see the module docstring for the formula)."""
    tied = cfg.arch == "bert" or cfg.tie_embeddings  # an untied lm_head is already in N
    projection = cfg.hidden * cfg.vocab_size * head_fraction if tied else 0.0
    attention = 12 * cfg.num_layers * cfg.num_heads * cfg.resolved_head_dim * seq_len
    if cfg.arch == "llama":
        attention /= 2  # causal: each query sees on average half the row
    return 6.0 * (non_embedding + projection) + attention


def peak_flops_per_device(device_kind: str, configured: float = 0.0) -> float | None:
    """The configured peak if set, else the table's bf16 peak for this chip; None if unknown."""
    if configured > 0:
        return configured
    kind = device_kind.lower()
    for fragment, peak in PEAK_BF16_FLOPS:
        if fragment in kind:
            return peak
    return None


def mfu(flops_per_token: float, tokens_per_sec_per_device: float, peak: float) -> float:
    """Model FLOPs utilization: achieved model FLOP/s per device over the chip's peak."""
    return flops_per_token * tokens_per_sec_per_device / peak
