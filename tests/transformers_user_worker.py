"""What a Transformers user does with meshlm's exports, run in a Python without sentencepiece.

    python -S tests/transformers_user_worker.py REQUEST.json   (sys.path: site-packages less sentencepiece)

REQUEST names the export folders and the texts; the answers (token ids, fill-mask
candidates, greedy continuations) go to stdout as one JSON object for the test to compare
with meshlm's own.
"""

import importlib.util
import json
import sys


def tokenizer_facts(folder: str, texts: list[str]) -> dict:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    return {"class": type(tok).__name__, "is_fast": tok.is_fast, "ids": [tok(t)["input_ids"] for t in texts],
            "pair": tok("first part", "second part")["input_ids"], "pair_types": tok("first part", "second part").get("token_type_ids")}


def fill_mask(folder: str, texts: list[str]) -> list[list[tuple[int, float]]]:
    from transformers import pipeline

    fill = pipeline("fill-mask", model=folder, tokenizer=folder, top_k=5, device="cpu")
    return [[(c["token"], c["score"]) for c in fill(text)] for text in texts]


def generate(folder: str, prompts: list[str], max_new_tokens: int, batched: bool) -> list[list[int]]:
    """Greedy continuations as a user writes it: model.generate(**tok(prompt), do_sample=False)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    eos = model.generation_config.eos_token_id
    groups = [prompts] if batched else [[p] for p in prompts]
    out = []
    with torch.no_grad():
        for group in groups:
            inputs = tok(group, return_tensors="pt", padding=True)  # left-padded: tokenizer_config says so
            tokens = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens)
            for row in tokens[:, inputs["input_ids"].shape[1]:].tolist():
                out.append(row[:row.index(eos) + 1] if eos in row else row)
    return out


def main() -> None:
    request = json.loads(open(sys.argv[1], encoding="utf-8").read())
    assert importlib.util.find_spec("sentencepiece") is None, "this Python must not have sentencepiece"
    answer = {"encoder": tokenizer_facts(request["encoder"], request["texts"]),
              "decoder": tokenizer_facts(request["decoder"], request["texts"]),
              "fill_mask": fill_mask(request["encoder"], request["masked"]),
              "generate_one": generate(request["decoder"], request["prompts"], request["max_new_tokens"], False),
              "generate_batch": generate(request["decoder"], request["prompts"], request["max_new_tokens"], True),
              "generate_bf16": generate(request["decoder_bf16"], request["prompts"], request["max_new_tokens"], False)}
    print(json.dumps(answer))


if __name__ == "__main__":
    main()
