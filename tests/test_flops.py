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
