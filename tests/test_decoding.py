"""The jitted decoding loop: one compile per bucket, cache == recompute, 8 devices == 1 device."""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from model.config import ModelConfig
from train.generate.autoregressive import compile_generate, first_argmax, left_pad
from train.mesh import make_mesh
from train.state import model_factory, param_shardings

CFG = ModelConfig(arch="llama", vocab_size=64, max_len=64, hidden=32, num_layers=2, num_heads=4,
                  num_kv_heads=2, mlp_dim=64, dropout=0.0, attention_dropout=0.0, layer_norm_eps=1e-5,
                  init_std=0.3)
EOS, PAD, NEW = 3, 0, 12
PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12, 13], [20], [30, 31, 32, 33]]


def _generator(mesh_shape, devices=None, cfg=CFG):
    mesh = make_mesh(mesh_shape, devices)
    graphdef, _, shardings = param_shardings(cfg, mesh)
    params = nnx.to_pure_dict(nnx.state(model_factory(cfg)(0)))
    params = jax.device_put(params, shardings)
    return params, compile_generate(graphdef, shardings, cfg, mesh, max_new_bucket=NEW, eos_id=EOS, pad_id=PAD)


def _rows(out):
    """Generated tokens of each row, up to and including EOS."""
    tokens, counts = np.asarray(out["tokens"]), np.asarray(out["num_generated"])
    return [list(row[:n]) for row, n in zip(tokens, counts)]


def test_one_compile_per_bucket():
    params, generate = _generator((1, 1, 1), jax.devices()[:1])
    batches = [left_pad(PROMPTS, 8, PAD), left_pad([[40, 41], [5], [6, 7, 8, 9, 10, 11, 12, 13], [9, 9]], 8, PAD),
               left_pad([[1, 2, 3], [4], [5], [6]], 8, PAD)]
    settings = [dict(), dict(temperature=0.8, top_k=5, seed=1), dict(temperature=1.0, top_p=0.9, seed=2, max_new_tokens=5)]
    compiles = []  # names of the compiled functions
    listener = lambda event, duration, fun_name="?", **_: (
        compiles.append(fun_name) if event == "/jax/core/compile/backend_compile_duration" else None)
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        for prompts, kwargs in zip(batches, settings):
            jax.block_until_ready(generate(params, prompts.tokens, prompts.lengths, **kwargs))
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    # generate once, plus the one-time conversion of the params to the decoding layout
    assert sorted(compiles) == ["jit(decode_params)", "jit(generate)"]


def _greedy_by_recompute(params, prompt, cfg=CFG):
    """Greedy decoding that reruns the whole sequence through the model at every step (no cache)."""
    graphdef = nnx.graphdef(model_factory(cfg)(0))
    # Right-padded to one length (one compile); causal attention keeps padding out of the prefix.
    forward = jax.jit(lambda p, ids, seg: nnx.merge(graphdef, p)(ids, seg, jnp.arange(32)[None]))
    tokens = list(prompt)
    for _ in range(NEW):
        ids = np.zeros((1, 32), np.int32)
        ids[0, :len(tokens)] = tokens
        logits = forward(params, ids, (np.arange(32) < len(tokens)).astype(np.int32)[None])
        tokens.append(int(jnp.argmax(logits[0, len(tokens) - 1])))
        if tokens[-1] == EOS:
            break
    return tokens[len(prompt):]


@pytest.mark.parametrize("tied", [True, False])  # untied: the decode layout's own LM head
def test_greedy_with_cache_equals_recompute(tied):
    cfg = dataclasses.replace(CFG, tie_embeddings=tied)
    params, generate = _generator((1, 1, 1), jax.devices()[:1], cfg)
    prompts = left_pad(PROMPTS, 8, PAD)
    got = _rows(generate(params, prompts.tokens, prompts.lengths))
    host_params = jax.device_get(params)
    for prompt, row in zip(PROMPTS, got):
        assert row == _greedy_by_recompute(host_params, prompt, cfg)


