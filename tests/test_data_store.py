"""data/token_store.py and data/pipeline.py: a sharded, hashed store, written whole or not at all."""

import json
import subprocess
import sys

import numpy as np
import pytest

from data.documents import DataError, is_validation
from data.pipeline import prepare, tokenize_to_store
from data.token_store import TokenStore
from train.config import load_config
from train.inputs import masking_spec, prepare_data

from tests.data_fixtures import small_store_tokenizer, write_text_files


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return small_store_tokenizer(tmp_path_factory)


def leftovers(directory) -> list[str]:
    """Hidden temporary folders a failed write would leave."""
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_store_keeps_documents_whole_in_many_small_shards(tmp_path, tokenizer):
    docs = write_text_files(tmp_path / "text")
    manifest = tokenize_to_store(f"files:{tmp_path}/text/*", str(tokenizer.path), str(tmp_path / "s"),
                       shard_docs=16, workers=1)
    store = TokenStore(tmp_path / "s")
    train_docs = [d for d in docs if not is_validation(d)]
    assert store.num_docs("train") == len(train_docs) == manifest["splits"]["train"]["docs"]
    assert len(manifest["splits"]["train"]["shards"]) == -(-len(train_docs) // 16)
    stored = [ids.tolist() for ids in store.documents("train")]
    assert stored == tokenizer.encode_batch(train_docs)
    assert manifest["splits"]["train"]["tokens"] == sum(len(ids) for ids in stored)
    assert store.manifest["token_dtype"] == "uint16" and len(manifest["content_hash"]) == 64
    assert leftovers(tmp_path) == []


def test_parallel_tokenization_writes_the_same_store_as_one_process(tmp_path, tokenizer):
    write_text_files(tmp_path / "text")
    one = tokenize_to_store(f"files:{tmp_path}/text/*", str(tokenizer.path), str(tmp_path / "one"),
                  shard_docs=10, workers=1)
    two = tokenize_to_store(f"files:{tmp_path}/text/*", str(tokenizer.path), str(tmp_path / "two"),
                  shard_docs=10, workers=2)
    assert one["content_hash"] == two["content_hash"]
    assert one["splits"] == two["splits"]


def test_prepare_trains_a_tokenizer_when_asked(tmp_path):
    write_text_files(tmp_path / "text")
    manifest = tokenize_to_store(f"files:{tmp_path}/text/*", str(tmp_path / "new.model"),
                       str(tmp_path / "s"), vocab_size=100, tokenizer_type="bpe", workers=1)
    assert manifest["tokenizer"]["vocab_size"] == 100 and (tmp_path / "s/tokenizer.model").is_file()


@pytest.mark.parametrize("case", ["empty", "missing", "no_field_later", "exists"])
def test_bad_inputs_leave_nothing_half_written(tmp_path, tokenizer, case):
    text = tmp_path / "text"
    text.mkdir()
    if case == "empty":
        (text / "a.txt").write_text("\n\n  \n", encoding="utf-8")
        expected = "has no training documents"
    elif case == "missing":
        expected = "no files match"
    elif case == "no_field_later":  # fails after shards were already written
        lines = [json.dumps({"text": f"fine doc {i} alpha"}) for i in range(50)] + ['{"x": 1}']
        (text / "a.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        expected = r"a.jsonl:51 has no field 'text'"
    else:
        write_text_files(text)
        (tmp_path / "s").mkdir()
        expected = "already exists"
    with pytest.raises(DataError, match=expected):
        tokenize_to_store(f"files:{text}/*", str(tokenizer.path), str(tmp_path / "s"), shard_docs=4,
                workers=1)
    assert leftovers(tmp_path) == [] and (case == "exists") == (tmp_path / "s").exists()


def test_cli_prints_one_line_errors_and_a_summary(tmp_path, tokenizer):
    write_text_files(tmp_path / "text")
    base = [sys.executable, "-m", "data.prepare_cli", f"--tokenizer={tokenizer.path}"]
    bad = subprocess.run(base + [f"--source=files:{tmp_path}/none/*.txt", f"--out={tmp_path}/s"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr
    assert bad.stderr.startswith("error: no files match")
    good = subprocess.run(base + [f"--source=files:{tmp_path}/text/*", f"--out={tmp_path}/s",
                                  "--workers=1", "--shard_docs=20"], capture_output=True, text=True)
    assert good.returncode == 0, good.stderr
    assert "wrote" in good.stdout and "content hash" in good.stdout


def test_training_packs_the_store_into_rows_with_every_token(tmp_path, tokenizer):
    docs = write_text_files(tmp_path / "text")
    tokenize_to_store(f"files:{tmp_path}/text/*", str(tokenizer.path), str(tmp_path / "s"), shard_docs=8,
            workers=1)
    data = prepare(tmp_path / "w", f"store:{tmp_path / 's'}", seq_len=32,
                         vocab_size=tokenizer.vocab_size)
    tokens = np.asarray(data.train.tokens)
    ordinary = ~np.isin(tokens, [tokenizer.pad_id, tokenizer.cls_id, tokenizer.sep_id])
    train_docs = [d for d in docs if not is_validation(d)]
    assert ordinary.sum() == sum(len(ids) for ids in tokenizer.encode_batch(train_docs))
    longest = max(len(ids) for ids in tokenizer.encode_batch(train_docs))
    assert longest > 30  # long documents were split across rows
    assert (tmp_path / "w/tokenizer.model").read_bytes() == tokenizer.path.read_bytes()
    again = prepare(tmp_path / "w", f"store:{tmp_path / 's'}", seq_len=32,
                          vocab_size=tokenizer.vocab_size)
    assert again.key == data.key
    with pytest.raises(DataError, match="set --config.model.vocab_size=120"):
        prepare(tmp_path / "w", f"store:{tmp_path / 's'}", seq_len=32, vocab_size=64)


def test_config_sources_reach_prepare_data_with_whole_word_masking(tmp_path, tokenizer):
    write_text_files(tmp_path / "text")
    tokenize_to_store(f"files:{tmp_path}/text/*", str(tokenizer.path), str(tmp_path / "s"), workers=1)
    overrides = ["model.vocab_size=120", "data.seq_len=32", "data.whole_word_masking=true"]
    from_store = prepare_data(load_config("configs/bert_tiny.py", overrides + [
        f"data.source=store:{tmp_path}/s"]), tmp_path / "w1")
    # Tokenized on the fly with the same tokenizer: the same rows as the prepared store.
    (tmp_path / "w2").mkdir()
    (tmp_path / "w2/tokenizer.model").write_bytes(tokenizer.path.read_bytes())
    on_the_fly = prepare_data(load_config("configs/bert_tiny.py", overrides + [
        f"data.source=files:{tmp_path}/text/*"]), tmp_path / "w2")
    np.testing.assert_array_equal(from_store.train.tokens, on_the_fly.train.tokens)
    assert from_store.key == on_the_fly.key
    config = load_config("configs/bert_tiny.py", overrides)
    spec = masking_spec(config, from_store, _one_device_mesh())
    np.testing.assert_array_equal(spec.word_start_table, tokenizer.word_start_table())
    assert from_store.validation_documents(3) == [
        tokenizer.decode(tokenizer.encode(d)) for d in on_the_fly.validation_documents(3)]


def test_on_the_fly_source_trains_its_tokenizer(tmp_path):
    from data.sources import parse_source
    write_text_files(tmp_path / "text")
    data = prepare(tmp_path / "w", parse_source(f"files:{tmp_path}/text/*"), seq_len=32,
                   vocab_size=90, tokenizer_type="bpe")
    assert data.tokenizer.vocab_size == 90 and data.train.num_rows > 0


def _one_device_mesh():
    import jax
    from train.mesh import make_mesh
    return make_mesh((1, 1, 1), jax.devices()[:1])
