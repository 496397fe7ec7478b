"""Generate text from a trained decoder workdir.

    python -m train.generate.decode_cli --workdir=DIR --prompt="def main(" [--prompt=...] [--prompts_file=FILE]
        [--max_new_tokens=64] [--temperature=0.8 --top_k=40 --top_p=0.95 --seed=0] [--beam_width=4] [--chat]
        [--dtype=float32 | bfloat16 | int8]

--chat sends each prompt as a user message through the workdir's chat template (kept by
fine-tuning: train/finetune/supervised.py), so a fine-tuned model answers it as it learned to.
--dtype holds the decoder's weights in that dtype for decoding (bfloat16 and int8 compute in
bfloat16 with float32 accumulation; int8 has per-channel scales): see model/decode_kernels.py.

The library is train/generate/completions.py.
"""

from __future__ import annotations

import pathlib

from absl import flags

from train import program

_WORKDIR = program.WORKDIR
_STEP = program.STEP
_DTYPE = program.DTYPE
_PROMPT = flags.DEFINE_multi_string("prompt", [], "A prompt; repeat the flag for a batch.")
_PROMPTS_FILE = flags.DEFINE_string("prompts_file", None, "A text file with one prompt per line.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 64, "Tokens to generate per prompt at most.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "0 decodes greedily; > 0 samples.")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Sample among the k most likely tokens (0: all).")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Sample within the smallest set of mass >= top_p.")
_SEED = program.SEED
_BEAM = flags.DEFINE_integer("beam_width", 1, "> 1 runs beam search instead of sampling.")
_LENGTH_PENALTY = flags.DEFINE_float("length_penalty", 1.0, "Beam score = log-prob / length ** this.")
_CHAT = flags.DEFINE_bool("chat", False, "Render each prompt as a user message with the workdir's chat template.")


def read_prompts() -> list[str]:
    """The prompts from --prompt flags and --prompts_file, in that order."""
    prompts = list(_PROMPT.value)
    if _PROMPTS_FILE.value:
        path = pathlib.Path(_PROMPTS_FILE.value)
        if not path.is_file():
            raise program.ConfigError(f"--prompts_file={path} is not a file; pass a text file with one prompt per line")
        prompts += path.read_text(encoding="utf-8").splitlines()
    if not prompts:
        raise program.ConfigError("no prompt: pass --prompt=\"...\" or --prompts_file=FILE")
    return prompts


def sampling_from_flags():
    """The sampling flags as one checked value, before any device work."""
    from train.generate.completions import Sampling

    sampling = Sampling(max_new_tokens=_MAX_NEW.value, temperature=_TEMPERATURE.value, top_k=_TOP_K.value,
                        top_p=_TOP_P.value, seed=_SEED.value, beam_width=_BEAM.value,
                        length_penalty=_LENGTH_PENALTY.value)
    sampling.check()
    return sampling


def main(argv: list[str]) -> None:
    prompts = read_prompts()
    sampling = sampling_from_flags()
    from train.generate.completions import check_dtype, complete, workdir_chat_template

    check_dtype(_DTYPE.value)
    from train.workdir import open_workdir

    trained = open_workdir(_WORKDIR.value or "", _STEP.value)
    template = workdir_chat_template(_WORKDIR.value, trained.data.tokenizer) if _CHAT.value else None
    out = complete(trained, prompts, sampling, template, _DTYPE.value)
    for text, completion in zip(prompts, out.texts):
        print(f"\n> {text}\n{completion}")
    total = sum(len(ids) for ids in out.token_ids)
    print(f"\n{total} tokens for {len(prompts)} prompts in {out.decode_seconds:.2f}s: "
          f"{total / out.decode_seconds:.1f} tokens/s (plus {out.compile_seconds:.1f}s compile; {_DTYPE.value} weights)")


if __name__ == "__main__":
    program.run(main)
