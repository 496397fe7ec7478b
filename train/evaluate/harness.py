"""meshlm as an lm-evaluation-harness model: `lm_eval --model meshlm --model_args workdir=DIR,...`.

Importing this module registers the class as "meshlm" in lm-eval's model registry (lm-eval
0.4.13 reads no plugins, so `python -m train.evaluate.lm_eval_cli` imports it before running
lm-eval's own CLI; from Python, import it before `lm_eval.simple_evaluate(model="meshlm")`).

Requests map onto meshlm's own jitted code:
- `loglikelihood`: contexts are encoded as meshlm encodes a prompt, [CLS] + ids; the
  boundary between context and continuation is handled as lm-eval's Hugging Face model
  does (trailing spaces of the context move to the continuation; the continuation's ids
  are those of context + continuation after the context's). Decoders sum the log-softmax
  of the continuation's tokens (scoring.py); BERT-style encoders give the
  pseudo-log-likelihood (pseudo_likelihood.py), so multiple-choice tasks run on them too.
- `loglikelihood_rolling`: lm-eval's rolling windows of the model's max_len, [CLS] first
  (encoders: disjoint windows, pseudo-log-likelihood).
- `generate_until`: the compiled decoding loop with stop strings (continuations.py).

Model args: workdir (required), step (latest by default), batch_size (rows per compiled
call; model args win over lm_eval's --batch_size; "auto" or none means 16; rounded up to a
multiple of the mesh's data x fsdp ways), mesh (data x fsdp x
tensor, e.g. 1x-1x1, the default: fsdp over every device), max_gen_toks (default: the
smaller of 256 and half of max_len), seed (for sampled generation).
"""

from __future__ import annotations

import json
import math
from typing import Any

from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import normalize_gen_kwargs
from tqdm import tqdm

from train.config import ConfigError
from train.evaluate.continuations import Continuer, Settings
from train.evaluate.pseudo_likelihood import masked_rows, text_rows
from train.evaluate.scoring import Row, Scorer, causal_row
from train.workdir import TrainedModel

DEFAULT_BATCH_SIZE = 16
_GEN_KEYS = {"until", "max_gen_toks", "do_sample", "temperature", "top_k", "top_p"}


def _int(name: str, value: Any) -> int:
    """A model arg as an integer, or one line naming it."""
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={value!r}; accepted: an integer") from None


def parse_mesh(mesh: Any) -> tuple[int, ...]:
    """A mesh shape from "1x-1x1" (model args cannot hold commas) or a sequence of three ints."""
    try:
        shape = tuple(int(s) for s in (mesh.split("x") if isinstance(mesh, str) else mesh))
    except (TypeError, ValueError):
        shape = ()
    if len(shape) != 3:
        raise ConfigError(f"mesh={mesh!r}; accepted: data x fsdp x tensor sizes such as 1x-1x1 or 2x2x2 "
                          "(one may be -1)")
    return shape


