"""HF export: Transformers (PyTorch, CPU) loads it and computes the JAX model's logits; import reverses it."""

import json

import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers

from train.config import ConfigError
from train.interop.hf_export import export_hf
from train.interop.hf_import import import_hf
from train.checkpoints.params import CheckpointParams

from tests.data_fixtures import small_tokenizer
from tests.export_fixtures import (fixed_batch, hf_logits, jax_logits, random_params, tiny_export_config,
                                    write_checkpoint)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A workdir whose checkpoint was written sharded over a (2, 2, 2) mesh."""
    tokenizer = small_tokenizer(tmp_path_factory)
    config = tiny_export_config(tokenizer.vocab_size)
    params = random_params(config.model)
    workdir = write_checkpoint(tmp_path_factory.mktemp("export") / "work", config, params, tokenizer)
    return workdir, config, params, tokenizer


def _hf_logits(folder, tokens, segment_ids, positions):
    return hf_logits(transformers.BertForMaskedLM, folder, tokens, segment_ids, positions)


def test_hf_export_loads_in_transformers_with_equal_logits(trained, tmp_path):
    workdir, config, params, tokenizer = trained
    export_hf(CheckpointParams(workdir), tmp_path / "hf")
    hf_config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert hf_config["architectures"] == ["BertForMaskedLM"] and hf_config["hidden_act"] == "gelu"
    assert hf_config["layer_norm_eps"] == config.model.layer_norm_eps
    assert hf_config["pad_token_id"] == tokenizer.pad_id and hf_config["max_position_embeddings"] == 16
    with open(tmp_path / "hf" / "model.safetensors", "rb") as f:
        assert safetensors.numpy.load(f.read())  # the reference reader accepts the streamed file
    from safetensors import safe_open
    with safe_open(tmp_path / "hf" / "model.safetensors", "np") as f:
        assert f.metadata() == {"format": "pt"}
        assert "cls.predictions.decoder.weight" not in f.keys()  # tied, left out as Transformers expects
        assert f.get_tensor("bert.encoder.layer.1.intermediate.dense.weight").shape == (64, 32)  # [out, in]

    tokens, segment_ids, positions = fixed_batch(config.model.vocab_size, tokenizer.pad_id)
    want = jax_logits(config, params, tokens, segment_ids, positions)
    got, model = _hf_logits(tmp_path / "hf", tokens, segment_ids, positions)
    real = segment_ids > 0
    assert np.abs(got[real] - want[real]).max() <= 1e-4
    assert model.cls.predictions.decoder.weight.data_ptr() == model.bert.embeddings.word_embeddings.weight.data_ptr()


def test_bf16_export_holds_rounded_weights(trained, tmp_path):
    workdir, config, params, tokenizer = trained
    export_hf(CheckpointParams(workdir), tmp_path / "hf", "bfloat16")
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["dtype"] == "bfloat16"
    tokens, segment_ids, positions = fixed_batch(config.model.vocab_size, tokenizer.pad_id)
    got, model = _hf_logits(tmp_path / "hf", tokens, segment_ids, positions)
    assert model.bert.embeddings.word_embeddings.weight.dtype == torch.bfloat16
    expected = params["embeddings"]["word"]["embedding"].astype(ml_dtypes.bfloat16).astype(np.float32)
    np.testing.assert_array_equal(model.bert.embeddings.word_embeddings.weight.detach().float().numpy(), expected)
    want = jax_logits(config, params, tokens, segment_ids, positions)
    real = segment_ids > 0
    assert np.abs(got[real] - want[real]).max() < 0.25 * np.abs(want[real]).max()  # bf16 compute, same model


def test_export_import_export_is_identical(trained, tmp_path):
    workdir, config, params, _ = trained
    export_hf(CheckpointParams(workdir), tmp_path / "first")
    imported = import_hf(tmp_path / "first", tmp_path / "imported")
    assert imported.model == config.model
    export_hf(CheckpointParams(tmp_path / "imported"), tmp_path / "second")
    for name in ("model.safetensors", "config.json", "tokenizer.model"):
        assert (tmp_path / "first" / name).read_bytes() == (tmp_path / "second" / name).read_bytes(), name


def test_import_accepts_a_transformers_saved_model(trained, tmp_path):
    """A folder written by save_pretrained (not by us) imports to the same logits."""
    workdir, config, params, tokenizer = trained
    export_hf(CheckpointParams(workdir), tmp_path / "ours")
    model = transformers.BertForMaskedLM.from_pretrained(tmp_path / "ours")
    model.save_pretrained(tmp_path / "saved")
    import_hf(tmp_path / "saved", tmp_path / "imported")
    source = CheckpointParams(tmp_path / "imported")
    np.testing.assert_array_equal(source.read("layers.attention.query.kernel"),
                                  params["layers"]["attention"]["query"]["kernel"])


def test_unsupported_settings_are_refused_in_one_line(trained, tmp_path):
    workdir, config, params, tokenizer = trained
    wide = tiny_export_config(tokenizer.vocab_size, head_dim=16)  # 4 heads x 16 != hidden 32
    write_checkpoint(tmp_path / "wide", wide, random_params(wide.model), tokenizer, mesh_shape=(1, 1, 1))
    with pytest.raises(ConfigError, match=r"BertForMaskedLM cannot express: model.head_dim=16") as error:
        export_hf(CheckpointParams(tmp_path / "wide"), tmp_path / "out")
    assert "\n" not in str(error.value)

    export_hf(CheckpointParams(workdir), tmp_path / "hf")
    hf_config = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**hf_config, "hidden_act": "gelu_new"}))
    with pytest.raises(ConfigError, match=r"unsupported BertForMaskedLM settings: hidden_act='gelu_new'"):
        import_hf(tmp_path / "hf", tmp_path / "imported")


def test_tokenizer_files_load_with_auto_tokenizer(trained, tmp_path):
    """AutoTokenizer loads the export's tokenizer.json as a fast tokenizer (tests/test_handoff_transformers.py
    holds the full comparison, without sentencepiece installed)."""
    workdir, _, _, tokenizer = trained
    export_hf(CheckpointParams(workdir), tmp_path / "hf")
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert hf_tokenizer.is_fast and (tmp_path / "hf" / "tokenizer.json").is_file()
    text = "Return the number of items in the list."
    assert hf_tokenizer(text, add_special_tokens=False)["input_ids"] == tokenizer.encode(text)
    assert hf_tokenizer.mask_token_id == tokenizer.mask_id and hf_tokenizer.pad_token_id == tokenizer.pad_id
