"""Corrupted data: every file meshlm reads back is checked against the hash it recorded when writing it.

Damage is reported in one line naming the file (a DataError), never fed to the model: the
token store's shards (per-shard sha256 in the manifest), the packed-row cache (a sha256 per
block of rows, checked when a batch first reads the block, plus a range check of every
batch's ids) and the tokenizer (FILE.sha256). A step that still sees ids outside the
vocabulary blames the data, not the learning rate.
"""

import json
import shutil

import jax
import numpy as np
import pytest

from data.batches import StepBatches, eval_batches
from data.documents import DataError
from data.packing import PackedRows, is_hashed
from data.pipeline import prepare, tokenize_to_store
from data.token_store import TokenStore
from data.tokenizer import Tokenizer
from train.nonfinite import NonFiniteError, NonFiniteGuard

from tests.data_fixtures import numbered_rows, small_store_tokenizer, write_text_files


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> str:
    base = tmp_path_factory.mktemp("integrity")
    write_text_files(base / "text", num_docs=400)
    return f"files:{base}/text/*"


def _prepare(workdir, source):
    return prepare(workdir, source, seq_len=16, vocab_size=120, tokenizer_type="bpe")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, source):
    """A workdir prepared from text files: (workdir, its rows folder)."""
    workdir = tmp_path_factory.mktemp("integrity-w") / "w"
    return workdir, _prepare(workdir, source).train.directory.parent


def _copy(prepared, tmp_path):
    """A private copy of the prepared workdir, to damage: (workdir, rows folder)."""
    workdir, rows_dir = prepared
    shutil.copytree(workdir, tmp_path / "w")
    return tmp_path / "w", tmp_path / "w" / rows_dir.relative_to(workdir)


def test_packed_rows_record_block_hashes_and_the_vocabulary(prepared):
    _, rows_dir = prepared
    meta = json.loads((rows_dir / "train" / "rows.json").read_text())
    assert meta["vocab_size"] == 120 and set(meta["sha256"]) == {"tokens", "segment_ids", "positions"}
    rows = PackedRows.load(rows_dir / "train")
    assert rows.blocks.checked_fraction == 0.0, "opening the rows reads nothing"
    rows.rows(np.arange(rows.num_rows))
    assert rows.blocks.checked_fraction == 1.0


@pytest.mark.parametrize("array", ["tokens", "segment_ids"])
def test_damaged_packed_rows_stop_the_first_batch_that_reads_them(prepared, source, tmp_path, array):
    """The issue's case: ten token ids of the packed-row cache overwritten with 999999."""
    workdir, rows_dir = _copy(prepared, tmp_path)
    path = rows_dir / "train" / f"{array}.npy"
    damaged = np.load(path, mmap_mode="r+")
    flat = damaged.reshape(-1)
    flat[np.linspace(0, flat.size - 1, 10).astype(int)] = 999999
    damaged.flush()
    del damaged, flat
    data = _prepare(workdir, source)  # opening is cheap and succeeds: nothing is hashed yet
    with pytest.raises(DataError) as info:
        StepBatches(data.train, 8, seed=0).batch(0)
    message = str(info.value)
    assert message.startswith(f"{path} is damaged: rows 0-") and "\n" not in message, message
    assert f"delete {rows_dir}" in message


def test_ids_outside_the_vocabulary_are_caught_where_the_batch_is_made():
    rows = numbered_rows(20)  # row r holds id r + 10
    rows.vocab_size = 30
    assert StepBatches(rows, 4, seed=0).batch(0)["tokens"].max() < 30
    rows.vocab_size = 25
    with pytest.raises(DataError, match=r"^packed rows holds token id 25 in row 15, outside the "
                                        r"vocabulary of 25 ids \(40 such ids in this batch\)"):
        list(eval_batches(rows, batch_size=20))


def test_legacy_rows_without_hashes_are_packed_again(prepared, source, tmp_path):
    workdir, rows_dir = _copy(prepared, tmp_path)
    for split in ("train", "validation"):
        meta = json.loads((rows_dir / split / "rows.json").read_text())
        for key in ("sha256", "block_rows", "vocab_size"):
            meta.pop(key)
        (rows_dir / split / "rows.json").write_text(json.dumps(meta))
    before = np.load(rows_dir / "train" / "tokens.npy")
    data = _prepare(workdir, source)
    assert is_hashed(rows_dir / "train") and data.train.vocab_size == 120
    np.testing.assert_array_equal(np.asarray(data.train.tokens), before)


def test_a_damaged_store_shard_is_named_when_first_read(tmp_path, tmp_path_factory):
    tokenizer = small_store_tokenizer(tmp_path_factory).path
    write_text_files(tmp_path / "text")
    tokenize_to_store(f"files:{tmp_path}/text/*", tokenizer, str(tmp_path / "s"), shard_docs=16, workers=1)
    shard = tmp_path / "s" / "train" / "train-00002.tokens.npy"
    raw = bytearray(shard.read_bytes())
    raw[-1] ^= 0xFF
    shard.write_bytes(bytes(raw))
    store = TokenStore(tmp_path / "s")
    docs = store.documents("train")
    for _ in range(32):  # shards 0 and 1 are intact and read fine
        next(docs)
    with pytest.raises(DataError, match=r"store shard .*train-00002\.\{tokens,offsets\}\.npy is damaged: "
                                        r"its sha256 differs from the one .*manifest\.json recorded"):
        next(docs)


def test_a_damaged_tokenizer_is_refused_before_it_is_parsed(prepared, tmp_path):
    workdir, _ = _copy(prepared, tmp_path)
    model = workdir / "tokenizer.model"
    assert (workdir / "tokenizer.model.sha256").read_text().split()[1] == "tokenizer.model"
    raw = bytearray(model.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    model.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=f"^{model} has changed since it was written \\(sha256 .*, but .* "
                                        "recorded in tokenizer.model.sha256\\): it is damaged or was replaced"):
        Tokenizer(model)


def test_a_nan_from_ids_outside_the_vocabulary_blames_the_data_not_the_learning_rate():
    from train.mesh import make_mesh
    from train.optimizer import make_optimizer
    from train.state import init_state, state_layout
    from train.steps import compile_train_step
    from tests.train_fixtures import VOCAB, tiny_batch, tiny_config, tiny_spec

    config = tiny_config()
    tx, schedule = make_optimizer(config.optim, config.train.steps)
    mesh = make_mesh((1, 1, 1))
    layout = state_layout(config.model, tx, mesh)
    state = init_state(config.model, tx, layout, mesh, seed=0)
    step = compile_train_step(layout, mesh, tx=tx, schedule=schedule, spec=tiny_spec(), seed=0,
                              vocab_size=VOCAB)
    batch = tiny_batch()
    batch["tokens"][0, 1:4] = 999999
    _, metrics = step(state, jax.tree.map(np.asarray, batch))
    metrics = jax.device_get(metrics)
    assert metrics["out_of_vocab"] == 3
    guard = NonFiniteGuard(skip=False, vocab_size=VOCAB)
    with pytest.raises(NonFiniteError) as info:
        guard.check(1, {**metrics, "nonfinite": 1.0})
    assert "held 3 token ids outside the model's vocabulary (model.vocab_size=64)" in str(info.value)
    assert "learning_rate" not in str(info.value)
    with pytest.raises(NonFiniteError, match="lower optim.learning_rate"):
        guard.check(1, {**metrics, "nonfinite": 1.0, "out_of_vocab": 0.0})
