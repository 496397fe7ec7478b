"""data/packing.py and data/pipeline.py: packed rows keep every token, segments well formed."""

import numpy as np
import pytest

from data.builtin_corpus import read_documents
from data.packing import PackedRows, pack_documents
from data.pipeline import prepare
from tests.data_fixtures import SMALL_CORPUS_BYTES, SMALL_VOCAB, shared_dir

CLS, SEP, PAD = 2, 3, 0


def distinct_docs(lengths: list[int]) -> list[list[int]]:
    """Documents whose tokens never repeat, so every token can be traced to its place."""
    docs, start = [], 10
    for n in lengths:
        docs.append(list(range(start, start + n)))
        start += n
    return docs


def segments(rows: PackedRows) -> list[list[list[int]]]:
    """Per row, the content (between [CLS] and [SEP]) of each segment, checking its form."""
    result = []
    for tokens, seg, pos in zip(rows.tokens, rows.segment_ids, rows.positions):
        count = seg.max()
        assert np.array_equal(np.unique(seg[seg > 0]), np.arange(1, count + 1))
        real = seg > 0
        assert not real[np.argmin(real):].any() or real.all(), "padding only at the row end"
        assert (tokens[~real] == PAD).all() and (pos[~real] == 0).all()
        row = []
        for s in range(1, count + 1):
            where = np.flatnonzero(seg == s)
            assert np.array_equal(where, np.arange(where[0], where[-1] + 1)), "contiguous"
            assert np.array_equal(pos[where], np.arange(len(where))), "positions restart"
            assert tokens[where[0]] == CLS and tokens[where[-1]] == SEP
            row.append(tokens[where[1:-1]].tolist())
        result.append(row)
    return result


def expected_chunks(docs: list[list[int]], seq_len: int) -> list[list[int]]:
    return [d[i:i + seq_len - 2] for d in docs for i in range(0, len(d), seq_len - 2)]


@pytest.mark.parametrize("seq_len", [4, 16, 33])
def test_every_token_is_accounted_for_in_order(seq_len):
    rng = np.random.default_rng(seq_len)
    docs = distinct_docs(rng.integers(0, 3 * seq_len, size=60).tolist())
    rows = pack_documents(docs, seq_len, cls_id=CLS, sep_id=SEP)
    assert rows.tokens.dtype == rows.segment_ids.dtype == rows.positions.dtype == np.int32
    assert rows.seq_len == seq_len
    chunks = expected_chunks(docs, seq_len)
    order = {tuple(c): i for i, c in enumerate(chunks)}
    placed = []
    for row in segments(rows):
        index = [order[tuple(c)] for c in row]
        assert index == sorted(index), "segments of a row keep document order"
        placed += index
    assert sorted(placed) == list(range(len(chunks)))


def test_long_documents_are_split_into_full_rows():
    seq_len = 10
    doc = list(range(10, 10 + 3 * (seq_len - 2) + 5))
    rows = pack_documents([doc], seq_len, cls_id=CLS, sep_id=SEP)
    assert rows.num_rows == 4
    assert segments(rows) == [[doc[0:8]], [doc[8:16]], [doc[16:24]], [doc[24:29]]]
    assert (rows.segment_ids[:3] == 1).all()


def test_first_fit_fills_an_earlier_row_and_pads_the_rest():
    rows = pack_documents([[5, 6], [7, 8, 9], [10]], 8, cls_id=CLS, sep_id=SEP)
    np.testing.assert_array_equal(rows.tokens, [[2, 5, 6, 3, 2, 10, 3, 0],
                                                [2, 7, 8, 9, 3, 0, 0, 0]])
    np.testing.assert_array_equal(rows.segment_ids, [[1, 1, 1, 1, 2, 2, 2, 0],
                                                     [1, 1, 1, 1, 1, 0, 0, 0]])
    np.testing.assert_array_equal(rows.positions, [[0, 1, 2, 3, 0, 1, 2, 0],
                                                   [0, 1, 2, 3, 4, 0, 0, 0]])


