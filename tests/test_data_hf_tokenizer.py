"""Tokenizer kinds: a sentencepiece model written as tokenizer.json encodes exactly as meshlm's Tokenizer,
and an imported tokenizer.json (HFTokenizer) stands behind the same interface, data pipeline included."""

import json
import shutil

import numpy as np
import pytest
import sentencepiece as spm
import tokenizers

from data.builtin_corpus import read_documents
from data.fast_tokenizer import fast_tokenizer
from data.hf_tokenizer import HFTokenizer
from data.pipeline import prepare
from data.sentencepiece_training import train_tokenizer
from data.tokenizer import Tokenizer, open_tokenizer, tokenizer_file

from tests.data_fixtures import (BOS, EOS, VARIED_TEXTS, byte_level_bpe_folder, small_corpus, small_store_tokenizer,
                                 small_tokenizer, write_text_files)


def _llama2_style(corpus, path, model_type):
    """A sentencepiece model as Llama-2 ships one: byte fallback, no normalization, bos/eos, no pad, no symbols."""
    spm.SentencePieceTrainer.train(
        input=str(corpus.train), model_prefix=str(path), vocab_size=400, model_type=model_type, byte_fallback=True,
        normalization_rule_name="identity", remove_extra_whitespaces=False, unk_id=0, bos_id=1, eos_id=2,
        pad_id=-1, split_digits=True, allow_whitespace_only_pieces=True, character_coverage=0.99, minloglevel=2)
    return Tokenizer(f"{path}.model")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return small_corpus(tmp_path_factory)


@pytest.fixture(scope="module", params=["unigram", "bpe", "char", "llama2-bpe", "llama2-unigram"])
def spm_tokenizer(request, corpus, tmp_path_factory):
    kind = request.param
    if kind == "unigram":
        return small_tokenizer(tmp_path_factory)
    if kind == "bpe":
        return small_store_tokenizer(tmp_path_factory)
    folder = tmp_path_factory.mktemp(kind)
    if kind == "char":
        return train_tokenizer(corpus.train, folder / "char.model", vocab_size=85, model_type="char")
    return _llama2_style(corpus, folder / kind, kind.split("-")[1])


def test_tokenizer_json_encodes_every_text_as_sentencepiece_does(spm_tokenizer, corpus, tmp_path):
    fast_tokenizer(spm_tokenizer).save(str(tmp_path / "tokenizer.json"))
    reloaded = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))  # what a user's library reads
    texts = VARIED_TEXTS + read_documents(corpus.train) + read_documents(corpus.validation)
    ours = spm_tokenizer.encode_batch(texts)
    theirs = [e.ids for e in reloaded.encode_batch(texts, add_special_tokens=False)]
    wrong = [(text[:60], a, b) for text, a, b in zip(texts, ours, theirs) if a != b]
    assert not wrong, wrong[:3]
    assert sum(map(len, ours)) > 20_000  # the corpus really was compared
    if spm_tokenizer.mask_id is not None:
        assert ours[VARIED_TEXTS.index("Let there be [MASK]: and")].count(spm_tokenizer.mask_id) == 1


def test_tokenizer_json_decodes_as_meshlm(tmp_path_factory):
    tok = small_tokenizer(tmp_path_factory)
    text = "The [MASK] returns a list of 3 items."
    ids = tok.encode(text)
    assert fast_tokenizer(tok).decode(ids, skip_special_tokens=False) == tok.decode(ids) == text


def test_word_models_agree_on_known_words(corpus, tmp_path):
    """A word model's tokenizer.json differs only for runs of unknown words (one [UNK] each, not one in all)."""
    tok = train_tokenizer(corpus.train, tmp_path / "w.model", vocab_size=400, model_type="word")
    fast = fast_tokenizer(tok)
    text = "Return the [MASK] of the list and the value"
    assert fast.encode(text, add_special_tokens=False).ids == tok.encode(text)
    assert tok.mask_id in tok.encode(text) and tok.unk_id not in tok.encode(text)


def test_literal_symbols_encode_as_their_id_alone(tmp_path_factory):
    """[CLS]/[SEP]/[MASK] in text: the id alone, never the lone "▁" sentencepiece puts before a symbol."""
    tok = small_tokenizer(tmp_path_factory)
    assert tok.encode("a [SEP] b") == tok.encode("a") + [tok.sep_id] + tok.encode("b")
    assert tok.encode("[CLS] x") == [tok.cls_id] + tok.encode("x")
    assert tok.encode("x [MASK]") == tok.encode("x") + [tok.mask_id]


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    return byte_level_bpe_folder(tmp_path_factory)


