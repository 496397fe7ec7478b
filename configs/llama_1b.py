"""A ~1.1B Llama decoder with TinyLlama-1.1B's sizes (22 layers, 2048 hidden, 32 heads, 4 kv heads)."""

from train.config import Config, DataConfig, MeshConfig, ModelConfig, OptimConfig, TrainConfig


def get_config() -> Config:
    return Config(
        name="llama_1b",
        model=ModelConfig(
            arch="llama", vocab_size=32000, max_len=2048, hidden=2048, num_layers=22, num_heads=32,
            num_kv_heads=4, mlp_dim=5632, dropout=0.0, attention_dropout=0.0, init_std=0.02,
            layer_norm_eps=1e-5, rope_theta=10000.0, tie_embeddings=False, dtype="bfloat16",
            remat="full"),
        data=DataConfig(seq_len=2048),
        optim=OptimConfig(learning_rate=4e-4, schedule="cosine", warmup_steps=2000,
                          end_learning_rate_ratio=0.1, weight_decay=0.1, b2=0.95, eps=1e-8),
        train=TrainConfig(steps=500_000, batch_size=512, log_every=100, eval_every=5_000,
                          eval_batches=50, checkpoint_every=5_000),
        # FSDP over every device; e.g. --config.mesh.shape=1,-1,4 adds tensor parallelism.
        mesh=MeshConfig(shape=(1, -1, 1)),
    )
