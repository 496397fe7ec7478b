"""data/batches.py: batch(step) is a pure function of (seed, step), split exactly by process."""

import numpy as np
import pytest

from data.batches import StepBatches, eval_batches
from tests.data_fixtures import numbered_rows


def row_ids(batch: dict[str, np.ndarray]) -> list[int]:
    """Which rows a batch of numbered_rows holds."""
    return (batch["tokens"][:, 0] - 10).tolist()


def test_same_seed_and_step_give_the_same_batch():
    rows = numbered_rows(50)
    a, b = StepBatches(rows, 8, seed=3), StepBatches(rows, 8, seed=3)
    for step in (0, 1, 7, 100, 5):  # any order: there is no iterator state
        for name, value in a.batch(step).items():
            np.testing.assert_array_equal(value, b.batch(step)[name])
    assert row_ids(a.batch(4)) == a.global_indices(4).tolist()


def test_different_seeds_and_steps_differ():
    rows = numbered_rows(50)
    assert (StepBatches(rows, 8, seed=0).global_indices(0).tolist()
            != StepBatches(rows, 8, seed=1).global_indices(0).tolist())
    batches = StepBatches(rows, 8, seed=0)
    assert batches.global_indices(0).tolist() != batches.global_indices(1).tolist()


@pytest.mark.parametrize("num_rows,batch_size", [(12, 4), (10, 4), (7, 3)])
def test_each_epoch_is_a_permutation_of_all_rows(num_rows, batch_size):
    batches = StepBatches(numbered_rows(num_rows), batch_size, seed=5)
    assert batches.steps_per_epoch == -(-num_rows // batch_size)
    stream = np.concatenate([batches.global_indices(s) for s in range(3 * num_rows)])
    epochs = stream[:len(stream) // num_rows * num_rows].reshape(-1, num_rows)
    for e, epoch in enumerate(epochs):
        assert sorted(epoch.tolist()) == list(range(num_rows))
        np.testing.assert_array_equal(epoch, np.random.default_rng([5, e]).permutation(num_rows))
    assert not all(np.array_equal(epochs[0], e) for e in epochs[1:]), "epochs reshuffle"


def test_a_batch_straddling_two_epochs():
    batches = StepBatches(numbered_rows(10), 4, seed=2)
    first, second = (np.random.default_rng([2, e]).permutation(10) for e in (0, 1))
    np.testing.assert_array_equal(batches.global_indices(2), [*first[8:], *second[:2]])


def test_global_batch_larger_than_the_data_wraps_over_epochs():
    batches = StepBatches(numbered_rows(3), 8, seed=0)
    expected = np.concatenate([np.random.default_rng([0, e]).permutation(3) for e in range(6)])
    np.testing.assert_array_equal(batches.global_indices(0), expected[:8])
    np.testing.assert_array_equal(batches.global_indices(1), expected[8:16])
    assert row_ids(batches.batch(1, 1, 2)) == expected[12:16].tolist()


@pytest.mark.parametrize("process_count", [1, 2, 4, 8])
def test_process_blocks_concatenate_to_the_global_batch(process_count):
    rows = numbered_rows(37)
    batches = StepBatches(rows, 8, seed=11)
    for step in (0, 4, 9):
        blocks = [batches.batch(step, p, process_count) for p in range(process_count)]
        assert all(b["tokens"].shape == (8 // process_count, 8) for b in blocks)
        whole = rows.rows(batches.global_indices(step))
        for name in whole:
            np.testing.assert_array_equal(np.concatenate([b[name] for b in blocks]), whole[name])


def test_bad_batch_arguments_are_clear_errors():
    batches = StepBatches(numbered_rows(10), 6, seed=0)
    with pytest.raises(ValueError, match="global_batch_size 6 does not divide by process_count 4"):
        batches.batch(0, 0, 4)
    with pytest.raises(ValueError, match="process_index=2, process_count=2"):
        batches.batch(0, 2, 2)
    with pytest.raises(ValueError, match="step must be >= 0, got -1"):
        batches.batch(-1)
    with pytest.raises(ValueError, match="global_batch_size must be a positive.*got 0"):
        StepBatches(numbered_rows(10), 0, seed=0)
    with pytest.raises(ValueError, match="training data is empty"):
        StepBatches(numbered_rows(0), 4, seed=0)


def test_eval_batches_keep_order_and_pad_the_tail():
    rows = numbered_rows(5, pad_id=7)
    batches = list(eval_batches(rows, 2))
    assert [b["tokens"].shape for b in batches] == [(2, 8)] * 3
    assert row_ids(batches[0]) + row_ids(batches[1]) == [0, 1, 2, 3]
    last = batches[2]
    assert row_ids({"tokens": last["tokens"][:1]}) == [4]
    assert (last["tokens"][1] == 7).all()
    assert (last["segment_ids"][1] == 0).all() and (last["positions"][1] == 0).all()
    assert (last["segment_ids"][0] == 1).all()


def test_eval_batches_stop_at_max_batches_and_handle_no_rows():
    assert len(list(eval_batches(numbered_rows(9), 2, max_batches=2))) == 2
    assert list(eval_batches(numbered_rows(0), 2)) == []
    with pytest.raises(ValueError, match="batch_size must be a positive.*got 0"):
        eval_batches(numbered_rows(3), 0)
