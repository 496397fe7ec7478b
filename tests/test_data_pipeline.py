"""The host pipeline over a token store: stateless by step, split by process, prefetched."""

import numpy as np
import pytest

from data.batches import StepBatches
from data.prefetch import prefetch, prefetch_batches
from data.pipeline import prepare, tokenize_to_store

from tests.data_fixtures import small_store_tokenizer, write_text_files

GLOBAL_BATCH = 8
STEPS = 12


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    tokenizer = small_store_tokenizer(tmp_path_factory)
    base = tmp_path_factory.mktemp("pipeline")
    write_text_files(base / "text", num_docs=200)
    tokenize_to_store(f"files:{base}/text/*", str(tokenizer.path), str(base / "s"), shard_docs=16,
            workers=1)
    return prepare(base / "w", f"store:{base / 's'}", seq_len=32,
                         vocab_size=tokenizer.vocab_size).train


def one_process(rows, seed, start=0, stop=STEPS):
    return list(prefetch_batches(StepBatches(rows, GLOBAL_BATCH, seed), start, stop))


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for name in x:
            np.testing.assert_array_equal(x[name], y[name])


def test_two_processes_then_one_continue_the_same_global_batches(rows):
    """A job of 2 processes stops at step 5 and resumes as 1 process: same global sequence."""
    reference = one_process(rows, seed=7)
    batches = StepBatches(rows, GLOBAL_BATCH, seed=7)
    per_process = [list(prefetch_batches(batches, 0, 5, p, 2)) for p in range(2)]
    for p in range(2):
        assert all(len(b["tokens"]) == GLOBAL_BATCH // 2 for b in per_process[p])
    two = [{name: np.concatenate([per_process[0][s][name], per_process[1][s][name]])
            for name in reference[0]} for s in range(5)]
    resumed = one_process(rows, seed=7, start=5)
    assert_same(two + resumed, reference)


def test_the_sequence_is_a_function_of_seed_and_step_only(rows):
    assert_same(one_process(rows, seed=3), one_process(rows, seed=3))
    other = one_process(rows, seed=4)
    assert any(not np.array_equal(a["tokens"], b["tokens"])
               for a, b in zip(one_process(rows, seed=3), other))
    direct = [StepBatches(rows, GLOBAL_BATCH, 3).batch(s) for s in range(STEPS)]
    assert_same(one_process(rows, seed=3), direct)
    batch = direct[0]
    assert batch["tokens"].dtype == np.int32 and batch["tokens"].shape == (GLOBAL_BATCH, 32)
    assert (batch["segment_ids"] > 0).any() and (batch["positions"][batch["segment_ids"] == 0] == 0).all()


def test_prefetch_keeps_order_and_stops_early_without_hanging():
    seen = []

    def make(step):
        seen.append(step)
        return {"step": np.array([step])}

    stream = prefetch(make, 3, 100, depth=3, workers=2)
    assert [int(next(stream)["step"][0]) for _ in range(5)] == [3, 4, 5, 6, 7]
    stream.close()
    assert max(seen) <= 3 + 5 + 3  # at most depth steps ahead, none after close
    with pytest.raises(ValueError, match="depth and workers must be positive"):
        next(prefetch(make, 0, 1, depth=0))


def test_prefetch_raises_a_worker_error_in_order():
    def make(step):
        if step == 2:
            raise ValueError("bad step 2")
        return {"step": np.array([step])}

    stream = prefetch(make, 0, 5)
    assert [int(next(stream)["step"][0]) for _ in range(2)] == [0, 1]
    with pytest.raises(ValueError, match="bad step 2"):
        next(stream)
