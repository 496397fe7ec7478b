"""Per-family tables between meshlm parameters and Hugging Face Transformers checkpoints.

A family is a list of tensor rules plus two config translations. Export and import walk
the same rules in opposite directions, so a round trip is exact by construction. Adding a
family means adding one `Family` entry here; nothing else in export or import changes.

Layouts (ours -> HF; `{i}` in an HF name expands over the stacked `layers` axis):
    same        copied unchanged
    linear      kernel [in, out] -> torch Linear weight [out, in]
    heads_in    q/k/v kernel [hidden, H, D] -> [H*D, hidden]
    heads_bias  q/k/v bias [H, D] -> [H*D]
    heads_out   output kernel [H, D, hidden] -> [hidden, H*D]
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

from model.config import ModelConfig
from train.config import ConfigError


@dataclasses.dataclass(frozen=True)
class TensorRule:
    ours: str  # dotted path in the params tree
    hf: str  # HF state-dict name; "{i}" for each layer of a stacked parameter
    layout: str = "same"

    @property
    def stacked(self) -> bool:
        return "{i}" in self.hf


_TRANSPOSED = ("linear", "heads_in", "heads_out")


def to_hf(layout: str, x: np.ndarray) -> np.ndarray:
    """One (unstacked) parameter in HF's layout."""
    if layout == "heads_in":
        return np.ascontiguousarray(x.reshape(x.shape[0], -1).T)
    if layout == "heads_out":
        return np.ascontiguousarray(x.reshape(-1, x.shape[-1]).T)
    if layout == "linear":
        return np.ascontiguousarray(x.T)
    if layout == "heads_bias":
        return x.reshape(-1)
    return x


