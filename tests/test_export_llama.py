"""Decoder HF export: Transformers' LlamaForCausalLM (PyTorch, CPU) computes the JAX decoder's logits,
tied and untied, with grouped-query attention; import reverses the export bit for bit."""

import json

import numpy as np
import pytest
import transformers
from safetensors import safe_open

from train.config import ConfigError
from train.interop.hf_export import export_hf
from train.interop.hf_import import import_hf
from train.checkpoints.params import CheckpointParams

from tests.data_fixtures import small_tokenizer
from tests.export_fixtures import (fixed_batch, hf_logits, jax_logits, random_params, tiny_export_config,
                                    write_checkpoint)

# Both with 2 kv heads for 4 query heads (GQA). The untied one also has a head dim that is not
# hidden / heads (4 x 16 != 32), another RoPE base and eps, and is saved on another mesh.
VARIANTS = {
    "tied": (dict(num_kv_heads=2, layer_norm_eps=1e-5, tie_embeddings=True), (2, 2, 2)),
    "untied": (dict(num_kv_heads=2, head_dim=16, rope_theta=500_000.0, layer_norm_eps=1e-6,
                    tie_embeddings=False), (1, 4, 2)),
}


def llama_export_config(vocab_size: int, **model):
    return tiny_export_config(vocab_size, arch="llama", init_std=0.1, **model)


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def decoder(request, tmp_path_factory):
    """A workdir holding a tiny Llama decoder with random weights, saved sharded."""
    model, mesh_shape = VARIANTS[request.param]
    tokenizer = small_tokenizer(tmp_path_factory)
    config = llama_export_config(tokenizer.vocab_size, **model)
    params = random_params(config.model, seed=5)
    workdir = tmp_path_factory.mktemp(f"llama-{request.param}") / "work"
    write_checkpoint(workdir, config, params, tokenizer, mesh_shape=mesh_shape)
    return workdir, config, params, tokenizer


def _hf_logits(folder, tokens, segment_ids, positions):
    return hf_logits(transformers.LlamaForCausalLM, folder, tokens, segment_ids, positions)


def test_llama_export_loads_in_transformers_with_equal_logits(decoder, tmp_path):
    workdir, config, params, tokenizer = decoder
    m = config.model
    export_hf(CheckpointParams(workdir), tmp_path / "hf")
    hf = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert hf["architectures"] == ["LlamaForCausalLM"] and hf["hidden_act"] == "silu"
    assert hf["rope_theta"] == m.rope_theta
    assert hf["rope_parameters"] == {"rope_type": "default", "rope_theta": m.rope_theta}
    assert (hf["rms_norm_eps"], hf["num_key_value_heads"], hf["head_dim"]) == (m.layer_norm_eps, 2, m.resolved_head_dim)
    assert hf["attention_bias"] is False and hf["mlp_bias"] is False and hf["tie_word_embeddings"] == m.tie_embeddings
    specials = (hf["bos_token_id"], hf["eos_token_id"], hf["pad_token_id"])
    assert specials == (tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id)
    with safe_open(tmp_path / "hf" / "model.safetensors", "np") as f:
        assert f.metadata() == {"format": "pt"}
        assert ("lm_head.weight" in f.keys()) == (not m.tie_embeddings)  # tied: left out, as Transformers expects
        q_dim = m.num_heads * m.resolved_head_dim
        assert f.get_tensor("model.layers.1.self_attn.q_proj.weight").shape == (q_dim, m.hidden)  # [out, in]
        assert f.get_tensor("model.layers.0.self_attn.k_proj.weight").shape == (2 * m.resolved_head_dim, m.hidden)
        assert f.get_tensor("model.layers.0.mlp.gate_proj.weight").shape == (m.mlp_dim, m.hidden)

    tokens, segment_ids, positions = fixed_batch(m.vocab_size, tokenizer.pad_id)
    want = jax_logits(config, params, tokens, segment_ids, positions)
    got, model = _hf_logits(tmp_path / "hf", tokens, segment_ids, positions)
    real = segment_ids > 0
    assert np.abs(got[real] - want[real]).max() <= 1e-4
    assert np.abs(want[real]).max() > 1.0  # random weights give logits far from zero: the check has teeth
    tied = model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert tied == m.tie_embeddings


