"""Encoder generation: jitted top-k fill-mask and iterative mask-predict of a masked span."""

import jax
import numpy as np
from flax import nnx

from train.generate.mask_predict import compile_mask_predict, compile_top_k_fillers
from train.mesh import make_mesh, to_global
from train.state import model_factory, param_shardings

from tests.train_fixtures import SPECIALS, VOCAB, tiny_batch, tiny_config

MASK = 4


def _setup():
    cfg = tiny_config().model
    mesh = make_mesh((1, 1, 1), jax.devices()[:1])
    graphdef, _, shardings = param_shardings(cfg, mesh)
    params = jax.device_put(nnx.to_pure_dict(nnx.state(model_factory(cfg)(0))), shardings)
    return cfg, mesh, graphdef, shardings, params


def test_mask_predict_fills_only_the_span_and_one_pass_is_argmax():
    cfg, mesh, graphdef, shardings, params = _setup()
    run = compile_mask_predict(graphdef, shardings, mesh, mask_id=MASK, vocab_size=VOCAB, special_ids=SPECIALS)
    fillers = compile_top_k_fillers(graphdef, shardings, mesh, 8)
    batch = tiny_batch(rows=2)
    span = np.zeros_like(batch["tokens"], bool)
    span[:, 2:6] = True
    compiles = []
    listener = lambda event, d, **_: compiles.append(event) if event == "/jax/core/compile/backend_compile_duration" else None
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        out = np.asarray(run(params, to_global(batch, mesh), span, 4))
        other = span.copy()
        other[:, 9:11] = True
        np.asarray(run(params, to_global(batch, mesh), other, 2))  # new span and pass count: same compile
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert len(compiles) == 1
    np.testing.assert_array_equal(out[~span], batch["tokens"][~span])
    assert not np.isin(out[span], SPECIALS).any()
    one = np.asarray(run(params, to_global(batch, mesh), span, 1))
    masked = {**batch, "tokens": np.where(span, MASK, batch["tokens"])}
    probs, ids = (np.asarray(x) for x in fillers(params, to_global(masked, mesh)))
    assert (np.diff(probs, axis=-1) <= 0).all()
    best_ordinary = [next(i for i in row if i not in SPECIALS) for row in ids[span].tolist()]
    np.testing.assert_array_equal(one[span], best_ordinary)