@pytest.mark.slow
def test_cached_decoding_at_8k_tokens_equals_recompute():
    """An 8000-token prompt (left-padded to 8192) prefilled through Splash (interpreted), then
    cached decode steps over 8k+ slots, gives the greedy tokens of full forward passes (Splash
    too, equal to the XLA path by tests/test_attention_kernels.py: no [L, L] array here)."""
    cfg = dataclasses.replace(CFG, max_len=8192, attention_impl="splash")
    params, generate = _generator((1, 1, 1), jax.devices()[:1], cfg)
    prompt = [int(t) for t in np.random.default_rng(0).integers(5, 64, 8000)]
    prompts = left_pad([prompt], 8192, PAD)
    got = _rows(generate(params, prompts.tokens, prompts.lengths, max_new_tokens=6))[0]
    graphdef = nnx.graphdef(model_factory(cfg)(0))
    ids = jnp.asarray([prompt + got[:-1]], jnp.int32)
    logits = jax.jit(lambda p, ids: nnx.merge(graphdef, p)(ids, jnp.ones_like(ids), jnp.arange(ids.shape[1])[None]))(
        params, ids)
    assert len(got) == 6 and got == np.asarray(jnp.argmax(logits[0, len(prompt) - 1:], -1)).tolist()


def test_eight_devices_equal_one_device():
    prompts = left_pad(PROMPTS * 2, 8, PAD)
    runs = []
    for shape, devices in (((1, 1, 1), jax.devices()[:1]), ((2, 2, 2), None)):
        params, generate = _generator(shape, devices)
        runs.append([_rows(generate(params, prompts.tokens, prompts.lengths, **kw))
                     for kw in (dict(), dict(temperature=0.7, top_k=8, seed=3))])
    assert runs[0] == runs[1]


def test_stops_at_eos_and_sampling_respects_top_k():
    cfg = dataclasses.replace(CFG, init_std=0.02)
    params, generate = _generator((1, 1, 1), jax.devices()[:1], cfg)
    prompts = left_pad(PROMPTS, 8, PAD)
    greedy = np.asarray(generate(params, prompts.tokens, prompts.lengths)["tokens"])
    out = generate(params, prompts.tokens, prompts.lengths, temperature=1.0, top_k=1, seed=5)
    np.testing.assert_array_equal(np.asarray(out["tokens"]), greedy)  # top-1 sampling is greedy
    for row, n in zip(np.asarray(out["tokens"]), np.asarray(out["num_generated"])):
        assert (row[n:] == PAD).all() and (n == NEW or row[n - 1] == EOS)


@pytest.mark.parametrize("batch, dtype", [(1, "float32"), (4, "float32"), (1, "bfloat16")])
def test_the_decode_loop_updates_the_cache_in_place(batch, dtype):
    """No top-level copy (or convert) of a cache array in the compiled while loop's body.

    model/kv_cache.py write_cache; a bfloat16 cache is held as uint16 patterns, and the only
    cache-shaped results in the loop are its in-place updates, in the dtype it is held in.
    """
    mesh = make_mesh((1, 1, 1), jax.devices()[:1])
    graphdef, _, shardings = param_shardings(CFG, mesh)
    params = jax.device_put(nnx.to_pure_dict(nnx.state(model_factory(CFG)(0))), shardings)
    generate = compile_generate(graphdef, shardings, CFG, mesh, max_new_bucket=NEW, eos_id=EOS, pad_id=PAD,
                                dtype=dtype)
    prompts = left_pad((PROMPTS * 2)[:batch], 8, PAD)
    hlo = generate.lower(params, prompts.tokens, prompts.lengths).compile().as_text()
    bodies = re.findall(r"body=%([\w.\-]+)", hlo)
    assert bodies
    kv, dim, slots = CFG.num_kv_heads, CFG.hidden // CFG.num_heads, 8 + NEW
    cache_shapes = {f"{t}[{batch},{kv},{d}]" for t in ("f32", "bf16", "u16")
                    for d in (f"{dim},{slots}", f"{slots},{dim}")}
    held = "f32[" if dtype == "float32" else "u16["
    for body in bodies:
        text = hlo[hlo.index(f"\n%{body} "):]
        text = text[:text.index("\n}")]
        copied = set(re.findall(r"= (\w+\[[\d,]+\])\S* (?:copy|convert)\(", text))
        assert not copied & cache_shapes, f"{body} copies {copied & cache_shapes}"
        made = set(re.findall(r"= (\w+\[[\d,]+\])\S* fusion\(", text)) & cache_shapes
        assert all(shape.startswith(held) for shape in made), f"{body} rewrites a cache as {made}"
    written = set(re.findall(r"= (\w+\[[\d,]+\])\S* dynamic-update-slice\(", hlo)) & cache_shapes
    assert written and all(shape.startswith(held) for shape in written), written


