"""Generate text from a trained decoder workdir.

    python -m train.decode --workdir=DIR --prompt="def main(" [--prompt=...] [--prompts_file=FILE]
        [--max_new_tokens=64] [--temperature=0.8 --top_k=40 --top_p=0.95 --seed=0] [--beam_width=4]

Prompts are batched together (left-padded to a power-of-two bucket, so similar calls
reuse one compile); each starts with [CLS] as the training rows do, and [SEP] ends a
generation.
"""

from __future__ import annotations

import pathlib
import time

import jax
import numpy as np
from absl import flags

from train import cli

_WORKDIR = cli.WORKDIR
_STEP = cli.STEP
_PROMPT = flags.DEFINE_multi_string("prompt", [], "A prompt; repeat the flag for a batch.")
_PROMPTS_FILE = flags.DEFINE_string("prompts_file", None, "A text file with one prompt per line.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 64, "Tokens to generate per prompt at most.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "0 decodes greedily; > 0 samples.")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Sample among the k most likely tokens (0: all).")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Sample within the smallest set of mass >= top_p.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_BEAM = flags.DEFINE_integer("beam_width", 1, "> 1 runs beam search instead of sampling.")
_LENGTH_PENALTY = flags.DEFINE_float("length_penalty", 1.0, "Beam score = log-prob / length ** this.")


def read_prompts() -> list[str]:
    """The prompts from --prompt flags and --prompts_file, in that order."""
    prompts = list(_PROMPT.value)
    if _PROMPTS_FILE.value:
        path = pathlib.Path(_PROMPTS_FILE.value)
        if not path.is_file():
            raise cli.ConfigError(f"--prompts_file={path} is not a file; pass a text file with one prompt per line")
        prompts += path.read_text(encoding="utf-8").splitlines()
    if not prompts:
        raise cli.ConfigError("no prompt: pass --prompt=\"...\" or --prompts_file=FILE")
    return prompts


def check_flags() -> None:
    """Sampling flags in range, before any device work."""
    if _MAX_NEW.value < 1:
        raise cli.ConfigError(f"--max_new_tokens={_MAX_NEW.value}; accepted: an integer >= 1")
    if _TEMPERATURE.value < 0 or _TOP_K.value < 0 or not 0 < _TOP_P.value <= 1 or _BEAM.value < 1:
        raise cli.ConfigError(f"--temperature={_TEMPERATURE.value} --top_k={_TOP_K.value} --top_p={_TOP_P.value} "
                              f"--beam_width={_BEAM.value}; accepted: temperature >= 0, top_k >= 0, "
                              "0 < top_p <= 1, beam_width >= 1")


def encode_prompts(prompts: list[str], tokenizer, max_len: int, max_new_tokens: int) -> list[list[int]]:
    """[CLS] + pieces per prompt; an empty or too long prompt is a one-line error naming it."""
    rows = []
    for number, text in enumerate(prompts, 1):
        if not text.strip():
            raise cli.ConfigError(f"prompt {number} is empty; give some text to continue")
        ids = [tokenizer.cls_id] + tokenizer.encode(text)
        if len(ids) + max_new_tokens > max_len:
            raise cli.ConfigError(
                f"prompt {number} ({text[:40]!r}...) is {len(ids)} tokens; with --max_new_tokens={max_new_tokens} "
                f"that exceeds the model's max_len={max_len}; shorten it or lower --max_new_tokens")
        rows.append(ids)
    return rows


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise cli.ConfigError(f"unexpected arguments {argv[1:]}; flags take the form --name=value")
    prompts = read_prompts()
    check_flags()
    from train.beam_search import compile_beam_search
    from train.decoding import bucket, compile_generate, left_pad
    from train.workdir import open_workdir

    trained = open_workdir(_WORKDIR.value or "", _STEP.value)
    if trained.config.model.arch != "llama":
        raise cli.ConfigError(f"--workdir={_WORKDIR.value} holds a {trained.config.model.arch} model; "
                              "decode needs model.arch=llama (for BERT use python -m train.fill_mask)")
    tok, cfg = trained.data.tokenizer, trained.config.model
    rows = encode_prompts(prompts, tok, cfg.max_len, _MAX_NEW.value)
    batch = left_pad(rows, bucket(max(len(r) for r in rows)), tok.pad_id)
    common = dict(max_new_bucket=bucket(_MAX_NEW.value), eos_id=tok.sep_id, pad_id=tok.pad_id)
    shardings = trained.layout.shardings["params"]
    compile_seconds = []
    listener = lambda event, seconds, **_: compile_seconds.append(seconds) if event.endswith("backend_compile_duration") else None
    jax.monitoring.register_event_duration_secs_listener(listener)
    started = time.perf_counter()
    if _BEAM.value > 1:
        run = compile_beam_search(trained.layout.graphdef, shardings, cfg, trained.mesh, beam_width=_BEAM.value, **common)
        out = run(trained.params, batch.tokens, batch.lengths, _MAX_NEW.value, _LENGTH_PENALTY.value)
    else:
        run = compile_generate(trained.layout.graphdef, shardings, cfg, trained.mesh, **common)
        out = run(trained.params, batch.tokens, batch.lengths, _SEED.value, _MAX_NEW.value,
                  _TEMPERATURE.value, _TOP_K.value, _TOP_P.value)
    tokens, counts = np.asarray(out["tokens"]), np.asarray(out["num_generated"])
    elapsed = time.perf_counter() - started
    jax.monitoring.unregister_event_duration_listener(listener)
    for text, row, n in zip(prompts, tokens, counts):
        print(f"\n> {text}\n{tok.decode(row[:n])}")
    decode_seconds = max(elapsed - sum(compile_seconds), 1e-9)
    print(f"\n{int(counts.sum())} tokens for {len(prompts)} prompts in {decode_seconds:.2f}s: "
          f"{counts.sum() / decode_seconds:.1f} tokens/s (plus {sum(compile_seconds):.1f}s compile)")


if __name__ == "__main__":
    cli.run(main)
