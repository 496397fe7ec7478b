"""A small Llama-style decoder that learns next-token prediction on the built-in corpus in minutes on a CPU."""

from train.config import Config, DataConfig, MeshConfig, ModelConfig, OptimConfig, TrainConfig


def get_config() -> Config:
    return Config(
        name="gpt_tiny",
        # The Llama layout at toy size: pre-RMSNorm, RoPE, SwiGLU, 2 kv heads for 4 query heads.
        model=ModelConfig(
            arch="llama", vocab_size=4000, max_len=128, hidden=128, num_layers=2, num_heads=4,
            num_kv_heads=2, mlp_dim=384, dropout=0.0, attention_dropout=0.0, init_std=0.05,
            layer_norm_eps=1e-5, rope_theta=10000.0, tie_embeddings=True),
        data=DataConfig(seq_len=128),
        optim=OptimConfig(learning_rate=3e-3, schedule="linear", warmup_steps=50, b2=0.98,
                          weight_decay=0.01),
        train=TrainConfig(steps=600, batch_size=32, log_every=100, eval_every=300, eval_batches=20,
                          checkpoint_every=300),
        mesh=MeshConfig(shape=(1, 1, 1)),
    )