def from_hf(layout: str, x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """One HF tensor back in our layout and (unstacked) shape."""
    if layout in _TRANSPOSED:
        x = x.T
    return np.ascontiguousarray(x.reshape(shape))


def hf_shape(layout: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The HF shape of an (unstacked) parameter of our `shape`."""
    return to_hf(layout, np.empty(shape, np.int8)).shape


@dataclasses.dataclass(frozen=True)
class Family:
    """How one model family maps onto one Transformers architecture."""

    name: str  # meshlm's ModelConfig.arch
    architecture: str  # HF class, e.g. BertForMaskedLM
    rules: Callable[[ModelConfig], list[TensorRule]]
    unsupported: Callable[[ModelConfig], list[str]]  # features HF cannot express, by name
    hf_config: Callable[[ModelConfig, dict[str, int]], dict[str, Any]]  # (model, special ids)
    model_config: Callable[[dict[str, Any]], ModelConfig]  # ConfigError for unsupported settings
    tied: dict[str, str]  # HF names left out of the file -> the name they are tied to
    causal: bool = False  # a decoder (generates left to right) rather than an encoder


# --- BERT (encoder): BertForMaskedLM. Tested against transformers in tests/test_export_hf.py.

def _bert_rules(cfg: ModelConfig) -> list[TensorRule]:
    layer = "bert.encoder.layer.{i}."
    rules = [
        TensorRule("embeddings.word.embedding", "bert.embeddings.word_embeddings.weight"),
        TensorRule("embeddings.position.embedding", "bert.embeddings.position_embeddings.weight"),
        TensorRule("embeddings.token_type.embedding", "bert.embeddings.token_type_embeddings.weight"),
        TensorRule("embeddings.norm.scale", "bert.embeddings.LayerNorm.weight"),
        TensorRule("embeddings.norm.bias", "bert.embeddings.LayerNorm.bias"),
    ]
    for ours in ("query", "key", "value"):
        rules += [TensorRule(f"layers.attention.{ours}.kernel", f"{layer}attention.self.{ours}.weight", "heads_in"),
                  TensorRule(f"layers.attention.{ours}.bias", f"{layer}attention.self.{ours}.bias", "heads_bias")]
    rules += [
        TensorRule("layers.attention.out.kernel", f"{layer}attention.output.dense.weight", "heads_out"),
        TensorRule("layers.attention.out.bias", f"{layer}attention.output.dense.bias"),
        TensorRule("layers.attention_norm.scale", f"{layer}attention.output.LayerNorm.weight"),
        TensorRule("layers.attention_norm.bias", f"{layer}attention.output.LayerNorm.bias"),
        TensorRule("layers.mlp.up.kernel", f"{layer}intermediate.dense.weight", "linear"),
        TensorRule("layers.mlp.up.bias", f"{layer}intermediate.dense.bias"),
        TensorRule("layers.mlp.down.kernel", f"{layer}output.dense.weight", "linear"),
        TensorRule("layers.mlp.down.bias", f"{layer}output.dense.bias"),
        TensorRule("layers.mlp_norm.scale", f"{layer}output.LayerNorm.weight"),
        TensorRule("layers.mlp_norm.bias", f"{layer}output.LayerNorm.bias"),
        TensorRule("head.transform.kernel", "cls.predictions.transform.dense.weight", "linear"),
        TensorRule("head.transform.bias", "cls.predictions.transform.dense.bias"),
        TensorRule("head.norm.scale", "cls.predictions.transform.LayerNorm.weight"),
        TensorRule("head.norm.bias", "cls.predictions.transform.LayerNorm.bias"),
        TensorRule("head.bias", "cls.predictions.bias"),
    ]
    return rules


def _bert_unsupported(cfg: ModelConfig) -> list[str]:
    problems = []
    if cfg.head_dim and cfg.head_dim * cfg.num_heads != cfg.hidden:
        problems.append(f"model.head_dim={cfg.head_dim} with num_heads={cfg.num_heads} and hidden={cfg.hidden} "
                        "(BertForMaskedLM's head size is hidden_size / num_attention_heads)")
    kv_heads = getattr(cfg, "num_kv_heads", 0)
    if kv_heads and kv_heads != cfg.num_heads:
        problems.append(f"model.num_kv_heads={kv_heads} (grouped-query attention)")
    return problems


def _bert_hf_config(cfg: ModelConfig, special: dict[str, int]) -> dict[str, Any]:
    return {
        "architectures": ["BertForMaskedLM"], "model_type": "bert",
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden, "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads, "intermediate_size": cfg.mlp_dim,
        "hidden_act": "gelu",  # HF's "gelu" is the exact erf form, as model/mlp.py computes
        "hidden_dropout_prob": cfg.dropout, "attention_probs_dropout_prob": cfg.attention_dropout,
        "max_position_embeddings": cfg.max_len, "type_vocab_size": 2,
        "initializer_range": cfg.init_std, "layer_norm_eps": cfg.layer_norm_eps,
        "position_embedding_type": "absolute", "is_decoder": False, "add_cross_attention": False,
        "tie_word_embeddings": True, "use_cache": False, **special,
    }


def _bert_model_config(hf: dict[str, Any]) -> ModelConfig:
    expected = {"hidden_act": "gelu", "position_embedding_type": "absolute", "is_decoder": False,
                "add_cross_attention": False, "type_vocab_size": 2, "tie_word_embeddings": True}
    bad = [f"{key}={hf[key]!r} (accepted: {value!r})" for key, value in expected.items()
           if key in hf and hf[key] != value]
    if hf["hidden_size"] % hf["num_attention_heads"]:
        bad.append(f"hidden_size={hf['hidden_size']} not divisible by num_attention_heads={hf['num_attention_heads']}")
    if bad:
        raise ConfigError("unsupported BertForMaskedLM settings: " + "; ".join(bad))
    return ModelConfig(
        vocab_size=hf["vocab_size"], max_len=hf["max_position_embeddings"], hidden=hf["hidden_size"],
        num_layers=hf["num_hidden_layers"], num_heads=hf["num_attention_heads"],
        mlp_dim=hf["intermediate_size"], dropout=hf.get("hidden_dropout_prob", 0.1),
        attention_dropout=hf.get("attention_probs_dropout_prob", 0.1),
        layer_norm_eps=hf.get("layer_norm_eps", 1e-12), init_std=hf.get("initializer_range", 0.02))


BERT = Family(
    name="bert", architecture="BertForMaskedLM", rules=_bert_rules, unsupported=_bert_unsupported,
    hf_config=_bert_hf_config, model_config=_bert_model_config,
    tied={"cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
          "cls.predictions.decoder.bias": "cls.predictions.bias"})


# --- Llama (decoder): LlamaForCausalLM, mapped from model/decoder.py's parameter tree (its
# docstring lists the same table). Tested against transformers in tests/test_export_llama.py.

def _llama_rules(cfg: ModelConfig) -> list[TensorRule]:
    layer = "model.layers.{i}."
    rules = [TensorRule("embed.embedding", "model.embed_tokens.weight")]
    for ours, hf in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
        rules.append(TensorRule(f"layers.attention.{ours}.kernel", f"{layer}self_attn.{hf}.weight", "heads_in"))
    rules += [
        TensorRule("layers.attention.out.kernel", f"{layer}self_attn.o_proj.weight", "heads_out"),
        TensorRule("layers.attention_norm.scale", f"{layer}input_layernorm.weight"),
        TensorRule("layers.mlp.gate.kernel", f"{layer}mlp.gate_proj.weight", "linear"),
        TensorRule("layers.mlp.up.kernel", f"{layer}mlp.up_proj.weight", "linear"),
        TensorRule("layers.mlp.down.kernel", f"{layer}mlp.down_proj.weight", "linear"),
        TensorRule("layers.mlp_norm.scale", f"{layer}post_attention_layernorm.weight"),
        TensorRule("final_norm.scale", "model.norm.weight"),
    ]
    if not cfg.tie_embeddings:
        rules.append(TensorRule("lm_head.kernel", "lm_head.weight", "linear"))
    return rules


def _llama_unsupported(cfg: ModelConfig) -> list[str]:
    # Residual dropout (model.dropout) is not refused: LlamaForCausalLM has none, but it only
    # acts in training, so the exported model computes the same logits.
    problems = []
    if cfg.hidden % cfg.num_heads:
        problems.append(f"model.hidden={cfg.hidden} not divisible by model.num_heads={cfg.num_heads} "
                        "(LlamaConfig requires hidden_size % num_attention_heads == 0, even with head_dim set)")
    if cfg.resolved_head_dim % 2:
        problems.append(f"odd head dim {cfg.resolved_head_dim} (Llama's RoPE rotates two halves)")
    return problems


def _llama_hf_config(cfg: ModelConfig, special: dict[str, int]) -> dict[str, Any]:
    theta = float(cfg.rope_theta)
    # meshlm's decoder starts documents with [CLS] and ends them with [SEP] (train/generate/completions.py).
    tokens = {"pad_token_id": special["pad_token_id"], "bos_token_id": special.get("cls_token_id"),
              "eos_token_id": special.get("sep_token_id")}
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden, "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.resolved_kv_heads,
        "head_dim": cfg.resolved_head_dim, "intermediate_size": cfg.mlp_dim, "hidden_act": "silu",
        "max_position_embeddings": cfg.max_len, "rms_norm_eps": cfg.layer_norm_eps,
        "rope_theta": theta, "rope_parameters": {"rope_type": "default", "rope_theta": theta},
        "attention_bias": False, "mlp_bias": False, "attention_dropout": cfg.attention_dropout,
        "initializer_range": cfg.init_std, "pretraining_tp": 1,
        "tie_word_embeddings": cfg.tie_embeddings, "use_cache": True, **tokens,
    }


def _llama_model_config(hf: dict[str, Any]) -> ModelConfig:
    bad = [f"{key}={hf[key]!r} (accepted: false)" for key in ("attention_bias", "mlp_bias") if hf.get(key)]
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        bad.append(f"rope_parameters.rope_type={rope_type!r} (accepted: 'default', no RoPE scaling)")
    partial = rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
    if partial != 1.0:
        bad.append(f"partial_rotary_factor={partial!r} (accepted: 1.0)")
    if hf.get("hidden_act", "silu") != "silu":
        bad.append(f"hidden_act={hf['hidden_act']!r} (accepted: 'silu')")
    if bad:
        raise ConfigError("unsupported LlamaForCausalLM settings: " + "; ".join(bad))
    heads, hidden = hf["num_attention_heads"], hf["hidden_size"]
    kv_heads = hf.get("num_key_value_heads") or heads
    head_dim = hf.get("head_dim") or hidden // heads
    return ModelConfig(
        arch="llama", vocab_size=hf["vocab_size"], max_len=hf.get("max_position_embeddings", 2048),
        hidden=hidden, num_layers=hf["num_hidden_layers"], num_heads=heads,
        num_kv_heads=0 if kv_heads == heads else kv_heads,  # 0 and head_dim 0: meshlm's "same as" defaults
        head_dim=0 if head_dim * heads == hidden else head_dim, mlp_dim=hf["intermediate_size"],
        dropout=0.0, attention_dropout=float(hf.get("attention_dropout") or 0.0),
        layer_norm_eps=hf.get("rms_norm_eps", 1e-6),
        rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)), init_std=hf.get("initializer_range", 0.02))


LLAMA = Family(
    name="llama", architecture="LlamaForCausalLM", rules=_llama_rules, unsupported=_llama_unsupported,
    hf_config=_llama_hf_config, model_config=_llama_model_config,
    tied={"lm_head.weight": "model.embed_tokens.weight"}, causal=True)

FAMILIES = {family.name: family for family in (BERT, LLAMA)}


def family_of(cfg: ModelConfig) -> Family:
    """The family of a model config, by its `arch`."""
    if cfg.arch not in FAMILIES:
        raise ConfigError(f"model.arch={cfg.arch!r} has no Hugging Face mapping; accepted: {', '.join(FAMILIES)}")
    return FAMILIES[cfg.arch]


def family_of_hf(hf_config: dict[str, Any]) -> Family:
    """The family whose architecture a Transformers config.json names."""
    names = hf_config.get("architectures") or []
    for family in FAMILIES.values():
        if family.architecture in names:
            return family
    accepted = ", ".join(f.architecture for f in FAMILIES.values())
    raise ConfigError(f"config.json architectures={names}; accepted: {accepted}")