@register_model("meshlm")
class MeshLM(TemplateLM):
    """A meshlm checkpoint (decoder or encoder) answering lm-eval's three request types."""

    def __init__(self, workdir: str | None = None, step: int | None = None, batch_size: int | str | None = None,
                 mesh: Any = "1x-1x1", max_gen_toks: int | None = None, seed: int = 0, *,
                 trained: TrainedModel | None = None, device: str | None = None, max_batch_size: int | None = None):
        """Opens `workdir` (or takes an opened `trained`); `device` and `max_batch_size` are lm-eval's, unused."""
        super().__init__()
        del device, max_batch_size  # JAX places work by the mesh; batches have a fixed size
        if trained is None:
            from train.workdir import open_workdir

            if not workdir:
                raise ConfigError("model_args needs workdir=DIR: the workdir of a meshlm training run")
            trained = open_workdir(workdir, None if step in (None, "") else _int("step", step), parse_mesh(mesh))
        self.trained, self.workdir = trained, workdir
        cfg, tok = trained.config.model, trained.tokenizer
        self.tok, self.cfg, self.is_decoder = tok, cfg, cfg.arch == "llama"
        ways = trained.mesh.shape["data"] * trained.mesh.shape["fsdp"]
        wanted = DEFAULT_BATCH_SIZE if batch_size in (None, "") or str(batch_size).startswith("auto") \
            else _int("batch_size", batch_size)
        if wanted < 1:
            raise ConfigError(f"batch_size={batch_size}; accepted: an integer >= 1")
        self._batch_size = ways * math.ceil(wanted / ways)
        self._max_gen_toks = _int("max_gen_toks", max_gen_toks) if max_gen_toks else min(256, cfg.max_len // 2)
        self.scorer = Scorer(trained.layout, trained.mesh, batch_size=self._batch_size, max_len=cfg.max_len,
                             pad_id=tok.pad_id)
        self.continuer = None if not self.is_decoder else Continuer(
            trained.layout.graphdef, trained.layout.shardings["params"], cfg, trained.mesh, tok,
            batch_size=self._batch_size, seed=_int("seed", seed))

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> "MeshLM":
        """lm-eval's constructor path; model_args win over the harness's --batch_size default."""
        return cls.create_from_arg_obj(lm_utils.simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict[str, Any], additional_config: dict | None = None) -> "MeshLM":
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k not in arg_dict}
        accepted = {"workdir", "step", "batch_size", "mesh", "max_gen_toks", "seed"}
        unknown = sorted(set(arg_dict) - accepted)
        if unknown:
            raise ConfigError(f"model_args {unknown} are not meshlm's; accepted: {', '.join(sorted(accepted))}")
        return cls(**arg_dict, **extra)

    def use_params(self, params: Any, step: int) -> None:
        """Scores with another checkpoint's params of the same model (no recompile)."""
        self.trained.params, self.trained.step = params, step

    # --- what lm-eval reads -------------------------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        return self.tok.sep_id  # [SEP] ends every document meshlm trains on

    @property
    def prefix_token_id(self) -> int:
        return self.tok.cls_id  # [CLS] starts every document

    @property
    def max_length(self) -> int:
        return self.cfg.max_len

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def tokenizer_name(self) -> str:
        return f"meshlm-{self.tok.sha256()[:16]}"

    def get_model_info(self) -> dict:
        """Recorded in lm-eval's results under "config"."""
        return {"meshlm_workdir": str(self.workdir or ""), "meshlm_step": int(self.trained.step),
                "meshlm_arch": self.cfg.arch, "model_num_parameters": int(self.trained.layout.param_count)}

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        """The ids of `string` alone; [CLS] is added where a document starts (see `_encode_pair`)."""
        return self.tok.encode(string)

    def tok_decode(self, tokens: list[int], **kwargs) -> str:
        return self.tok.decode(tokens)

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """lm-eval's split of context and continuation, with [CLS] before the context."""
        context_enc, continuation_enc = super()._encode_pair(context, continuation)
        if not continuation_enc:
            raise ValueError(f"continuation {continuation!r} encodes to no tokens after context "
                             f"{context[-40:]!r}; a loglikelihood request needs some text to score")
        return [self.prefix_token_id] + context_enc, continuation_enc

    # --- the three request types ---------------------------------------------------------------

    def _loglikelihood_tokens(self, requests: list, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """(log-probability, greedy) of each continuation given its context (ids, [CLS] first)."""
        groups = [self._rows(context, continuation) for _, context, continuation in requests]
        scored = self._score_groups(groups, disable_tqdm, "loglikelihood")
        answers = [(sum(lp for lp, _ in rows), all(g for _, g in rows)) for rows in scored]
        for (request, _, _), answer in zip(requests, answers):
            if request is not None:
                self.cache_hook.add_partial("loglikelihood", request, answer)
        return answers

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        """Log-probability of each whole text, in windows of max_len ([CLS] before the first)."""
        groups = []
        for (string,) in (r.args for r in requests):
            ids = self.tok_encode(string)
            if not self.is_decoder:
                groups.append(text_rows(ids, max_len=self.cfg.max_len, cls_id=self.tok.cls_id,
                                        sep_id=self.tok.sep_id, mask_id=self.tok.mask_id))
                continue
            windows = map(lm_utils.make_disjoint_window, lm_utils.get_rolling_token_windows(
                token_list=ids, prefix_token=self.prefix_token_id, max_seq_len=self.cfg.max_len, context_len=1))
            groups.append([causal_row(context, target, self.cfg.max_len) for context, target in windows])
        scored = self._score_groups(groups, disable_tqdm, "loglikelihood_rolling")
        totals = [sum(lp for lp, _ in rows) for rows in scored]
        for request, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        """Greedy (or sampled) continuations cut at each request's stop strings."""
        if not self.is_decoder:
            raise ConfigError(f"generate_until needs a decoder (model.arch=llama); this checkpoint is a "
                              f"{self.cfg.arch} encoder, which answers loglikelihood tasks (multiple choice) only")
        by_settings: dict[str, list[int]] = {}
        settings: dict[str, Settings] = {}
        for i, request in enumerate(requests):
            key = json.dumps(request.args[1], sort_keys=True, default=str)
            if key not in settings:
                settings[key] = self._settings(request.args[1])
            by_settings.setdefault(key, []).append(i)
        texts: list[str] = [""] * len(requests)
        bar = tqdm(total=len(requests), disable=disable_tqdm, desc="meshlm generate_until")
        for key, indices in by_settings.items():
            outs = self.continuer.continue_texts(self.trained.params, [requests[i].args[0] for i in indices],
                                                 settings[key])
            for i, out in zip(indices, outs):
                texts[i] = out.text
                self.cache_hook.add_partial("generate_until", requests[i].args, out.text)
            bar.update(len(indices))
        bar.close()
        return texts

    # --- helpers ---------------------------------------------------------------------------------

    def _rows(self, context: list[int], continuation: list[int]) -> list[Row]:
        if self.is_decoder:
            return [causal_row(context, continuation, self.cfg.max_len)]
        return masked_rows(context, continuation, max_len=self.cfg.max_len, cls_id=self.tok.cls_id,
                           sep_id=self.tok.sep_id, mask_id=self.tok.mask_id)

    def _score_groups(self, groups: list[list[Row]], disable_tqdm: bool, what: str) -> list[list[tuple[float, bool]]]:
        """Scores every group's rows in one pass of batches; results regrouped."""
        flat = [row for rows in groups for row in rows]
        bar = tqdm(total=len(flat), disable=disable_tqdm, desc=f"meshlm {what} (rows)")
        scored = self.scorer.score(self.trained.params, flat, progress=bar.update)
        bar.close()
        out, k = [], 0
        for rows in groups:
            out.append(scored[k:k + len(rows)])
            k += len(rows)
        return out

    def _settings(self, gen_kwargs: dict) -> Settings:
        """lm-eval's generation kwargs as decoding-loop settings; unknown keys are refused."""
        if not isinstance(gen_kwargs, dict):
            raise ValueError(f"generation kwargs {gen_kwargs!r}; expected a dict")
        kwargs = dict(normalize_gen_kwargs(gen_kwargs, self.max_gen_toks))
        unknown = sorted(set(kwargs) - _GEN_KEYS)
        if unknown:
            raise ConfigError(f"generation kwargs {unknown} are not supported by meshlm; accepted: "
                              f"{', '.join(sorted(_GEN_KEYS))} (and lm-eval's max_new_tokens aliases)")
        until = kwargs["until"]
        until = [until] if isinstance(until, str) else list(until or [])
        temperature = float(kwargs.get("temperature") or 0.0) if kwargs.get("do_sample") else 0.0
        return Settings(until=tuple(until), max_new_tokens=int(kwargs["max_gen_toks"]), temperature=temperature,
                        top_k=int(kwargs.get("top_k") or 0), top_p=float(kwargs.get("top_p") or 1.0))
