"""data/tokenizer.py and data/sentencepiece_training.py: sentencepiece trained at test time on a small built-in corpus."""

import hashlib
import os

import numpy as np
import pytest

from data import tokenizer as tk
from data import sentencepiece_training as training
from data.sentencepiece_training import load_or_train_tokenizer, train_tokenizer
from data.tokenizer import Tokenizer
from tests.data_fixtures import SMALL_VOCAB, small_corpus, small_tokenizer

TEXT = "Return a new array of the given shape, filled with zeros."


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return small_corpus(tmp_path_factory)


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return small_tokenizer(tmp_path_factory)


def test_round_trip_of_ordinary_text(tok):
    ids = tok.encode(TEXT)
    assert len(ids) > 5 and all(5 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == TEXT
    assert tok.decode(np.asarray(ids, np.int32)) == TEXT


def test_special_ids_are_fixed(tok):
    assert tok.vocab_size == SMALL_VOCAB
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 1, 2, 3, 4)
    assert (tk.PAD_ID, tk.UNK_ID, tk.CLS_ID, tk.SEP_ID, tk.MASK_ID) == (0, 1, 2, 3, 4)
    assert [tok.id_to_piece(i) for i in range(5)] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]",
                                                      "[MASK]"]
    np.testing.assert_array_equal(tok.special_ids(), [0, 2, 3, 4])
    assert tok.special_ids().dtype == np.int32


def test_mask_text_encodes_to_mask_id_and_decodes_readably(tok):
    ids = tok.encode("The [MASK] returns an array.")
    assert ids.count(tk.MASK_ID) == 1
    # As training masks a word: the mask id takes the word's place, no lone "▁" before it.
    assert tok.id_to_piece(ids[ids.index(tk.MASK_ID) - 1]) != "\u2581"
    assert tok.decode(ids) == "The [MASK] returns an array."


def test_decode_drops_pad_cls_and_sep(tok):
    ids = [tk.CLS_ID] + tok.encode(TEXT) + [tk.SEP_ID, tk.PAD_ID, tk.PAD_ID]
    assert tok.decode(ids) == TEXT


def test_encode_batch_matches_encode(tok):
    texts = [TEXT, "", "Open the file [MASK] read it.", "x" * 50]
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]


def test_word_start_table_marks_first_piece_of_each_word(tok):
    table = tok.word_start_table()
    assert table.shape == (tok.vocab_size,) and table.dtype == bool
    assert table[[0, 2, 3, 4]].all() and not table[1]
    for i in range(5, tok.vocab_size):
        assert table[i] == tok.id_to_piece(i).startswith("\u2581"), tok.id_to_piece(i)
    assert 0 < table.mean() < 1
    ids = tok.encode("multidimensional")
    assert len(ids) > 1 and table[ids[0]] and not table[ids[1:]].any()


def test_sha256_names_the_model_file(tok):
    assert tok.sha256() == hashlib.sha256(tok.path.read_bytes()).hexdigest()


def test_training_is_deterministic_and_seeded(corpus, tmp_path):
    def train(name, seed):
        return train_tokenizer(corpus.train, tmp_path / name, vocab_size=300,
                               model_type="bpe", max_sentences=100, seed=seed).sha256()
    assert train("a.model", 0) == train("b.model", 0)
    assert train("c.model", 1) != train("a.model", 0)


def test_training_writes_only_the_model_vocab_and_hash(corpus, tmp_path):
    train_tokenizer(corpus.train, tmp_path / "tok.model", vocab_size=300, model_type="bpe")
    assert sorted(os.listdir(tmp_path)) == ["tok.model", "tok.model.sha256", "tok.vocab"]


@pytest.mark.parametrize("model_type", ["bpe", "char"])
def test_other_model_types_keep_special_ids(corpus, tmp_path, model_type):
    vocab_size = 300 if model_type == "bpe" else 60
    tok = train_tokenizer(corpus.train, tmp_path / "t.model", vocab_size=vocab_size,
                          model_type=model_type)
    assert tok.vocab_size == vocab_size
    assert (tok.cls_id, tok.sep_id, tok.mask_id) == (2, 3, 4)
    assert tk.MASK_ID in tok.encode("a [MASK] b")


def test_word_model_reports_its_own_ids_and_encodes_mask_text(corpus, tmp_path):
    tok = train_tokenizer(corpus.train, tmp_path / "w.model", vocab_size=400, model_type="word")
    assert tok.decode([tok.cls_id, tok.sep_id]) == ""
    assert tok.encode("the [MASK] is")[1] == tok.mask_id
    assert tok.id_to_piece(tok.mask_id) == "[MASK]"


def test_reload_with_other_vocab_size_names_both_numbers(tok):
    with pytest.raises(ValueError, match=rf"{SMALL_VOCAB}.*1234|1234.*{SMALL_VOCAB}"):
        load_or_train_tokenizer(tok.path, "/nonexistent.txt", vocab_size=1234)


def test_load_or_train_reuses_the_existing_model(tok):
    before = tok.path.stat().st_mtime_ns
    again = load_or_train_tokenizer(tok.path, "/nonexistent.txt", vocab_size=SMALL_VOCAB)
    assert again.sha256() == tok.sha256() and tok.path.stat().st_mtime_ns == before


def test_missing_or_foreign_model_file_is_one_clear_error(corpus, tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer model at .*missing.model"):
        Tokenizer(tmp_path / "missing.model")
    with pytest.raises(ValueError, match=r"train.txt is not a sentencepiece model"):
        Tokenizer(corpus.train)


def test_bad_training_arguments_are_clear_errors(corpus, tmp_path):
    with pytest.raises(ValueError, match="model_type 'wordpiece' is not one of unigram, bpe"):
        train_tokenizer(corpus.train, tmp_path / "t.model", vocab_size=300,
                        model_type="wordpiece")
    with pytest.raises(FileNotFoundError, match="no training text at"):
        train_tokenizer(tmp_path / "none.txt", tmp_path / "t.model", vocab_size=300)
    too_high = r"vocab_size=50000.*: Vocabulary size too high \(50000\). Please set it to a value"
    with pytest.raises(ValueError, match=too_high):
        train_tokenizer(corpus.train, tmp_path / "t.model", vocab_size=50_000)
    with pytest.raises(ValueError, match=r"has (\d+) pieces, not the vocab_size 500 asked "
                                         r"for: set vocab_size=\1"):
        train_tokenizer(corpus.train, tmp_path / "t.model", vocab_size=500, model_type="char")
    assert not (tmp_path / "t.model").exists()


def test_documents_longer_than_sentencepieces_line_limit_still_train(tmp_path):
    """sentencepiece skips training lines over 4192 bytes; ours cuts them at spaces first."""
    words = [f"w{i}" for i in range(40)]
    rng = np.random.default_rng(0)
    doc = " ".join(rng.choice(words, 3000))  # one ~10 KB document
    tok = training.train_tokenizer_on_documents(iter([doc]), tmp_path / "w.model", vocab_size=48,  # 40 words, 8 special pieces
                                          model_type="word")
    ids = tok.encode(" ".join(words))
    assert len(ids) == len(words) and tk.UNK_ID not in ids


def test_long_lines_are_cut_at_spaces_within_the_limit():
    line = "ab " * 10 + "é" * 7  # the last word is 14 bytes: cut between characters
    pieces = list(training._pieces_of_line(line, limit=8))
    assert all(len(p.encode()) <= 8 for p in pieces)
    assert " ".join(pieces).replace(" ", "") == line.replace(" ", "")
    assert pieces[0] == "ab ab ab"
