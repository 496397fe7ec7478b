"""A Hugging Face `tokenizer.json` (read by the `tokenizers` library) behind meshlm's tokenizer interface.

An imported model brings its own tokenizer (Llama-3, SmolLM, Qwen: byte-level BPE; others
unigram or WordPiece). The file itself does not say which token starts or ends a document,
so the roles come from `tokenizer_config.json` beside it (HF's file: `bos_token`,
`eos_token`, `pad_token`, ...; `special_tokens_map.json` fills in what it lacks). meshlm
needs a document start and end:

    document start (cls_id)   bos_token, else cls_token, else eos_token (Qwen has no bos)
    document end (sep_id)     eos_token, else sep_token
    pad_id                    pad_token, else the document end
    mask_id, unk_id           mask_token, unk_token, or None

`sha256` covers the file and these roles, so a checkpoint notices a change of either.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
from collections.abc import Sequence

import numpy as np
import tokenizers

CONFIG_FILE = "tokenizer_config.json"
SPECIAL_MAP_FILE = "special_tokens_map.json"
ROLE_KEYS = ("bos_token", "eos_token", "cls_token", "sep_token", "pad_token", "unk_token", "mask_token")


def read_roles(folder: pathlib.Path) -> dict[str, str]:
    """The special tokens a Hugging Face folder names, by role (tokenizer_config.json wins)."""
    roles: dict[str, str] = {}
    for name in (SPECIAL_MAP_FILE, CONFIG_FILE):
        path = folder / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path} is not valid JSON ({e})") from None
        for key in ROLE_KEYS:
            value = data.get(key)
            if isinstance(value, dict):  # {"content": "<s>", "lstrip": false, ...}
                value = value.get("content")
            if isinstance(value, str) and value:
                roles[key] = value
    return roles


class HFTokenizer:
    """A tokenizer.json with the special ids the trainer needs, named by tokenizer_config.json."""

    def __init__(self, path: str | os.PathLike):
        self._path = pathlib.Path(path)
        if not self._path.is_file():
            raise FileNotFoundError(f"no tokenizer at {self._path}: expected a Hugging Face tokenizer.json")
        data = self._path.read_bytes()
        try:
            self._tk = tokenizers.Tokenizer.from_str(data.decode("utf-8"))
        except Exception as e:  # tokenizers raises a bare Exception for bad JSON
            raise ValueError(f"{self._path} is not a Hugging Face tokenizer.json ({str(e).splitlines()[0][:120]})") from None
        self._roles = read_roles(self._path.parent)
        role = self._role_id
        self._cls_id = role("bos_token") if "bos_token" in self._roles else role("cls_token")
        self._sep_id = role("eos_token") if "eos_token" in self._roles else role("sep_token")
        if self._sep_id is None:
            raise ValueError(f"{self._path.parent / CONFIG_FILE} names no eos_token (or sep_token): meshlm needs "
                             "the token that ends a document")
        if self._cls_id is None:
            self._cls_id = self._sep_id
        self._pad_id = role("pad_token") if "pad_token" in self._roles else self._sep_id
        self._mask_id, self._unk_id = role("mask_token"), role("unk_token")
        ids = {"cls": self._cls_id, "sep": self._sep_id, "pad": self._pad_id, "mask": self._mask_id,
               "unk": self._unk_id}
        self._sha256 = hashlib.sha256(data + json.dumps(ids, sort_keys=True).encode()).hexdigest()

    def _role_id(self, key: str) -> int | None:
        """The id of the token a role names; an error when tokenizer.json lacks it."""
        if key not in self._roles:
            return None
        i = self._tk.token_to_id(self._roles[key])
        if i is None:
            raise ValueError(f"{self._path.parent / CONFIG_FILE} names {key} {self._roles[key]!r}, which "
                             f"{self._path.name} does not have")
        return i

    @property
    def path(self) -> pathlib.Path:
        """The tokenizer.json this tokenizer was loaded from."""
        return self._path

    @property
    def backend(self) -> tokenizers.Tokenizer:
        """A copy of the `tokenizers.Tokenizer` itself (exports write it with a post-processor)."""
        return tokenizers.Tokenizer.from_str(self._tk.to_str())

    @property
    def roles(self) -> dict[str, str]:
        """The special tokens by HF role name, as tokenizer_config.json gave them."""
        return dict(self._roles)

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included (an embedding may have more rows)."""
        return self._tk.get_vocab_size(with_added_tokens=True)

    @property
    def pad_id(self) -> int:
        """Id used for padding (segment 0) in packed rows."""
        return self._pad_id

    @property
    def unk_id(self) -> int | None:
        """Id for text the vocabulary cannot cover (None for byte-level tokenizers, which need none)."""
        return self._unk_id

    @property
    def cls_id(self) -> int:
        """Id that starts every packed segment."""
        return self._cls_id

    @property
    def sep_id(self) -> int:
        """Id that ends every packed segment."""
        return self._sep_id

    @property
    def mask_id(self) -> int | None:
        """Id that MLM masking substitutes (None when the tokenizer has no mask token)."""
        return self._mask_id

    def encode(self, text: str) -> list[int]:
        """Token ids of one text, without any special ids added."""
        return self._tk.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of many texts, encoded on all cores by tokenizers."""
        return [e.ids for e in self._tk.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Text of ids, dropping pad, cls and sep."""
        skip = {self._pad_id, self._cls_id, self._sep_id}
        return self._tk.decode([int(i) for i in np.asarray(ids).reshape(-1) if int(i) not in skip],
                               skip_special_tokens=False)

    def id_to_piece(self, i: int) -> str:
        """The vocabulary piece of one id, for inspecting tokenizations."""
        return self._tk.id_to_token(int(i)) or ""

    def special_ids(self) -> np.ndarray:
        """Ids MLM masking must never select: pad, cls, sep and mask."""
        return np.array(sorted({i for i in (self._pad_id, self._cls_id, self._sep_id, self._mask_id)
                                if i is not None}), np.int32)

    def word_start_table(self) -> np.ndarray:
        """Bool [vocab_size]: True where a piece begins a word, for whole-word masking.

        The marker follows the tokenizer's kind: 'Ġ' (byte-level BPE), no '##' (WordPiece),
        else sentencepiece's '▁'. Special and added tokens count as word starts.
        """
        spec = json.loads(self._tk.to_str())
        kinds = json.dumps([spec.get("pre_tokenizer"), spec.get("decoder"), spec.get("model", {}).get("type")])
        added = {t["id"] for t in spec.get("added_tokens", [])} | set(self.special_ids().tolist())
        if '"WordPiece"' in kinds:
            prefix = spec["model"].get("continuing_subword_prefix") or "##"
            starts = lambda piece: not piece.startswith(prefix)
        else:
            marker = "\u0120" if '"ByteLevel"' in kinds else "\u2581"
            starts = lambda piece: piece.startswith(marker)
        return np.array([i in added or starts(self.id_to_piece(i)) for i in range(self.vocab_size)], dtype=bool)

    def sha256(self) -> str:
        """Hex digest of tokenizer.json and the special ids, identifying it in caches and checkpoints."""
        return self._sha256

    def copy_to(self, directory: pathlib.Path) -> pathlib.Path:
        """Writes tokenizer.json and a tokenizer_config.json holding the roles into directory."""
        target = directory / "tokenizer.json"
        if self._path.resolve() != target.resolve():
            shutil.copyfile(self._path, target)
        write_roles(directory, self._roles)
        return target


def write_roles(directory: pathlib.Path, roles: dict[str, str]) -> None:
    """A tokenizer_config.json naming the special tokens by role (what HFTokenizer reads back)."""
    config = {"tokenizer_class": "PreTrainedTokenizerFast", **{k: roles[k] for k in ROLE_KEYS if k in roles}}
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
