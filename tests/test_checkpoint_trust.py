"""Checkpoints you can trust: retention never outruns a commit, damaged steps fall back, NaN stops."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from train.checkpoints.manager import DAMAGED_DIR, Checkpoints
from train.loop import train
from train.nonfinite import NonFiniteError

from tests.checkpoint_fixtures import cache_of, checkpoint_config, prepared_seed, seeded_workdir
from tests.test_resume import _final_state


@pytest.fixture
def setup(tmp_path, tmp_path_factory):
    """(config maker, fresh workdir) sharing one corpus and tokenizer across tests."""
    seed = prepared_seed(tmp_path_factory)
    return (lambda **kw: checkpoint_config(cache_of(seed), **kw)), seeded_workdir(seed, tmp_path / "w")


def _leaves_equal(a, b):
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))


def test_an_older_step_survives_until_the_newer_one_commits(tmp_path, monkeypatch):
    checkpoints = Checkpoints(tmp_path, keep=1)
    checkpoints.save(1, {"w": jnp.ones(4)}, {"note": "one"})
    checkpoints.wait()
    monkeypatch.setenv("MESHLM_TEST_HOLD_COMMIT", "2:2")  # step 2's commit waits 2 s
    checkpoints.save(2, {"w": jnp.full(4, 2.0)}, {"note": "two"})
    assert (checkpoints.directory / "1").is_dir(), "keep=1 must not drop step 1 while step 2 is unwritten"
    assert not (checkpoints.directory / "2").exists()
    checkpoints.close()
    assert sorted(p.name for p in checkpoints.directory.iterdir()) == ["2"]


@pytest.mark.slow
def test_keep_last_k_and_the_best_by_an_eval_metric(setup):
    make, workdir = setup
    # max of the loss: an early step is "best", so it must outlive the last-K window.
    config = make(steps=6, checkpoint_every=1, eval_every=1, keep_checkpoints=2, keep_best_metric="loss",
                  keep_best_mode="max")
    train(config, workdir)
    evals = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    losses = {e["step"]: e["loss"] for e in evals if e["split"] == "eval"}
    best = max(losses, key=losses.get)
    checkpoints = Checkpoints(workdir, use_async=False)
    assert best not in (5, 6) and sorted(checkpoints.all_steps()) == sorted({5, 6, best})
    assert checkpoints.restore_meta(best)["metrics"]["loss"] == losses[best]
    checkpoints.close()


@pytest.mark.slow
def test_damaged_latest_steps_fall_back_in_one_line_each(setup):
    make, workdir = setup
    config = make(steps=6)
    train(config, workdir)
    reference = _final_state(config, workdir, 2)
    steps_dir = workdir / "checkpoints"
    (steps_dir / "6" / "_CHECKPOINT_METADATA").unlink()  # commit marker gone
    biggest = max((p for p in (steps_dir / "4" / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    biggest.write_bytes(biggest.read_bytes()[: biggest.stat().st_size // 2])  # truncated data file
    warnings = []
    checkpoints = Checkpoints(workdir)
    from train.mesh import make_mesh
    from train.optimizer import make_optimizer
    from train.state import state_layout
    tx, _ = make_optimizer(config.optim, config.train.steps)
    layout = state_layout(config.model, tx, make_mesh(config.mesh.shape))
    state, meta, step = checkpoints.restore_latest(layout.abstract, lambda s, m: None, warnings.append)
    checkpoints.close()
    assert step == 2 and meta["config"]["train"]["steps"] == 6
    _leaves_equal(state, reference)
    assert len(warnings) == 2 and all("\n" not in w for w in warnings), warnings
    assert "step 6" in warnings[0] and "commit marker" in warnings[0]
    assert "step 4" in warnings[1] and "unreadable state" in warnings[1]
    assert sorted(p.name.split("-")[0] for p in (workdir / DAMAGED_DIR).iterdir()) == ["4", "6"]
    # A rerun picks up from step 2 and writes steps 4 and 6 again.
    train(config, workdir)
    assert sorted(Checkpoints(workdir, use_async=False).all_steps()) == [2, 4, 6]


def _huge_lr(make, **train_fields):
    """Warmup from 0 to 1e38: step 1 is harmless, step 2 blows the weights up, step 3 is NaN."""
    config = make(steps=5, checkpoint_every=1, **train_fields)
    config.optim = dataclasses.replace(config.optim, learning_rate=1e38, warmup_steps=2)
    return config


def _stopped_run(config, workdir) -> tuple[str, list[int]]:
    """Runs training that must stop on a non-finite value: (its one-line message, the saved steps)."""
    with pytest.raises(NonFiniteError) as info:
        train(config, workdir)
    message = str(info.value)
    assert "\n" not in message, message
    checkpoints = Checkpoints(workdir, use_async=False)
    saved = sorted(checkpoints.all_steps())
    checkpoints.close()
    return message, saved


@pytest.mark.slow
def test_a_non_finite_step_stops_the_run_and_keeps_the_good_checkpoint(setup):
    make, workdir = setup
    config = _huge_lr(make)
    message, saved = _stopped_run(config, workdir)
    assert message.startswith("step 3: non-finite loss or gradient"), message
    assert f"last good checkpoint: step 2 in {workdir / 'checkpoints'}" in message
    assert saved == [1, 2], "the NaN state must never be saved"
    state = _final_state(config, workdir, 2)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state))


@pytest.mark.slow
def test_skip_nonfinite_drops_the_update_and_counts_it(setup):
    make, workdir = setup
    config = _huge_lr(make, skip_nonfinite=True)
    train(config, workdir)
    checkpoints = Checkpoints(workdir, use_async=False)
    assert checkpoints.restore_meta(5)["nonfinite_skips"] == 3
    checkpoints.close()
    last, good = _final_state(config, workdir, 5), _final_state(config, workdir, 2)
    assert int(last["step"]) == 5
    _leaves_equal({k: last[k] for k in ("params", "opt_state")}, {k: good[k] for k in ("params", "opt_state")})


@pytest.mark.slow
def test_parameters_overflowed_by_the_learning_rate_are_never_saved(setup):
    """Step 1's loss and gradients are finite, but a rate of inf in float32 overflows the update."""
    make, workdir = setup
    config = make(steps=5, checkpoint_every=1)
    config.optim = dataclasses.replace(config.optim, learning_rate=1e39, warmup_steps=0, schedule="constant")
    message, saved = _stopped_run(config, workdir)
    assert message.startswith("step 1: the parameters are not finite"), message
    assert f"no checkpoint was saved yet in {workdir / 'checkpoints'}" in message
    assert saved == []