def test_a_tokenizer_json_behind_meshlms_interface(hf_folder):
    tok = open_tokenizer(hf_folder / "tokenizer.json")
    backend = tokenizers.Tokenizer.from_file(str(hf_folder / "tokenizer.json"))
    assert isinstance(tok, HFTokenizer) and tok.vocab_size == backend.get_vocab_size() == 400
    bos, eos = backend.token_to_id(BOS), backend.token_to_id(EOS)
    # bos/eos start and end documents; no pad token: the end pads; no mask, no unk (byte level).
    assert (tok.cls_id, tok.sep_id, tok.pad_id, tok.mask_id, tok.unk_id) == (bos, eos, eos, None, None)
    np.testing.assert_array_equal(tok.special_ids(), sorted({bos, eos}))
    text = "Return the number of items, e.g. 3.5  or 日本."
    assert tok.encode(text) == backend.encode(text, add_special_tokens=False).ids  # no bos from its post-processor
    assert tok.decode([bos] + tok.encode(text) + [eos]) == text
    assert tok.encode_batch([text, ""]) == [tok.encode(text), []]
    table = tok.word_start_table()
    assert table[[bos, eos]].all() and table[tok.encode(" items")[0]] and not table[tok.encode("items")[-1]]


def test_roles_come_from_tokenizer_config_and_count_in_sha256(hf_folder, tmp_path):
    shutil.copytree(hf_folder, tmp_path / "t")
    path = tmp_path / "t" / "tokenizer.json"
    config = json.loads((tmp_path / "t" / "tokenizer_config.json").read_text())
    before = HFTokenizer(path).sha256()
    (tmp_path / "t" / "tokenizer_config.json").write_text(json.dumps({**config, "pad_token": BOS}))
    assert HFTokenizer(path).pad_id == HFTokenizer(path).cls_id and HFTokenizer(path).sha256() != before
    (tmp_path / "t" / "tokenizer_config.json").write_text(json.dumps({**config, "eos_token": "<|nope|>"}))
    with pytest.raises(ValueError, match=r"names eos_token '<\|nope\|>', which tokenizer.json does not have"):
        HFTokenizer(path)
    del config["eos_token"]
    (tmp_path / "t" / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="names no eos_token"):
        HFTokenizer(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="is not a Hugging Face tokenizer.json"):
        HFTokenizer(path)


def test_a_workdir_holds_one_tokenizer(hf_folder, tmp_path_factory, tmp_path):
    assert tokenizer_file(tmp_path) is None
    shutil.copy(hf_folder / "tokenizer.json", tmp_path)
    assert tokenizer_file(tmp_path) == tmp_path / "tokenizer.json"
    shutil.copy(small_tokenizer(tmp_path_factory).path, tmp_path / "tokenizer.model")
    with pytest.raises(ValueError, match="holds both tokenizer.model and tokenizer.json"):
        tokenizer_file(tmp_path)


def test_data_pipeline_packs_with_an_imported_tokenizer(hf_folder, tmp_path):
    """A workdir with a tokenizer.json: documents packed as bos ... eos, never a tokenizer trained instead."""
    docs = write_text_files(tmp_path / "text")
    workdir = tmp_path / "w"
    workdir.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(hf_folder / name, workdir)
    data = prepare(workdir, f"files:{tmp_path / 'text'}/*", seq_len=32, vocab_size=512)
    tok = data.tokenizer
    assert isinstance(tok, HFTokenizer) and not (workdir / "tokenizer.model").exists()
    rows = data.train
    starts = rows.tokens[(rows.positions == 0) & (rows.segment_ids > 0)]
    assert (starts == tok.cls_id).all() and (rows.tokens == tok.sep_id).sum() > 0
    store_tokens = sum(len(tok.encode(d)) for d in docs)
    assert store_tokens > 1000
    with pytest.raises(ValueError, match="has 400 ids, more than the vocab_size 300"):
        prepare(workdir, f"files:{tmp_path / 'text'}/*", seq_len=32, vocab_size=300)
