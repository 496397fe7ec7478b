"""The ~100M Llama decoder the benchmarks time (decoding and the bf16 train step): hidden 768, 12 layers."""

from train.config import Config, DataConfig, MeshConfig, ModelConfig, OptimConfig, TrainConfig


def get_config() -> Config:
    return Config(
        name="llama_100m",
        # 12 heads over 4 kv heads (grouped-query), SwiGLU MLP 2048, vocab 32000, tied embeddings.
        model=ModelConfig(
            arch="llama", vocab_size=32000, max_len=256, hidden=768, num_layers=12, num_heads=12,
            num_kv_heads=4, mlp_dim=2048, dropout=0.0, attention_dropout=0.0, layer_norm_eps=1e-5,
            rope_theta=10000.0, tie_embeddings=True,
            # Unrolled layers: on XLA:CPU the scan's stacked per-layer buffers are converted and
            # copied each layer (the bf16 train step took 1.85x as long); on TPU/GPU a scan keeps
            # compile time flat in depth, so set it back there for deep models.
            scan_layers=False),
        data=DataConfig(seq_len=256),
        optim=OptimConfig(learning_rate=3e-4, schedule="cosine", warmup_steps=200, weight_decay=0.01),
        train=TrainConfig(steps=10000, batch_size=8, log_every=50, eval_every=1000, eval_batches=20,
                          checkpoint_every=1000),
        mesh=MeshConfig(shape=(1, -1, 1)),
    )
