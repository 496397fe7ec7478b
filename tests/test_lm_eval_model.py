"""meshlm as an lm-eval model: right numbers for loglikelihood (plain forward pass, Transformers on the
HF export, 8 devices), rolling windows past max_len, generate_until = greedy decode cut at a stop
string, pseudo-log-likelihood on encoders, few compiles, one-line errors."""

import jax
import numpy as np
import pytest
from flax import nnx
from lm_eval.api.instance import Instance

from train.config import ConfigError
from train.evaluate.harness import MeshLM
from train.generate.completions import Sampling, complete
from train.generate.stop_strings import cut_at_stop
from train.workdir import open_workdir

from tests.lm_eval_fixtures import DECODER_STEPS, MAX_LEN, decoder_workdir, encoder_workdir

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
LONG = " ".join(["the function returns a list of strings and raises an error if the file is missing"] * 6)
PAIRS = [  # (context, continuation): word boundaries, a trailing space, an empty context, a context past max_len
    ("Return the", " value of the function"),
    ("The default is ", "None"),
    ("", "Create a new object"),
    ("If the argument is", " omitted, the list is empty"),
    (LONG, " and returns the value"),
    ("This module provides", " functions for working with strings and files and"),
]


def _requests(kind, args_list):
    return [Instance(request_type=kind, doc={}, arguments=args, idx=i) for i, args in enumerate(args_list)]


class Compiles:
    """Names of the programs XLA compiles while active (a jax.monitoring duration listener)."""

    def __enter__(self):
        self.names = []
        self._listener = lambda event, _, fun_name="?", **__: (
            self.names.append(fun_name) if event == COMPILE_EVENT else None)
        jax.monitoring.register_event_duration_secs_listener(self._listener)
        return self

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_duration_listener(self._listener)


@pytest.fixture(scope="module")
def decoder(tmp_path_factory):
    return MeshLM(workdir=str(decoder_workdir(tmp_path_factory)), batch_size=4, mesh="1x1x1")


def _split(tok, context, continuation):
    """lm-eval's split, written out: trailing spaces join the continuation; ids of the whole after the context's."""
    spaces = len(context) - len(context.rstrip())
    context, continuation = context[:len(context) - spaces], context[len(context) - spaces:] + continuation
    if not context:
        return [tok.cls_id], tok.encode(continuation)
    whole, ctx = tok.encode(context + continuation), tok.encode(context)
    return [tok.cls_id] + ctx, whole[len(ctx):]


_REFERENCE = {}


def _forward(lm, ids):
    """log-softmax of one row through the model merged with host params: a plain forward pass, no meshlm batching.

    Jitted once per model at [1, MAX_LEN]: the row is right-padded as segment 0, which neither causal
    nor bidirectional attention lets the real tokens see.
    """
    key = id(lm.trained.params)
    if key not in _REFERENCE:
        graphdef = lm.trained.layout.graphdef
        forward = jax.jit(lambda params, ids, segment_ids, positions: jax.nn.log_softmax(
            nnx.merge(graphdef, params)(ids, segment_ids, positions).astype(np.float32), axis=-1))
        _REFERENCE[key] = (forward, jax.device_get(lm.trained.params))
    forward, params = _REFERENCE[key]
    n = len(ids)
    row = np.zeros((1, MAX_LEN), np.int32)
    row[0, :n] = ids
    segment_ids = (np.arange(MAX_LEN) < n).astype(np.int32)[None]
    return np.asarray(forward(params, row, segment_ids, np.arange(MAX_LEN, dtype=np.int32)[None]))[0, :n]


def _reference(lm, context_ids, continuation_ids):
    """Sum of the continuation's log-softmax and whether each token is the argmax, left-truncated as lm-eval."""
    whole = (context_ids + continuation_ids)[-(MAX_LEN + 1):]
    log_probs = _forward(lm, whole[:-1])
    first = len(whole) - 1 - len(continuation_ids)
    picked = [log_probs[first + i, t] for i, t in enumerate(continuation_ids)]
    greedy = all(log_probs[first + i].argmax() == t for i, t in enumerate(continuation_ids))
    return float(np.sum(picked)), bool(greedy)


