"""Importing what users bring: Llama folders with a byte-level BPE tokenizer.json (Llama-3 style) or a
sentencepiece tokenizer.model with bos/eos and byte fallback (Llama-2 / TinyLlama style).

The folders are made at test time (tokenizers, sentencepiece, transformers; random weights).
The tokenizer.json one is imported, decoded, trained on for a few steps with `python -m
train.main --workdir=...` alone, and exported, each stage compared with the original folder
in Transformers.
"""

import json
import shutil
import sys

import numpy as np
import pytest
import sentencepiece as spm
import torch
import transformers
from absl import flags

from train import main as train_main
from train import program
from train.checkpoints.params import CheckpointParams
from train.generate.completions import Sampling, complete
from train.interop.hf_export import export_hf
from train.interop.hf_import import import_hf
from train.workdir import open_workdir

from tests.data_fixtures import (BOS, EOS, SMALL_CORPUS_BYTES, VARIED_TEXTS, byte_level_bpe_folder, shared_dir,
                                 small_corpus)

PROMPTS = ["Return the", "The default value is", "If"]


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    """A LlamaForCausalLM folder as the Hub has them: config, safetensors, generation config, tokenizer.json."""
    folder = tmp_path_factory.mktemp("llama3-style") / "hf"
    folder.mkdir()
    tokenizer = byte_level_bpe_folder(tmp_path_factory)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer / name, folder)
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    config = transformers.LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5, tie_word_embeddings=False,
        bos_token_id=tok.convert_tokens_to_ids(BOS), eos_token_id=tok.convert_tokens_to_ids(EOS),
        initializer_range=0.2)  # wide weights: greedy choices far from ties
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def _hf_greedy(folder, prompts, max_new_tokens):
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    eos = model.generation_config.eos_token_id
    out = []
    with torch.no_grad():
        for prompt in prompts:
            inputs = tok(prompt, return_tensors="pt")
            row = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens)[0, inputs["input_ids"].shape[1]:]
            row = row.tolist()
            out.append(row[:row.index(eos) + 1] if eos in row else row)
    return out


def _hf_logits(folder, ids):
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].numpy()


def _train_cli(capsys, monkeypatch, *args):
    """`python -m train.main ARGS` in this process: (exit status, stdout)."""
    monkeypatch.setattr(sys, "argv", ["train.main", *args])
    flags.FLAGS.unparse_flags()
    with pytest.raises(SystemExit) as info:
        program.run(train_main.main)
    return info.value.code, capsys.readouterr().out


@pytest.mark.slow  # a decode compile and a few train steps: about half a minute
def test_import_decode_train_export_a_tokenizer_json_llama(llama_folder, tmp_path, tmp_path_factory, capsys,
                                                            monkeypatch):
    workdir = tmp_path / "imported"
    import_hf(llama_folder, workdir)
    assert (workdir / "tokenizer.json").is_file() and not (workdir / "tokenizer.model").exists()

    # Decoded at once with its own tokenizer: the original folder's greedy continuations.
    trained = open_workdir(workdir)
    original = transformers.AutoTokenizer.from_pretrained(llama_folder)
    assert [[trained.tokenizer.cls_id] + trained.tokenizer.encode(t) for t in VARIED_TEXTS] == \
        [original(t)["input_ids"] for t in VARIED_TEXTS]
    assert complete(trained, PROMPTS, Sampling(max_new_tokens=8)).token_ids == _hf_greedy(llama_folder, PROMPTS, 8)

    # Pretraining goes on from step 0 with the workdir's own config.json (only overrides given).
    corpus = shared_dir(tmp_path_factory) / "corpus"
    code, out = _train_cli(capsys, monkeypatch, f"--workdir={workdir}", "--config.train.steps=3",
                           "--config.train.batch_size=8", "--config.train.checkpoint_every=3",
                           "--config.train.eval_batches=1", "--config.train.progress_bar=false",
                           f"--config.data.max_corpus_bytes={SMALL_CORPUS_BYTES}", f"--config.data.cache_dir={corpus}")
    assert not code and "resumed from checkpoint step 0" in out, out
    assert "tokenizer.json" in out  # trained on with the imported tokenizer, none trained instead

    # Step 0 exports back to the original model: equal logits and equal tokenizer ids.
    export_hf(CheckpointParams(workdir, 0), tmp_path / "step0")
    ids = original("Return the number of items.")["input_ids"]
    np.testing.assert_allclose(_hf_logits(tmp_path / "step0", ids), _hf_logits(llama_folder, ids), atol=1e-5)
    exported = transformers.AutoTokenizer.from_pretrained(tmp_path / "step0")
    assert [exported(t)["input_ids"] for t in VARIED_TEXTS] == [original(t)["input_ids"] for t in VARIED_TEXTS]
    generation = json.loads((tmp_path / "step0" / "generation_config.json").read_text())
    assert (generation["bos_token_id"], generation["eos_token_id"]) == (original.bos_token_id, original.eos_token_id)

    # The fine-tuned step exports with meshlm's logits, no longer the original's.
    export_hf(CheckpointParams(workdir), tmp_path / "tuned")
    tuned = open_workdir(workdir)
    assert tuned.step == 3
    logits = _meshlm_logits(tuned, ids)
    np.testing.assert_allclose(_hf_logits(tmp_path / "tuned", ids), logits, atol=1e-4)
    assert np.abs(logits - _hf_logits(llama_folder, ids)).max() > 1e-3


def _meshlm_logits(trained, ids):
    """The JAX model's logits for one unpadded row."""
    import jax
    from flax import nnx

    model = nnx.merge(trained.layout.graphdef, jax.device_get(trained.params))
    tokens = np.asarray([ids], np.int32)
    return np.asarray(model(tokens, np.ones_like(tokens), np.arange(len(ids), dtype=np.int32)[None]))[0]


def test_a_llama2_style_sentencepiece_folder(tmp_path, tmp_path_factory):
    """tokenizer.model with <s>/</s>, no pad, byte fallback: imported as is, exported as an equal tokenizer.json."""
    folder = tmp_path / "hf"
    folder.mkdir()
    spm.SentencePieceTrainer.train(
        input=str(small_corpus(tmp_path_factory).train), model_prefix=str(folder / "tokenizer"), vocab_size=400,
        model_type="bpe", byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, character_coverage=0.99, minloglevel=2)
    config = transformers.LlamaConfig(vocab_size=400, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
                                      bos_token_id=1, eos_token_id=2)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    import_hf(folder, tmp_path / "imported")
    source = CheckpointParams(tmp_path / "imported")
    tok = source.tokenizer()
    assert (tok.cls_id, tok.sep_id, tok.pad_id, tok.mask_id) == (1, 2, 2, None)  # <s> starts, </s> ends and pads
    export_hf(source, tmp_path / "out")
    exported = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    assert exported.is_fast and (exported.bos_token, exported.eos_token) == ("<s>", "</s>")
    assert [exported(t)["input_ids"] for t in VARIED_TEXTS] == [[1] + tok.encode(t) for t in VARIED_TEXTS]
    assert (tmp_path / "out" / "tokenizer.model").read_bytes() == (folder / "tokenizer.model").read_bytes()
