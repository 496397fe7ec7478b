"""Completions of text prompts by a trained decoder: encode, pad to a bucket, decode, detokenize.

Prompts are batched together (left-padded to a power-of-two bucket, so similar calls
reuse one compile); each starts with [CLS] as the training rows do, and [SEP] ends a
generation. With a chat template (a fine-tuned workdir's), each prompt is a user message
rendered as the template renders it for fine-tuning, up to the assistant's opening. Sampling runs the compiled loop of autoregressive.py; beam_width > 1 runs
beam_search.py on the same prefill and cached step.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np

from data.chat_template import TEMPLATE_FILE, ChatTemplate, encode_text, special_tokens, workdir_template
from model.precision import WEIGHT_DTYPES
from train.config import ConfigError
from train.generate.autoregressive import bucket, compile_generate, left_pad
from train.generate.beam_search import compile_beam_search


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How to pick tokens: greedy (temperature 0), sampled, or beam search (beam_width > 1)."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    beam_width: int = 1
    length_penalty: float = 1.0

    def check(self) -> None:
        """Values in range, before any device work."""
        if self.max_new_tokens < 1:
            raise ConfigError(f"--max_new_tokens={self.max_new_tokens}; accepted: an integer >= 1")
        if self.temperature < 0 or self.top_k < 0 or not 0 < self.top_p <= 1 or self.beam_width < 1:
            raise ConfigError(f"--temperature={self.temperature} --top_k={self.top_k} --top_p={self.top_p} "
                              f"--beam_width={self.beam_width}; accepted: temperature >= 0, top_k >= 0, "
                              "0 < top_p <= 1, beam_width >= 1")


def check_dtype(name: str) -> str:
    """A decoding weights dtype, or a one-line error naming the accepted ones."""
    if name not in WEIGHT_DTYPES:
        raise ConfigError(f"--dtype={name}; accepted: {', '.join(WEIGHT_DTYPES)}")
    return name


@dataclasses.dataclass
class Completions:
    texts: list[str]
    token_ids: list[list[int]]
    decode_seconds: float  # wall time less compile time
    compile_seconds: float


def encode_prompts(prompts: list[str], tokenizer, max_len: int, max_new_tokens: int,
                   template: ChatTemplate | None = None) -> list[list[int]]:
    """[CLS] + pieces per prompt (or the chat template's rendering of it as a user message);
    an empty or too long prompt is a one-line error naming it."""
    rows = []
    for number, text in enumerate(prompts, 1):
        if not text.strip():
            raise ConfigError(f"prompt {number} is empty; give some text to continue")
        if template is None:
            ids = [tokenizer.cls_id] + tokenizer.encode(text)
        else:
            chat = template.render([{"role": "user", "content": text}], add_generation_prompt=True,
                                   where=f"prompt {number}")
            ids = encode_text(tokenizer, chat)
        if len(ids) + max_new_tokens > max_len:
            raise ConfigError(
                f"prompt {number} ({text[:40]!r}...) is {len(ids)} tokens; with --max_new_tokens={max_new_tokens} "
                f"that exceeds the model's max_len={max_len}; shorten it or lower --max_new_tokens")
        rows.append(ids)
    return rows


def workdir_chat_template(workdir: str, tokenizer) -> ChatTemplate:
    """A workdir's chat template (decode --chat), rendered with its tokenizer's special tokens."""
    text = workdir_template(workdir)
    if text is None:
        raise ConfigError(f"--chat: {workdir} has no {TEMPLATE_FILE}; fine-tuning (./launch.sh sft) keeps one "
                          "there, or put a Jinja chat template there yourself")
    return ChatTemplate(text, special_tokens(tokenizer), f"{workdir}/{TEMPLATE_FILE}")


def complete(trained, prompts: list[str], sampling: Sampling, template: ChatTemplate | None = None,
             dtype: str = "float32") -> Completions:
    """The continuation of each prompt by the workdir's decoder (one batched call), weights held in
    `dtype`; with a chat template, the assistant's answer to each prompt."""
    check_dtype(dtype)
    if trained.config.model.arch != "llama":
        raise ConfigError(f"the workdir holds a {trained.config.model.arch} model; decoding needs model.arch=llama "
                          "(for BERT use python -m train.generate.fill_mask_cli)")
    tok, cfg = trained.tokenizer, trained.config.model
    rows = encode_prompts(prompts, tok, cfg.max_len, sampling.max_new_tokens, template)
    batch = left_pad(rows, bucket(max(len(r) for r in rows)), tok.pad_id)
    common = dict(max_new_bucket=bucket(sampling.max_new_tokens), eos_id=tok.sep_id, pad_id=tok.pad_id, dtype=dtype)
    shardings = trained.layout.shardings["params"]
    compile_seconds = []
    listener = lambda event, seconds, **_: compile_seconds.append(seconds) if event.endswith("backend_compile_duration") else None
    jax.monitoring.register_event_duration_secs_listener(listener)
    started = time.perf_counter()
    try:
        if sampling.beam_width > 1:
            run = compile_beam_search(trained.layout.graphdef, shardings, cfg, trained.mesh,
                                      beam_width=sampling.beam_width, **common)
            out = run(trained.params, batch.tokens, batch.lengths, sampling.max_new_tokens, sampling.length_penalty)
        else:
            run = compile_generate(trained.layout.graphdef, shardings, cfg, trained.mesh, **common)
            out = run(trained.params, batch.tokens, batch.lengths, sampling.seed, sampling.max_new_tokens,
                      sampling.temperature, sampling.top_k, sampling.top_p)
        tokens, counts = np.asarray(out["tokens"]), np.asarray(out["num_generated"])
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    elapsed = time.perf_counter() - started
    ids = [row[:n].tolist() for row, n in zip(tokens, counts)]
    return Completions([tok.decode(i) for i in ids], ids, max(elapsed - sum(compile_seconds), 1e-9),
                       sum(compile_seconds))
