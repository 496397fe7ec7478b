"""BERT-base: 12 layers, 768 hidden, 12 heads, 3072 MLP, ~32k vocab, 512 tokens."""

from train.config import Config, DataConfig, MeshConfig, ModelConfig, OptimConfig, TrainConfig


def get_config() -> Config:
    return Config(
        name="bert_base",
        model=ModelConfig(
            vocab_size=32000, max_len=512, hidden=768, num_layers=12, num_heads=12, mlp_dim=3072,
            dropout=0.1, attention_dropout=0.1,
            # 12 layers compile quickly unrolled, and the step runs ~16% faster on CPU than scanned.
            scan_layers=False),
        data=DataConfig(seq_len=512),
        optim=OptimConfig(learning_rate=1e-4, schedule="linear", warmup_steps=10_000, weight_decay=0.01),
        train=TrainConfig(steps=1_000_000, batch_size=256, log_every=100, eval_every=10_000,
                          eval_batches=50, checkpoint_every=10_000),
        # Data parallel over every device; set e.g. --config.mesh.shape=1,-1,1 for FSDP.
        mesh=MeshConfig(shape=(-1, 1, 1)),
    )
