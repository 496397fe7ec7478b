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
    probs, ids, ranks = (np.asarray(x) for x in fillers(params, to_global(masked, mesh)))
    assert (np.diff(probs, axis=-1) <= 0).all() and (ranks == 0).all()  # no targets: no ranks
    # The rank of a target is its place in the whole distribution: top-1 ranks 1, the third ranks 3.
    targets = np.where(span, ids[..., 2], -1).astype(np.int32)
    ranked = np.asarray(fillers(params, to_global(masked, mesh), to_global({"t": targets}, mesh)["t"])[2])
    np.testing.assert_array_equal(ranked, np.where(span, 3, 0))
    best_ordinary = [next(i for i in row if i not in SPECIALS) for row in ids[span].tolist()]
    np.testing.assert_array_equal(one[span], best_ordinary)


def test_held_out_examples_are_drawn_by_seed_and_hide_a_content_word(tmp_path_factory):
    from data.builtin_corpus import read_documents
    from tests.data_fixtures import small_corpus, small_tokenizer
    from train.generate.mask_predict import STOPWORDS, held_out_examples

    tok = small_tokenizer(tmp_path_factory)
    docs = read_documents(small_corpus(tmp_path_factory).train)[:400]
    first, again, other = (held_out_examples(docs, tok, 5, seed=s) for s in (0, 0, 1))
    assert len(first) == 5 and first == again and first != other
    for masked, word in first + other:
        assert masked.count("[MASK]") == 1 and word.isalpha() and word.lower() not in STOPWORDS
        assert len(tok.encode(word)) == 1  # [MASK] stands for exactly the hidden word
        assert masked.replace("[MASK]", word) in " ".join(" ".join(d.split()) for d in docs)