def test_loglikelihood_is_the_log_softmax_sum_of_a_plain_forward_pass_with_one_compile_per_bucket(decoder):
    tok = decoder.tok
    # A request whose continuation is the model's own greedy choice, so is_greedy is checked both ways.
    context_ids = [tok.cls_id] + tok.encode("Return the")
    greedy_ids = []
    for _ in range(3):
        greedy_ids.append(int(_forward(decoder, context_ids + greedy_ids)[-1].argmax()))
    pairs = PAIRS + [("Return the", tok.decode(context_ids + greedy_ids)[len("Return the"):])]
    with Compiles() as compiles:
        got = decoder.loglikelihood(_requests("loglikelihood", pairs), disable_tqdm=True)
    lengths = sorted((len(sum(_split(tok, c, x), [])) - 1 for c, x in pairs), reverse=True)
    # Batches of 4 rows, longest first: each batch is padded to the bucket of its longest row.
    buckets = {decoder.scorer.length_bucket(min(lengths[i], MAX_LEN)) for i in range(0, len(lengths), 4)}
    assert len(buckets) == 2 and compiles.names.count("jit(score_tokens)") == 2
    assert lengths[0] > MAX_LEN  # the long context was cut from the left
    for (context, continuation), (log_prob, greedy) in zip(pairs, got):
        want_lp, want_greedy = _reference(decoder, *_split(tok, context, continuation))
        assert log_prob == pytest.approx(want_lp, abs=1e-4) and greedy == want_greedy
    assert got[-1][1] and not all(g for _, g in got[:-1])
    assert _split(tok, "Return the", " value") == ([tok.cls_id] + tok.encode("Return the"), tok.encode("value"))
    assert min(lp for lp, _ in got) < -10.0  # far from zero: the comparison has teeth
    with Compiles() as again:  # the same buckets again: nothing new to compile
        decoder.loglikelihood(_requests("loglikelihood", pairs[:3]), disable_tqdm=True)
    assert "jit(score_tokens)" not in again.names


def test_eight_devices_equal_one_device(decoder, tmp_path_factory):
    sharded = MeshLM(workdir=str(decoder_workdir(tmp_path_factory)), batch_size=4, mesh="2x2x2")
    assert sharded.batch_size == 4 and dict(sharded.trained.mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2, "sequence": 1}
    requests = _requests("loglikelihood", PAIRS)
    one, eight = (lm.loglikelihood(requests, disable_tqdm=True) for lm in (decoder, sharded))
    np.testing.assert_allclose([lp for lp, _ in eight], [lp for lp, _ in one], atol=1e-4)
    assert [g for _, g in eight] == [g for _, g in one]


def test_loglikelihood_equals_transformers_on_the_hf_export(decoder, tmp_path):
    import torch
    import transformers

    from train.checkpoints.params import CheckpointParams
    from train.interop.hf_export import export_hf

    export_hf(CheckpointParams(decoder.workdir, decoder.trained.step), tmp_path / "hf")
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf", attn_implementation="eager").eval()
    got = decoder.loglikelihood(_requests("loglikelihood", PAIRS), disable_tqdm=True)
    for (context, continuation), (log_prob, _) in zip(PAIRS, got):
        context_ids, continuation_ids = _split(decoder.tok, context, continuation)
        whole = (context_ids + continuation_ids)[-(MAX_LEN + 1):]
        with torch.no_grad():
            logits = hf(input_ids=torch.tensor([whole[:-1]])).logits[0].double()
        log_probs = torch.log_softmax(logits, dim=-1)
        first = len(whole) - 1 - len(continuation_ids)
        want = sum(float(log_probs[first + i, t]) for i, t in enumerate(continuation_ids))
        assert log_prob == pytest.approx(want, abs=1e-4)


def test_loglikelihood_rolling_covers_texts_longer_than_max_len(decoder):
    texts = [LONG + " " + LONG, "Return the value."]
    got = decoder.loglikelihood_rolling(_requests("loglikelihood_rolling", [(t,) for t in texts]), disable_tqdm=True)
    for text, total in zip(texts, got):
        ids = decoder.tok.encode(text)
        full, want = [decoder.tok.cls_id] + ids, 0.0
        # Every token predicted once, MAX_LEN at a time, each window reading the MAX_LEN tokens before
        # its end ([CLS] first): the windows after the first start one token back, the last reaches back.
        for start in range(0, len(ids), MAX_LEN):
            end = min(start + MAX_LEN, len(ids))
            inputs = full[max(0, end - MAX_LEN):end]
            log_probs = _forward(decoder, inputs)[-(end - start):]
            want += float(sum(log_probs[i, t] for i, t in enumerate(ids[start:end])))
        assert total == pytest.approx(want, abs=2e-4)
    assert len(decoder.tok.encode(texts[0])) > 2 * MAX_LEN  # three windows or more


