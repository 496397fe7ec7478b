"""configs/llama_1b.py's ~1.1B Llama decoder on rows of 8192 tokens (long context).

The same sizes as TinyLlama-1.1B; rows four times longer and a quarter as many of them
(the same ~1M tokens a step). The attention's share of the step grows with the length:
`--dry_run` reports what the XLA path keeps, and `model.attention_impl=auto` runs Splash
on TPU and cuDNN on GPU, which keep no [L, L] array (README, "Long context").
"""

from train.config import Config, DataConfig, MeshConfig, ModelConfig, OptimConfig, TrainConfig


def get_config() -> Config:
    return Config(
        name="llama_1b_8k",
        model=ModelConfig(
            arch="llama", vocab_size=32000, max_len=8192, hidden=2048, num_layers=22, num_heads=32,
            num_kv_heads=4, mlp_dim=5632, dropout=0.0, attention_dropout=0.0, init_std=0.02,
            layer_norm_eps=1e-5, rope_theta=10000.0, tie_embeddings=False, dtype="bfloat16",
            remat="full", attention_impl="auto"),
        data=DataConfig(seq_len=8192),
        optim=OptimConfig(learning_rate=4e-4, schedule="cosine", warmup_steps=2000,
                          end_learning_rate_ratio=0.1, weight_decay=0.1, b2=0.95, eps=1e-8),
        train=TrainConfig(steps=500_000, batch_size=128, log_every=100, eval_every=5_000,
                          eval_batches=50, checkpoint_every=5_000),
        # FSDP over every device; --config.mesh.shape=1,-1,1,2 also splits each row over 2
        # devices (the sequence axis: context parallelism).
        mesh=MeshConfig(shape=(1, -1, 1)),
    )
