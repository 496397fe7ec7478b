"""Architecture hyperparameters shared by every model in the family, their cross-field rules, and the
attention kernels' limits."""

from __future__ import annotations

import dataclasses

ATTENTION_IMPLS = ("auto", "xla", "splash", "cudnn")
# cuDNN's flash attention: the dtypes it computes in and (Hopper and later) its largest head dim.
CUDNN_DTYPES = ("bfloat16", "float16")
CUDNN_MAX_HEAD_DIM = 256

# Projections that can carry a LoRA adapter (model/lora.py): attention's query, key, value and
# output, the MLP's gate, up and down (PEFT's q_proj ... down_proj).
LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")


@dataclasses.dataclass
class LoraConfig:
    """Low-rank adapters beside frozen base weights; rank 0 (the default) means none: every weight trains."""

    rank: int = 0
    alpha: float = 16.0  # updates are scaled by alpha / rank (PEFT's lora_alpha)
    dropout: float = 0.0  # on each adapter's input, in training only
    targets: tuple[str, ...] = LORA_TARGETS  # any of LORA_TARGETS; all linear layers by default (QLoRA's advice)


@dataclasses.dataclass
class ModelConfig:
    """Sizes and numerics of a transformer; the BERT layout by default."""

    vocab_size: int = 8000
    max_len: int = 128  # learned position table size; rows are at most this long
    hidden: int = 256
    num_layers: int = 4
    num_heads: int = 4
    head_dim: int = 0  # 0: hidden // num_heads
    mlp_dim: int = 1024
    dropout: float = 0.1  # hidden-state dropout (BERT's hidden_dropout_prob)
    attention_dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    init_std: float = 0.02
    # BERT's learned position table starts normal(init_std), or sinusoidal (Vaswani et al.) scaled
    # to the same RMS: relative offsets are then legible from the first step (still learned after).
    position_init: str = "normal"  # normal | sinusoidal
    dtype: str = "float32"  # activations and matmuls: float32 | bfloat16
    param_dtype: str = "float32"
    remat: str = "none"  # backward-pass recompute per block: none | full | dots (keep matmul outputs)
    scan_layers: bool = True  # one nnx.scan over the stacked layers (compile time flat in depth)
    # Which attention kernel (model/attention.py `attention_backend`): auto picks Splash on TPU,
    # cuDNN on GPU and the XLA einsum path elsewhere (or where a fused kernel cannot run this model).
    attention_impl: str = "auto"  # auto | xla | splash | cudnn
    max_segments_per_row: int = 32  # cudnn only: the most documents a packed row may hold (its static bound)
    # The decoder family (defaults keep the BERT layout): llama = pre-RMSNorm blocks, RoPE,
    # SwiGLU MLP, no biases, causal attention, next-token head. layer_norm_eps is the RMS eps.
    arch: str = "bert"  # bert | llama
    num_kv_heads: int = 0  # 0: num_heads; fewer gives grouped-query attention
    rope_theta: float = 10000.0  # RoPE base (llama)
    tie_embeddings: bool = True  # llama: logits on the word table, else a separate lm_head
    lora: LoraConfig = dataclasses.field(default_factory=LoraConfig)  # adapters (llama); rank 0: none

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim or self.hidden // self.num_heads

    @property
    def resolved_kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads


def cudnn_misfit(dtype: str, head_dim: int, length_sharded: bool) -> str | None:
    """Why cuDNN's flash attention cannot run a model with these numbers (None: it can)."""
    if str(dtype) not in CUDNN_DTYPES:
        return f"cuDNN attention computes in {' or '.join(CUDNN_DTYPES)} only, not {dtype}"
    if head_dim % 8 or head_dim > CUDNN_MAX_HEAD_DIM:
        return f"cuDNN attention needs a head dim that is a multiple of 8 up to {CUDNN_MAX_HEAD_DIM}, not {head_dim}"
    if length_sharded:
        return "cuDNN attention splits the batch and the heads over devices, not the length"
    return None


def model_misfit(m: ModelConfig) -> str | None:
    """The first cross-field rule the model's fields break, as one line naming the values and what is
    accepted (None: none): kv heads, RoPE, tied embeddings, a fused attention kernel, LoRA."""
    if m.num_kv_heads < 0 or (m.num_kv_heads and m.num_heads % m.num_kv_heads):
        return (f"model.num_kv_heads={m.num_kv_heads} does not divide model.num_heads={m.num_heads}; "
                "accepted: 0 (= num_heads) or a divisor of num_heads")
    if m.arch == "llama" and (m.rope_theta <= 0 or m.resolved_head_dim % 2):
        return (f"model.rope_theta={m.rope_theta} with head dim {m.resolved_head_dim}; "
                "accepted: rope_theta > 0 and an even head dim")
    if m.arch == "bert" and not m.tie_embeddings:
        return "model.tie_embeddings=false is only for model.arch=llama; BERT's MLM head is tied"
    # A fused kernel named outright must be able to run the model (auto falls back to XLA instead).
    if m.attention_impl in ("splash", "cudnn") and m.attention_dropout > 0:
        return (f"model.attention_impl={m.attention_impl} has no attention dropout but "
                f"model.attention_dropout={m.attention_dropout}; accepted: attention_dropout=0, "
                "or attention_impl=auto or xla")
    if m.attention_impl == "cudnn":
        misfit = cudnn_misfit(m.dtype, m.resolved_head_dim, length_sharded=False)
        if misfit:
            return (f"model.attention_impl=cudnn: {misfit}; accepted: a model cuDNN can run "
                    "(e.g. model.dtype=bfloat16), or attention_impl=auto or xla")
    return _lora_misfit(m)


def _lora_misfit(m: ModelConfig) -> str | None:
    """model.lora: a rank of 0 (off) or more, a positive alpha, and targets the decoder has."""
    lora = m.lora
    if lora.rank < 0 or lora.alpha <= 0 or not 0.0 <= lora.dropout < 1.0:
        return (f"model.lora rank={lora.rank} alpha={lora.alpha} dropout={lora.dropout}; accepted: "
                "rank >= 0 (0: no adapters), alpha > 0, dropout in [0, 1)")
    bad = [t for t in lora.targets if t not in LORA_TARGETS]
    if bad or not lora.targets or len(set(lora.targets)) != len(lora.targets):
        return (f"config key 'model.lora.targets' got {','.join(lora.targets) or 'nothing'}; accepted: "
                f"distinct names among {','.join(LORA_TARGETS)}")
    if lora.rank and m.arch != "llama":
        return (f"model.lora.rank={lora.rank} with model.arch={m.arch}; accepted: LoRA adapters on "
                "model.arch=llama (decoders)")
    return None
