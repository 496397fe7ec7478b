"""The tokenizer files of a Hugging Face folder: written by export, taken in by import.

Export writes what Transformers, vLLM and TGI read, so that a user's tokenizer gives
meshlm's ids without sentencepiece installed:

    tokenizer.json           data/fast_tokenizer.py's tokenizer, with meshlm's document
                             convention as its post-processor: a decoder's prompt starts with
                             the document start (as train.generate's prompts do) and nothing
                             is appended; an encoder's text is [CLS] ... [SEP] (pairs
                             [CLS] a [SEP] b [SEP], token types 0 and 1), as fill-mask and
                             fine-tuning encode it
    tokenizer_config.json    PreTrainedTokenizerFast, the special tokens by role, the model's
                             length, and left padding for decoders
    special_tokens_map.json  the special tokens by role
    generation_config.json   decoders: bos/eos/pad ids, so `generate` stops where decoding does
    tokenizer.model          meshlm's sentencepiece model itself, which import reads back

Import takes a folder's sentencepiece model (tokenizer.model, Llama-2 style) or else its
tokenizer.json (Llama-3, SmolLM, Qwen style) with the roles its JSON files name.
"""

from __future__ import annotations

import json
import pathlib
import shutil
from typing import Any

import tokenizers
from tokenizers import processors

from data.fast_tokenizer import fast_tokenizer
from data.hf_tokenizer import CONFIG_FILE, HFTokenizer, read_roles, write_roles
from data.tokenizer import HF_FILE, SPM_FILE, AnyTokenizer, Tokenizer, copy_tokenizer, fits_vocab
from train.config import ConfigError
from train.interop.hf_families import Family

SPECIAL_MAP_FILE = "special_tokens_map.json"
GENERATION_FILE = "generation_config.json"
SPM_NAMES = ("tokenizer.model", "spiece.model", "sentencepiece.bpe.model")


def special_token_ids(tok: AnyTokenizer | None) -> dict[str, int]:
    """pad/cls/sep/mask/unk ids for config.json (the ones the tokenizer has)."""
    if tok is None:
        return {"pad_token_id": 0}
    ids = {"pad_token_id": tok.pad_id, "cls_token_id": tok.cls_id, "sep_token_id": tok.sep_id,
           "mask_token_id": tok.mask_id, "unk_token_id": tok.unk_id}
    return {key: i for key, i in ids.items() if i is not None}


def special_tokens(tok: AnyTokenizer, family: Family) -> dict[str, str]:
    """The special tokens by Transformers role: bos/eos are the document start and end."""
    piece = tok.id_to_piece
    roles = {"bos_token": piece(tok.cls_id), "eos_token": piece(tok.sep_id), "pad_token": piece(tok.pad_id)}
    if tok.unk_id is not None:
        roles["unk_token"] = piece(tok.unk_id)
    if not family.causal:  # what BertForMaskedLM's pipelines and fine-tuning look for
        roles.update(cls_token=piece(tok.cls_id), sep_token=piece(tok.sep_id))
        if tok.mask_id is not None:
            roles["mask_token"] = piece(tok.mask_id)
    return roles