def test_first_argmax_is_argmax_with_ties_and_nan():
    logits = np.random.default_rng(0).normal(size=(5, 300)).astype(np.float32)
    logits[1, [7, 200]] = 9.0  # a tie: the first wins
    logits[2, [4, 250]] = np.nan  # NaN: the first NaN, as jnp.argmax
    logits[3] = -np.inf
    np.testing.assert_array_equal(first_argmax(jnp.asarray(logits)), jnp.argmax(jnp.asarray(logits), axis=-1))


def _sequence_log_prob(params, prompt, generated):
    """log p(generated | prompt) by one full forward pass (independent of the decoding code)."""
    model = nnx.merge(nnx.graphdef(model_factory(CFG)(0)), params)
    ids = jnp.asarray([prompt + generated], jnp.int32)
    logp = jax.nn.log_softmax(model(ids, jnp.ones_like(ids), jnp.arange(ids.shape[1])[None])[0])
    return float(sum(logp[len(prompt) - 1 + i, tok] for i, tok in enumerate(generated)))


def test_beam_search_width_one_is_greedy_and_wider_beams_score_higher():
    from train.generate.beam_search import compile_beam_search

    params, generate = _generator((1, 1, 1), jax.devices()[:1])
    mesh = make_mesh((1, 1, 1), jax.devices()[:1])
    graphdef, _, shardings = param_shardings(CFG, mesh)
    prompts = left_pad(PROMPTS, 8, PAD)
    greedy = _rows(generate(params, prompts.tokens, prompts.lengths))
    beams = {w: compile_beam_search(graphdef, shardings, CFG, mesh, beam_width=w, max_new_bucket=NEW,
                                    eos_id=EOS, pad_id=PAD) for w in (1, 4)}
    assert _rows(beams[1](params, prompts.tokens, prompts.lengths)) == greedy
    wide = beams[4](params, prompts.tokens, prompts.lengths, length_penalty=0.0)
    host = jax.device_get(params)
    for prompt, g, b, lp in zip(PROMPTS, greedy, _rows(wide), np.asarray(wide["log_prob"])):
        assert _sequence_log_prob(host, prompt, b) == pytest.approx(float(lp), abs=1e-3)
        assert float(lp) >= _sequence_log_prob(host, prompt, g) - 1e-4


def test_a_stop_sequence_ends_its_row_early_and_leaves_the_others_alone():
    params, generate = _generator((1, 1, 1), jax.devices()[:1])
    prompts = left_pad(PROMPTS, 8, PAD)
    greedy = _rows(generate(params, prompts.tokens, prompts.lengths))
    stop = greedy[0][2:4]  # two tokens inside row 0's greedy output
    stops = np.full((4, 4), -1, np.int32)
    stops[0, -2:] = stop
    stops[1, -3:] = [EOS + 100, EOS + 101, EOS + 102]  # a sequence never generated
    got = _rows(generate(params, prompts.tokens, prompts.lengths, stops=stops))
    for want, row in zip(greedy, got):
        ends = [k + 2 for k in range(1, len(want) - 1) if want[k:k + 2] == stop]  # not as the first token
        assert row == (want[:ends[0]] if ends else want)
    assert got[0] == greedy[0][:4]
