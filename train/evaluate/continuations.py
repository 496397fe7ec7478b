"""Text continuations for harness generation requests: the compiled decoding loop with stop strings.

Prompts are encoded as `train.generate` encodes them ([CLS] + ids), cut from the left so
that prompt plus new tokens fit the model's max_len, sorted by length and decoded
`batch_size` at a time (left-padded to a power-of-two bucket; the batch keeps its size,
so each (prompt bucket, new-token bucket, stop table) compiles once). A row ends at [SEP],
at the token limit, or when its newest tokens spell a stop string (stop_strings.py); the
text is then cut at the first stop string. Greedy results equal `train.generate`'s greedy
completion cut at the stop string.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from model.config import ModelConfig
from train.generate.autoregressive import bucket, compile_generate, left_pad, no_stops
from train.generate.stop_strings import cut_at_stop, stop_table


@dataclasses.dataclass(frozen=True)
class Settings:
    """How to continue: stop strings, the token limit, and greedy (temperature 0) or sampled picks."""

    until: tuple[str, ...] = ()
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0


@dataclasses.dataclass(frozen=True)
class Continuation:
    text: str  # cut at the first stop string
    token_ids: list[int]  # as generated ([SEP] or the stop sequence included)


class Continuer:
    """Runs batches of prompts through the decoding loop of one decoder, compiled per bucket."""

    def __init__(self, graphdef: Any, param_shardings: Any, cfg: ModelConfig, mesh: Any, tokenizer, *,
                 batch_size: int, seed: int = 0):
        self.graphdef, self.shardings, self.cfg, self.mesh = graphdef, param_shardings, cfg, mesh
        self.tokenizer, self.batch_size, self.seed = tokenizer, batch_size, seed
        self._runs: dict[int, Any] = {}
        self.generated_tokens = 0  # tokens the loop produced (early stops show as fewer)

    def prompt_ids(self, context: str, max_new_tokens: int) -> list[int]:
        """[CLS] + the context's ids, cut from the left to leave room for max_new_tokens."""
        room = self.cfg.max_len - max_new_tokens
        if room < 1:
            raise ValueError(f"max_gen_toks={max_new_tokens} leaves no room for a prompt in the model's "
                             f"max_len={self.cfg.max_len}; accepted: max_gen_toks < {self.cfg.max_len}")
        return ([self.tokenizer.cls_id] + self.tokenizer.encode(context))[-room:]

    def continue_texts(self, params: Any, contexts: list[str], settings: Settings) -> list[Continuation]:
        """The continuation of each context, in the order given."""
        prompts = [self.prompt_ids(c, settings.max_new_tokens) for c in contexts]
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        table = stop_table(self.tokenizer, list(settings.until))
        results: list[Continuation | None] = [None] * len(prompts)
        for number, first in enumerate(range(0, len(order), self.batch_size)):
            chunk = order[first:first + self.batch_size]
            outs = self._run_batch(params, [prompts[i] for i in chunk], settings, table, self.seed + number)
            for i, out in zip(chunk, outs):
                results[i] = out
        return results  # type: ignore[return-value]

    def _run_batch(self, params: Any, prompts: list[list[int]], settings: Settings, table: np.ndarray,
                   seed: int) -> list[Continuation]:
        ids = self._generate(params, prompts, settings, table, seed)
        results = [self._finish(row, settings) for row in ids]
        # A row ended by a stop sequence whose text lacks every stop string (a tokenizer whose
        # decoding is not piecewise) is decoded again without the early end: exact either way.
        again = [k for k, (row, out) in enumerate(zip(ids, results))
                 if self._ended_by_stop(row, settings) and out.text == self._text(row)]
        if again:
            redo = self._generate(params, [prompts[k] for k in again], settings, no_stops(), seed)
            for k, row in zip(again, redo):
                results[k] = self._finish(row, settings)
        return results

    def _generate(self, params: Any, prompts: list[list[int]], settings: Settings, table: np.ndarray,
                  seed: int) -> list[list[int]]:
        """Generated ids per prompt (a full batch is run; filler rows are one [CLS])."""
        rows = prompts + [[self.tokenizer.cls_id]] * (self.batch_size - len(prompts))
        batch = left_pad(rows, bucket(max(len(r) for r in rows)), self.tokenizer.pad_id)
        out = self._compiled(bucket(settings.max_new_tokens))(
            params, batch.tokens, batch.lengths, seed, settings.max_new_tokens, settings.temperature,
            settings.top_k, settings.top_p, table)
        tokens, counts = np.asarray(out["tokens"]), np.asarray(out["num_generated"])
        self.generated_tokens += int(counts[:len(prompts)].sum())
        return [row[:n].tolist() for row, n in zip(tokens[:len(prompts)], counts)]

    def _compiled(self, max_new_bucket: int):
        if max_new_bucket not in self._runs:
            self._runs[max_new_bucket] = compile_generate(
                self.graphdef, self.shardings, self.cfg, self.mesh, max_new_bucket=max_new_bucket,
                eos_id=self.tokenizer.sep_id, pad_id=self.tokenizer.pad_id)
        return self._runs[max_new_bucket]

    def _text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    def _finish(self, ids: list[int], settings: Settings) -> Continuation:
        return Continuation(cut_at_stop(self._text(ids), list(settings.until)), ids)

    def _ended_by_stop(self, ids: list[int], settings: Settings) -> bool:
        return len(ids) < settings.max_new_tokens and (not ids or ids[-1] != self.tokenizer.sep_id)