def test_llama_export_import_export_is_identical(decoder, tmp_path):
    workdir, config, params, _ = decoder
    export_hf(CheckpointParams(workdir), tmp_path / "first")
    imported = import_hf(tmp_path / "first", tmp_path / "imported")
    assert imported.model == config.model
    source = CheckpointParams(tmp_path / "imported")
    np.testing.assert_array_equal(source.read("layers.attention.key.kernel"),
                                  params["layers"]["attention"]["key"]["kernel"])
    export_hf(source, tmp_path / "second")
    for name in ("model.safetensors", "config.json", "tokenizer.model"):
        assert (tmp_path / "first" / name).read_bytes() == (tmp_path / "second" / name).read_bytes(), name


@pytest.mark.parametrize("shard_size", [None, "40KB"])
def test_llama_import_accepts_a_transformers_saved_model(decoder, tmp_path, shard_size):
    """A folder written by save_pretrained (not by us) imports to the same parameters, also when
    its weights are split over several files (model.safetensors.index.json), as large models are."""
    workdir, config, params, _ = decoder
    export_hf(CheckpointParams(workdir), tmp_path / "ours")
    model = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "ours")
    model.save_pretrained(tmp_path / "saved", **({"max_shard_size": shard_size} if shard_size else {}))
    assert (tmp_path / "saved" / "model.safetensors").is_file() == (shard_size is None)
    imported = import_hf(tmp_path / "saved", tmp_path / "imported")
    assert imported.model == config.model
    source, original = CheckpointParams(tmp_path / "imported"), CheckpointParams(workdir)
    assert source.specs == original.specs
    for name in source.specs:
        np.testing.assert_array_equal(source.read(name), original.read(name), err_msg=name)
    if shard_size:  # a shard lost in the copy: one line naming it
        shard = sorted((tmp_path / "saved").glob("model-*.safetensors"))[-1]
        shard.unlink()
        with pytest.raises(ValueError, match=f"names shard\\(s\\) that are not in .*: {shard.name}$"):
            import_hf(tmp_path / "saved", tmp_path / "imported-again")


def test_llama_features_transformers_cannot_express_are_refused_in_one_line(tmp_path_factory, tmp_path):
    tokenizer = small_tokenizer(tmp_path_factory)
    # hidden 30 with 4 heads of 8: meshlm runs it, LlamaConfig itself rejects it.
    with pytest.raises(Exception, match="not a multiple"):  # huggingface_hub StrictDataclassClassValidationError
        transformers.LlamaConfig(hidden_size=30, num_attention_heads=4, head_dim=8)
    odd = llama_export_config(tokenizer.vocab_size, hidden=30, head_dim=8, num_kv_heads=2)
    write_checkpoint(tmp_path / "odd", odd, random_params(odd.model), tokenizer, mesh_shape=(1, 1, 1))
    with pytest.raises(ConfigError, match=r"LlamaForCausalLM cannot express: model.hidden=30 not divisible") as error:
        export_hf(CheckpointParams(tmp_path / "odd"), tmp_path / "out")
    assert "\n" not in str(error.value)

    good = llama_export_config(tokenizer.vocab_size, num_kv_heads=2)
    write_checkpoint(tmp_path / "good", good, random_params(good.model), tokenizer, mesh_shape=(1, 1, 1))
    export_hf(CheckpointParams(tmp_path / "good"), tmp_path / "hf")
    hf = json.loads((tmp_path / "hf" / "config.json").read_text())
    for change, words in (
            ({"attention_bias": True}, "attention_bias=True"),
            ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 1e4, "factor": 8.0}},
             "rope_parameters.rope_type='llama3'"),
            ({"hidden_act": "gelu"}, "hidden_act='gelu'")):
        (tmp_path / "hf" / "config.json").write_text(json.dumps({**hf, **change}))
        with pytest.raises(ConfigError, match=f"unsupported LlamaForCausalLM settings: {words}") as error:
            import_hf(tmp_path / "hf", tmp_path / "imported")
        assert "\n" not in str(error.value)
