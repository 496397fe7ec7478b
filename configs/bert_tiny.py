"""The demo: a small BERT that learns masked-LM on the built-in corpus in minutes on a CPU."""

from train.config import Config, DataConfig, MeshConfig, ModelConfig, OptimConfig, TrainConfig


def get_config() -> Config:
    return Config(
        name="bert_tiny",
        model=ModelConfig(
            vocab_size=8000, max_len=128, hidden=128, num_layers=2, num_heads=2, mlp_dim=512,
            dropout=0.0, attention_dropout=0.0),
        data=DataConfig(seq_len=128),
        optim=OptimConfig(learning_rate=2e-3, schedule="linear", warmup_steps=100, weight_decay=0.01),
        train=TrainConfig(steps=1000, batch_size=32, log_every=50, eval_every=250, eval_batches=20,
                          checkpoint_every=250),
        mesh=MeshConfig(shape=(1, 1, 1)),
    )