def tokenizer_config(tok: AnyTokenizer, family: Family, max_len: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """tokenizer_config.json: a fast tokenizer, its special tokens, length and padding side.

    `extra` holds keys other capabilities add (a workdir's chat template as `chat_template`).
    """
    inputs = ["input_ids", "attention_mask"] if family.causal else ["input_ids", "token_type_ids", "attention_mask"]
    return {"tokenizer_class": "PreTrainedTokenizerFast", **special_tokens(tok, family),
            "model_max_length": max_len, "padding_side": "left" if family.causal else "right",
            "model_input_names": inputs, "clean_up_tokenization_spaces": False, **(extra or {})}


def generation_config(tok: AnyTokenizer) -> dict[str, Any]:
    """generation_config.json of a decoder: start, stop and padding as train.generate uses them."""
    return {"bos_token_id": tok.cls_id, "eos_token_id": tok.sep_id, "pad_token_id": tok.pad_id, "do_sample": False}


def export_tokenizer(tok: AnyTokenizer, family: Family) -> tokenizers.Tokenizer:
    """The tokenizer.json tokenizer: meshlm's encoding plus its document convention."""
    fast = fast_tokenizer(tok)
    start, end = tok.id_to_piece(tok.cls_id), tok.id_to_piece(tok.sep_id)
    if family.causal:
        template = processors.TemplateProcessing(
            single=f"{start}:0 $A:0", pair=f"{start}:0 $A:0 {start}:1 $B:1", special_tokens=[(start, tok.cls_id)])
    else:
        template = processors.TemplateProcessing(
            single=f"{start}:0 $A:0 {end}:0", pair=f"{start}:0 $A:0 {end}:0 $B:1 {end}:1",
            special_tokens=[(start, tok.cls_id), (end, tok.sep_id)])
    previous = json.loads(fast.to_str()).get("post_processor") or {}
    if "ByteLevel" in json.dumps(previous):  # byte-level BPE: keep its offset trimming
        fast.post_processor = processors.Sequence([processors.ByteLevel(trim_offsets=False), template])
    else:
        fast.post_processor = template
    return fast


def write_tokenizer_files(tok: AnyTokenizer, out: pathlib.Path, family: Family, max_len: int,
                          extra_config: dict[str, Any] | None = None) -> None:
    """Every tokenizer file of an export (see the module docstring); extra_config goes into tokenizer_config.json."""
    export_tokenizer(tok, family).save(str(out / HF_FILE))
    _write_json(out / CONFIG_FILE, tokenizer_config(tok, family, max_len, extra_config))
    _write_json(out / SPECIAL_MAP_FILE, special_tokens(tok, family))
    if family.causal:
        _write_json(out / GENERATION_FILE, generation_config(tok))
    if isinstance(tok, Tokenizer):
        shutil.copyfile(tok.path, out / SPM_FILE)
    for stale in SPM_NAMES if not isinstance(tok, Tokenizer) else SPM_NAMES[1:]:
        (out / stale).unlink(missing_ok=True)  # an earlier export's, which import would prefer


def _write_json(path: pathlib.Path, value: dict) -> None:
    path.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def import_tokenizer(hf_dir: pathlib.Path, workdir: pathlib.Path, hf_config: dict, vocab_size: int) -> AnyTokenizer | None:
    """Copies the folder's tokenizer into the workdir (a sentencepiece model first, else tokenizer.json)."""
    spm = next((hf_dir / name for name in SPM_NAMES if (hf_dir / name).is_file()), None)
    tokenizer = None
    if spm is not None:
        try:
            tokenizer = Tokenizer(spm)
        except ValueError as e:
            if not (hf_dir / HF_FILE).is_file():  # else e.g. Llama-3's tiktoken file: use tokenizer.json
                raise ConfigError(f"--hf_dir={hf_dir}: {e}") from None
    if tokenizer is not None:
        (workdir / HF_FILE).unlink(missing_ok=True)  # a workdir holds one tokenizer
        copy_tokenizer(tokenizer, workdir)  # records the sha256 every later load checks
        tokenizer = Tokenizer(workdir / SPM_FILE)
    elif (hf_dir / HF_FILE).is_file():
        (workdir / SPM_FILE).unlink(missing_ok=True)
        shutil.copyfile(hf_dir / HF_FILE, workdir / HF_FILE)
        write_roles(workdir, _roles(hf_dir, hf_config))
        try:
            tokenizer = HFTokenizer(workdir / HF_FILE)
        except ValueError as e:
            raise ConfigError(f"--hf_dir={hf_dir}: {e}") from None
    else:
        return None
    if not fits_vocab(tokenizer, vocab_size):
        raise ConfigError(f"--hf_dir={hf_dir}: its tokenizer has {tokenizer.vocab_size} ids but config.json's "
                          f"vocab_size is {vocab_size}")
    return tokenizer


def _roles(hf_dir: pathlib.Path, hf_config: dict) -> dict[str, str]:
    """The special tokens by role from the folder's JSON files, bos/eos/pad ids filling gaps."""
    roles = read_roles(hf_dir)
    generation = hf_dir / GENERATION_FILE
    ids = {**hf_config, **(json.loads(generation.read_text()) if generation.is_file() else {})}
    backend = tokenizers.Tokenizer.from_file(str(hf_dir / HF_FILE))
    for role in ("bos", "eos", "pad"):
        token_id = ids.get(f"{role}_token_id")
        if isinstance(token_id, list):  # generation_config may list several stop ids: the first ends a document
            token_id = token_id[0] if token_id else None
        if f"{role}_token" not in roles and isinstance(token_id, int) and backend.id_to_token(token_id):
            roles[f"{role}_token"] = backend.id_to_token(token_id)
    return roles
