"""MFU's inputs: the FLOPs formula matches a hand count of the model's matmuls; peaks by chip."""

import jax
import pytest

from model.config import ModelConfig
from train.config import OptimConfig
from train.flops import non_embedding_params, peak_flops_per_device, train_flops_per_token
from train.mesh import make_mesh
from train.optimizer import make_optimizer
from train.state import state_layout


def test_flops_per_token_counts_matmuls_and_bidirectional_attention():
    cfg = ModelConfig(vocab_size=100, max_len=32, hidden=16, num_layers=2, num_heads=2, mlp_dim=64)
    tx, _ = make_optimizer(OptimConfig(), 10)
    layout = state_layout(cfg, tx, make_mesh((1, 1, 1), jax.devices()[:1]))
    n = non_embedding_params(layout.abstract["params"])
    h, m, v, l, t = 16, 64, 100, 2, 32
    per_layer = 4 * (h * h + h) + 2 * h * m + m + h + 4 * h  # q,k,v,out; up, down; two LayerNorms
    head = h * h + h + 2 * h + v + 2 * h  # transform, its LayerNorm, output bias; embeddings LayerNorm
    assert n == l * per_layer + head
    assert layout.param_count - n == (v + t + 2) * h  # the three lookup tables
    expected = 6 * (n + h * v) + 12 * l * h * t  # heads x head_dim = hidden
    assert train_flops_per_token(cfg, n, t) == expected
    assert train_flops_per_token(cfg, n, t, head_fraction=0.25) == expected - 6 * h * v * 0.75


@pytest.mark.parametrize("tied", [True, False])
def test_decoder_flops_count_the_head_once_and_causal_attention_half(tied):
    cfg = ModelConfig(arch="llama", vocab_size=100, max_len=32, hidden=16, num_layers=2, num_heads=4,
                      num_kv_heads=2, mlp_dim=48, tie_embeddings=tied, dropout=0.0, attention_dropout=0.0)
    tx, _ = make_optimizer(OptimConfig(), 10)
    layout = state_layout(cfg, tx, make_mesh((1, 1, 1), jax.devices()[:1]))
    n = non_embedding_params(layout.abstract["params"])
    h, kv, m, v, l, t = 16, 2 * 4, 48, 100, 2, 32  # kv: 2 kv heads x head_dim 4
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * m + 2 * h  # q, out; k, v; gate, up, down; two RMSNorms
    assert n == l * per_layer + h + (0 if tied else h * v)  # final norm; an untied lm_head
    assert train_flops_per_token(cfg, n, t) == 6 * (n + (h * v if tied else 0)) + 6 * l * h * t


@pytest.mark.parametrize("kind, peak", [
    ("TPU v4", 275e12), ("TPU v5 lite", 197e12), ("TPU v5", 459e12), ("TPU v5p", 459e12),
    ("TPU v6 lite", 918e12), ("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA H100 80GB HBM3", 989e12),
    ("NVIDIA H200", 989e12)])
def test_peak_by_chip(kind, peak):
    assert peak_flops_per_device(kind) == peak


def test_configured_peak_wins_and_unknown_chips_have_none():
    assert peak_flops_per_device("cpu") is None
    assert peak_flops_per_device("cpu", 1e12) == 1e12
    assert peak_flops_per_device("TPU v4", 2e14) == 2e14
