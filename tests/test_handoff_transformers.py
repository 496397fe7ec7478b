"""The hand-off to serving: an export behaves in Transformers exactly as the trained model does in meshlm.

A tiny encoder and decoder are trained at test time (tests/export_fixtures.py, once per
session) and exported; a Python without sentencepiece then uses the folders as a user
would (AutoTokenizer, pipeline("fill-mask"), model.generate) in tests/transformers_user_worker.py,
and its answers are compared with meshlm's tokenizer, train.fill_mask and train.decode.
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import sentencepiece

from train.checkpoints.params import CheckpointParams
from train.generate.completions import Sampling, complete
from train.generate.mask_predict import fill
from train.interop.hf_export import export_hf
from train.workdir import open_workdir

from tests.data_fixtures import VARIED_TEXTS
from tests.export_fixtures import trained_workdir

pytestmark = pytest.mark.slow  # two models trained, a Transformers process: about a minute

ROOT = pathlib.Path(__file__).resolve().parents[1]
MASKED = ["[MASK] the file and read it.", "Return the [MASK] of the list.", "This is the default [MASK]",
          "If the [MASK] is None, a new one is made.", "The function returns a [MASK], or None.",
          "Raise an error if ([MASK]) is not found."]
PROMPTS = ["Return the", "The function", "This module provides a", "If the value is", "Create a new",
           "Args:", "The default is", "Raise ValueError if the file"]
MAX_NEW = 20


def _python_without_sentencepiece(tmp_path: pathlib.Path) -> pathlib.Path:
    """A folder of links to every installed package except sentencepiece, to run `python -S` on."""
    site = pathlib.Path(sentencepiece.__file__).parents[1]
    shadow = tmp_path / "site-packages"
    shadow.mkdir()
    for entry in site.iterdir():
        if not entry.name.lower().startswith("sentencepiece"):
            (shadow / entry.name).symlink_to(entry)
    return shadow


@pytest.fixture(scope="module")
def handoff(tmp_path_factory):
    """(trained encoder, trained decoder, export folders, what Transformers answered about them)."""
    tmp = tmp_path_factory.mktemp("handoff")
    encoder = open_workdir(trained_workdir(tmp_path_factory, "bert"))
    decoder = open_workdir(trained_workdir(tmp_path_factory, "llama"))
    exports = {"encoder": tmp / "encoder", "decoder": tmp / "decoder", "decoder_bf16": tmp / "decoder_bf16"}
    export_hf(CheckpointParams(encoder.workdir), exports["encoder"])
    export_hf(CheckpointParams(decoder.workdir), exports["decoder"])
    export_hf(CheckpointParams(decoder.workdir), exports["decoder_bf16"], "bfloat16")
    request = {**{k: str(v) for k, v in exports.items()}, "texts": VARIED_TEXTS, "masked": MASKED,
               "prompts": PROMPTS, "max_new_tokens": MAX_NEW}
    (tmp / "request.json").write_text(json.dumps(request))
    env = {**os.environ, "PYTHONPATH": f"{_python_without_sentencepiece(tmp)}{os.pathsep}{ROOT}",
           "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run([sys.executable, "-S", str(ROOT / "tests" / "transformers_user_worker.py"),
                             str(tmp / "request.json")], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return encoder, decoder, exports, json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def decoded(handoff):
    """train.decode's greedy continuations of PROMPTS (one left-padded batch in meshlm too)."""
    _, decoder, _, _ = handoff
    return complete(decoder, PROMPTS, Sampling(max_new_tokens=MAX_NEW)).token_ids


def test_export_folders_hold_a_fast_tokenizer_and_generation_config(handoff):
    encoder, decoder, exports, answer = handoff
    for kind in ("encoder", "decoder"):
        names = {p.name for p in exports[kind].iterdir()}
        assert {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model"} <= names
        assert answer[kind]["is_fast"] and answer[kind]["class"] in ("TokenizersBackend", "PreTrainedTokenizerFast")
    tok = decoder.tokenizer
    generation = json.loads((exports["decoder"] / "generation_config.json").read_text())
    assert (generation["bos_token_id"], generation["eos_token_id"], generation["pad_token_id"]) == (
        tok.cls_id, tok.sep_id, tok.pad_id)
    assert not (exports["encoder"] / "generation_config.json").exists()


def test_auto_tokenizer_gives_meshlms_ids(handoff):
    """Decoders: the document start prepended, nothing appended; encoders: [CLS] ... [SEP]."""
    encoder, decoder, _, answer = handoff
    tok = encoder.tokenizer
    want_encoder = [[tok.cls_id] + tok.encode(t) + [tok.sep_id] for t in VARIED_TEXTS]
    want_decoder = [[tok.cls_id] + tok.encode(t) for t in VARIED_TEXTS]
    assert answer["encoder"]["ids"] == want_encoder
    assert answer["decoder"]["ids"] == want_decoder
    first, second = tok.encode("first part"), tok.encode("second part")
    assert answer["encoder"]["pair"] == [tok.cls_id, *first, tok.sep_id, *second, tok.sep_id]  # as fine-tuning packs pairs
    assert answer["encoder"]["pair_types"] == [0] * (len(first) + 2) + [1] * (len(second) + 1)
    masked = want_encoder[VARIED_TEXTS.index("Let there be [MASK]: and")]
    assert masked.count(tok.mask_id) == 1 and tok.id_to_piece(masked[masked.index(tok.mask_id) - 1]) != "\u2581"


def test_fill_mask_pipeline_equals_train_fill_mask(handoff):
    encoder, _, _, answer = handoff
    ours = fill(encoder, MASKED, 5)
    tok = encoder.tokenizer
    worst = 0.0
    for text, (candidates,), theirs in zip(MASKED, ours, answer["fill_mask"]):
        theirs = [(tok.id_to_piece(i).replace("\u2581", ""), p) for i, p in theirs]
        assert [piece for piece, _ in theirs] == [piece for piece, _ in candidates], text
        worst = max(worst, *(abs(p - q) for (_, p), (_, q) in zip(theirs, candidates)))
    print(f"\nfill-mask pipeline vs train.fill_mask: same top-5 on {len(MASKED)} texts, "
          f"probabilities within {worst:.1e}")
    assert worst <= 1e-4
    assert max(p for (candidates,) in ours for _, p in candidates) > 0.02  # trained: far from uniform (1/800)


def test_generate_equals_train_decode_greedy(handoff, decoded):
    _, decoder, _, answer = handoff
    ours = decoded
    assert answer["generate_one"] == ours  # batch 1
    assert answer["generate_batch"] == ours  # one left-padded batch of prompts of different lengths
    assert len({len(decoder.tokenizer.encode(p)) for p in PROMPTS}) > 3
    assert len({tuple(row) for row in ours}) > len(PROMPTS) // 2  # a trained model: continuations differ


def test_bf16_export_agreement(handoff, decoded):
    """bf16 weights and compute: greedy continuations equal meshlm's fp32 ones on most prompts."""
    _, _, _, answer = handoff
    ours = decoded
    same = [a == b for a, b in zip(answer["generate_bf16"], ours)]
    tokens = [sum(x == y for x, y in zip(a, b)) / max(len(b), 1) for a, b in zip(answer["generate_bf16"], ours)]
    print(f"\nbf16 export vs meshlm fp32 greedy: {sum(same)}/{len(same)} prompts identical, "
          f"{np.mean(tokens):.3f} of tokens equal position by position")
    assert sum(same) > len(same) / 2