def test_generate_until_is_greedy_decode_cut_at_the_stop_string(decoder):
    prompts = ["Return the", "The default is", "If the argument is", "Create a new", "This module provides"]
    new = 16
    reference = complete(open_workdir(decoder.workdir, decoder.trained.step), prompts, Sampling(max_new_tokens=new))
    words = reference.texts[0].split()
    assert len(words) >= 4, reference.texts[0]
    stop = " " + words[2]  # a word inside the first completion: its row must stop early
    kwargs = {"until": [stop], "max_gen_toks": new, "do_sample": False}
    before = decoder.continuer.generated_tokens
    with Compiles() as compiles:
        got = decoder.generate_until(_requests("generate_until", [(p, kwargs) for p in prompts]), disable_tqdm=True)
    assert got == [cut_at_stop(text, [stop]) for text in reference.texts]
    assert got[0] != reference.texts[0]  # the stop string did cut
    generated = decoder.continuer.generated_tokens - before
    assert generated < sum(len(ids) for ids in reference.token_ids)  # ...and the loop ended that row early
    assert compiles.names.count("jit(generate)") == 1  # 5 prompts, batches of 4, one bucket
    assert sum(text == cut for text, cut in zip(reference.texts, got)) >= 3  # rows without the stop: whole


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return MeshLM(workdir=str(encoder_workdir(tmp_path_factory)), batch_size=8, mesh="1x2x1")


def test_encoder_loglikelihood_is_the_pseudo_log_likelihood(encoder):
    tok = encoder.tok
    pairs = PAIRS[:4] + [("The default is", " a list")]
    got = encoder.loglikelihood(_requests("loglikelihood", pairs), disable_tqdm=True)
    for (context, continuation), (log_prob, _) in zip(pairs, got):
        context_ids, continuation_ids = _split(tok, context, continuation)
        whole = context_ids + continuation_ids + [tok.sep_id]
        want = 0.0
        for i, target in enumerate(continuation_ids):  # mask each continuation token in turn
            masked = list(whole)
            masked[len(context_ids) + i] = tok.mask_id
            want += float(_forward(encoder, masked)[len(context_ids) + i, target])
        assert log_prob == pytest.approx(want, abs=1e-4)
    assert got[0][0] != got[4][0]
    with pytest.raises(ConfigError, match="generate_until needs a decoder"):
        encoder.generate_until(_requests("generate_until", [("Return the", {"until": ["."]})]), disable_tqdm=True)


def test_bad_model_args_get_one_line_errors(tmp_path, decoder):
    with pytest.raises(ConfigError, match="needs workdir=DIR"):
        MeshLM.create_from_arg_string("batch_size=4")
    with pytest.raises(ConfigError, match="has no checkpoints"):
        MeshLM.create_from_arg_string(f"workdir={tmp_path}")
    with pytest.raises(ConfigError, match=r"step='last'; accepted: an integer"):
        MeshLM(workdir=str(tmp_path), step="last")
    with pytest.raises(ConfigError, match=r"mesh='1,2'; accepted: data x fsdp x tensor"):
        MeshLM(workdir=str(tmp_path), mesh="1,2")
    with pytest.raises(ConfigError, match=r"\['pretrained'\] are not meshlm's; accepted: batch_size"):
        MeshLM.create_from_arg_string("pretrained=gpt2,workdir=x")
    with pytest.raises(ConfigError, match=r"\['num_beams'\] are not supported by meshlm"):
        decoder.generate_until(_requests("generate_until", [("Return the", {"num_beams": 4})]), disable_tqdm=True)
    with pytest.raises(ValueError, match=f"max_gen_toks={MAX_LEN} leaves no room"):
        decoder.generate_until(_requests("generate_until", [("Return the", {"max_gen_toks": MAX_LEN})]),
                               disable_tqdm=True)
    assert DECODER_STEPS[-1] == decoder.trained.step  # the latest step by default