def test_empty_documents_are_skipped_and_arrays_accepted():
    rows = pack_documents([[], np.array([5, 6]), (), [7]], 8, cls_id=CLS, sep_id=SEP, pad_id=9)
    np.testing.assert_array_equal(rows.tokens, [[2, 5, 6, 3, 2, 7, 3, 9]])
    assert pack_documents([[], []], 8, cls_id=CLS, sep_id=SEP).tokens.shape == (0, 8)


def test_seq_len_below_four_is_a_clear_error():
    with pytest.raises(ValueError, match="seq_len must be at least 4.*got 3"):
        pack_documents([[5]], 3, cls_id=CLS, sep_id=SEP)


def test_save_load_round_trip_and_rows(tmp_path):
    rows = pack_documents(distinct_docs([3, 7, 20, 1, 5]), 12, cls_id=CLS, sep_id=SEP, pad_id=0)
    rows.save(tmp_path / "rows")
    loaded = PackedRows.load(tmp_path / "rows")
    for name in ("tokens", "segment_ids", "positions"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(rows, name))
    batch = loaded.rows(np.array([2, 0]))
    np.testing.assert_array_equal(batch["tokens"], rows.tokens[[2, 0]])
    assert set(batch) == {"tokens", "segment_ids", "positions"}
    assert all(v.dtype == np.int32 and v.shape == (2, 12) for v in batch.values())
    with pytest.raises(FileNotFoundError, match="no packed rows at .*nowhere"):
        PackedRows.load(tmp_path / "nowhere")


def test_mismatched_arrays_are_rejected():
    with pytest.raises(ValueError, match="share one 2-D shape"):
        PackedRows(np.zeros((2, 4), np.int32), np.zeros((2, 4), np.int32),
                   np.zeros((2, 5), np.int32))


def test_prepare_builtin_packs_the_corpus_and_reuses_its_cache(tmp_path_factory, tmp_path):
    cache = shared_dir(tmp_path_factory) / "corpus"
    data = prepare(tmp_path, "builtin", cache_dir=cache, seq_len=64, vocab_size=SMALL_VOCAB,
                           max_corpus_bytes=SMALL_CORPUS_BYTES)
    tok = data.tokenizer
    assert (tmp_path / "tokenizer.model").is_file() and tok.vocab_size == SMALL_VOCAB
    assert data.train.seq_len == 64 and data.train.num_rows > 100
    assert data.validation.num_rows > 0
    docs = read_documents(data.source.train)
    encoded = [tok.encode(d) for d in docs]
    contents = [c for row in segments(data.train) for c in row]
    assert sorted(map(tuple, contents)) == sorted(map(tuple, expected_chunks(encoded, 64)))
    stores = _rows_dirs(tmp_path)
    assert len(stores) == 1 and not stores[0].name.startswith(".")
    marker = stores[0] / "train" / "marker"
    marker.write_text("reused")
    again = prepare(tmp_path, "builtin", cache_dir=cache, seq_len=64, vocab_size=SMALL_VOCAB,
                            max_corpus_bytes=SMALL_CORPUS_BYTES)
    assert marker.exists() and _rows_dirs(tmp_path) == stores
    np.testing.assert_array_equal(again.train.tokens, data.train.tokens)
    other = prepare(tmp_path, "builtin", cache_dir=cache, seq_len=32, vocab_size=SMALL_VOCAB,
                            max_corpus_bytes=SMALL_CORPUS_BYTES)
    assert other.train.seq_len == 32 and len(_rows_dirs(tmp_path)) == 2


def _rows_dirs(workdir):
    """Packed-rows folders of a workdir (the corpus's token store, source-<key>, is apart)."""
    return sorted(p for p in (workdir / "data").iterdir() if not p.name.startswith("source-"))
