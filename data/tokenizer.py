"""Tokenizers: meshlm's sentencepiece models (trained by data/sentencepiece_training.py, or
loaded), and which file is a workdir's.

Our models fix the special ids: [PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4, with no
BOS/EOS. [CLS], [SEP] and [MASK] are user-defined symbols, so the literal text "[MASK]" in a
prompt encodes to MASK_ID. A loaded model may be any sentencepiece model that has these
symbols, or bos/eos ids instead of [CLS]/[SEP] (Llama-2 style: the document start and end;
no pad id means the end id pads); the properties report the ids it really has, so use
them. (The "word" model type is the one exception among ours: sentencepiece adds a
'▁[CLS]'-style piece after each symbol, so its ids are [CLS]=2, [SEP]=4, [MASK]=6.)

A workdir (or token store) holds one tokenizer: `tokenizer.model` (sentencepiece, this
module's `Tokenizer`) or `tokenizer.json` (a Hugging Face tokenizer an imported model
brought, `data/hf_tokenizer.py`'s `HFTokenizer`); `open_tokenizer` reads either, by name.
"""

import hashlib
import os
import pathlib
import shutil
from collections.abc import Sequence

import numpy as np
import sentencepiece as spm

from data import remote
from data.hf_tokenizer import CONFIG_FILE, HFTokenizer
from data.integrity import check_recorded_sha256, record_path, record_sha256

PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = 0, 1, 2, 3, 4
PAD_PIECE, UNK_PIECE = "[PAD]", "[UNK]"
CLS_PIECE, SEP_PIECE, MASK_PIECE = "[CLS]", "[SEP]", "[MASK]"
_WORD_START = "\u2581"  # sentencepiece's "▁", marking a piece that follows a space


class Tokenizer:
    """A loaded sentencepiece model with the special ids the trainer needs."""

    def __init__(self, model_path: str | os.PathLike):
        self._path = pathlib.Path(model_path)
        model = _read_model(self._path)
        self._sha256 = hashlib.sha256(model).hexdigest()
        check_recorded_sha256(self._path, self._sha256, "restore the original file, or start over "
                              "in a new --workdir (checkpoints are tied to their tokenizer)")
        self._sp = _load_processor(self._path, model)
        symbols = {piece: self._user_symbol(piece) for piece in (CLS_PIECE, SEP_PIECE, MASK_PIECE)}
        self._cls_id = self._document_id(symbols[CLS_PIECE], self._sp.bos_id(), CLS_PIECE, "bos")
        self._sep_id = self._document_id(symbols[SEP_PIECE], self._sp.eos_id(), SEP_PIECE, "eos")
        self._mask_id = symbols[MASK_PIECE]
        self._pad_id = self._sp.pad_id() if self._sp.pad_id() >= 0 else self._sep_id
        self._aliases = self._word_aliases()
        # Symbols in text encode as their id alone (see _clean).
        self._symbols = {i for i in symbols.values() if i is not None}
        space = self._sp.piece_to_id(_WORD_START)
        self._space_id = space if self._sp.id_to_piece(space) == _WORD_START else None

    def _user_symbol(self, piece: str) -> int | None:
        """The id of a user-defined piece such as [MASK], or None when the model lacks it."""
        i = self._sp.piece_to_id(piece)
        return i if self._sp.id_to_piece(i) == piece else None

    def _document_id(self, symbol: int | None, fallback: int, piece: str, name: str) -> int:
        """[CLS]/[SEP] when the model has them, else its bos/eos id; an error when it has neither."""
        if symbol is not None:
            return symbol
        if fallback >= 0:
            return fallback
        raise ValueError(f"tokenizer {self._path} has no {piece} piece and no {name} id: expected a model "
                         f"trained with user_defined_symbols {CLS_PIECE},{SEP_PIECE},{MASK_PIECE} "
                         "(train_tokenizer does) or one with bos and eos ids")

    def _word_aliases(self) -> dict[int, int]:
        """Maps '▁[MASK]'-style pieces (word models add them) to the special ids themselves."""
        aliases = {}
        for piece, i in ((CLS_PIECE, self._cls_id), (SEP_PIECE, self._sep_id),
                         (MASK_PIECE, self._mask_id)):
            alias = self._sp.piece_to_id(_WORD_START + piece)
            if i is not None and self._sp.id_to_piece(alias) == _WORD_START + piece:
                aliases[alias] = i
        return aliases

    @property
    def path(self) -> pathlib.Path:
        """The .model file this tokenizer was loaded from."""
        return self._path

    @property
    def vocab_size(self) -> int:
        """Number of ids, special ones included: the embedding table's first dimension."""
        return self._sp.get_piece_size()

    @property
    def pad_id(self) -> int:
        """Id used for padding (segment 0) in packed rows."""
        return self._pad_id

    @property
    def unk_id(self) -> int:
        """Id for text the vocabulary cannot cover."""
        return self._sp.unk_id()

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
        """Id that MLM masking substitutes, and that "[MASK]" in text encodes to (None: no [MASK])."""
        return self._mask_id

    def encode(self, text: str) -> list[int]:
        """Token ids of one text, without any special ids added."""
        return self._clean(self._sp.encode(text))

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of many texts, encoded on all cores by sentencepiece."""
        batch = self._sp.encode(list(texts), num_threads=os.cpu_count() or 1)
        return [self._clean(ids) for ids in batch]

    def _clean(self, ids: list[int]) -> list[int]:
        """Makes "[MASK]" (and [CLS], [SEP]) in text encode as training sees them: the id alone.

        Word models emit '▁[MASK]'-style pieces (mapped back to the special ids), and the
        others emit a lone '▁' before a user-defined symbol, which training never sees (a
        mask takes a whole word's place). The same rule holds for the tokenizer.json of
        exports (data/fast_tokenizer.py), which can express no other.
        """
        if self._aliases:
            ids = [self._aliases.get(i, i) for i in ids]
        if self._space_id is None or not self._symbols.intersection(ids):
            return ids
        return [i for k, i in enumerate(ids)
                if not (i == self._space_id and k + 1 < len(ids) and ids[k + 1] in self._symbols)]

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Text of ids, dropping pad, cls and sep; a mask id reads as "[MASK]"."""
        skip = {self._pad_id, self._cls_id, self._sep_id}
        kept = [int(i) for i in np.asarray(ids).reshape(-1) if int(i) not in skip]
        if self._space_id is not None:  # undo _clean: a mask stands for a whole word
            kept = [j for k, i in enumerate(kept)
                    for j in ((self._space_id, i) if i == self._mask_id and k > 0 else (i,))]
        return self._sp.decode(kept)

    def id_to_piece(self, i: int) -> str:
        """The vocabulary piece of one id, for inspecting tokenizations."""
        return self._sp.id_to_piece(int(i))

    def special_ids(self) -> np.ndarray:
        """Ids MLM masking must never select: pad, cls, sep and mask (unk is an ordinary token)."""
        return special_id_array(self._pad_id, self._cls_id, self._sep_id, self._mask_id)

    def word_start_table(self) -> np.ndarray:
        """Bool [vocab_size]: True where a piece begins a word, for whole-word masking.

        A piece begins a word if it starts with "▁" or is a special id; [UNK] (an unknown
        character, often inside a word) is not a word start.
        """
        special = set(self.special_ids().tolist())
        return np.array([i in special or self._sp.is_control(i)
                         or self._sp.id_to_piece(i).startswith(_WORD_START)
                         for i in range(self.vocab_size)], dtype=bool)

    def sha256(self) -> str:
        """Hex digest of the model file, identifying it in caches and checkpoints."""
        return self._sha256


def special_id_array(*ids: int | None) -> np.ndarray:
    """The distinct special ids given (None for a role the tokenizer lacks), as int32."""
    return np.array(sorted({i for i in ids if i is not None}), np.int32)


AnyTokenizer = Tokenizer | HFTokenizer
SPM_FILE, HF_FILE = "tokenizer.model", "tokenizer.json"


def tokenizer_file(directory: str | os.PathLike) -> pathlib.Path | None:
    """The tokenizer of a workdir or store: tokenizer.model or tokenizer.json (never both), or None.

    A workdir in a bucket is read through its local mirror (data/remote.py): the file
    returned is the downloaded copy, which the tokenizer libraries can open.
    """
    if remote.is_url(directory):
        mirror = remote.local_mirror(directory)
        pull_tokenizer(remote.as_path(directory), mirror)
        directory = mirror
    directory = pathlib.Path(directory)
    found = [directory / name for name in (SPM_FILE, HF_FILE) if (directory / name).is_file()]
    if len(found) > 1:
        raise ValueError(f"{directory} holds both {SPM_FILE} and {HF_FILE}; a workdir has one tokenizer: "
                         "remove the one its checkpoints were not trained with")
    return found[0] if found else None


def open_tokenizer(path: str | os.PathLike) -> AnyTokenizer:
    """A tokenizer file of either kind: *.json is a Hugging Face tokenizer.json, else sentencepiece."""
    path = pathlib.Path(path)
    if path.suffix == ".json":
        return HFTokenizer(path)
    return Tokenizer(path)


def copy_tokenizer(tokenizer: AnyTokenizer, directory: str | os.PathLike) -> pathlib.Path:
    """Copies a tokenizer's files into directory under the standard names; returns its main file.

    Into a bucket folder, the files are written to its local mirror and uploaded; the mirror's
    copy is returned.
    """
    if remote.is_url(directory):
        mirror = remote.local_mirror(directory)
        copied = copy_tokenizer(tokenizer, mirror)
        push_tokenizer(mirror, remote.as_path(directory))
        return copied
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if isinstance(tokenizer, HFTokenizer):
        return tokenizer.copy_to(directory)
    shutil.copyfile(tokenizer.path, directory / SPM_FILE)
    record_sha256(directory / SPM_FILE, tokenizer.sha256())  # checked by every later load
    return directory / SPM_FILE


def _tokenizer_files() -> list[str]:
    """The names a workdir's tokenizer may use: the files, their sha256 records, the roles."""
    return [name for main in (SPM_FILE, HF_FILE) for name in (main, record_path(main).name)] + [CONFIG_FILE]


def pull_tokenizer(source: remote.AnyPath, mirror: pathlib.Path) -> None:
    """Makes the tokenizer files of a local mirror those of a bucket folder (downloaded, or removed)."""
    for name in _tokenizer_files():
        remote_file, local_file = source / name, mirror / name
        if not remote_file.exists():
            local_file.unlink(missing_ok=True)
        elif name.endswith(".sha256") or not _same_record(source, mirror, name):
            remote.download(remote_file, local_file)


def _same_record(source: remote.AnyPath, mirror: pathlib.Path, name: str) -> bool:
    """Whether the mirror holds a file whose sha256 record equals the bucket's (no download needed)."""
    record = record_path(name).name
    local = mirror / record
    if not (mirror / name).is_file() or not local.is_file() or not (source / record).exists():
        return False
    return local.read_text(encoding="utf-8") == (source / record).read_text(encoding="utf-8")


def push_tokenizer(mirror: pathlib.Path, target: remote.AnyPath) -> None:
    """Uploads a local mirror's tokenizer files that its bucket folder lacks.

    The roles first and the sha256 records last: a reader never sees a tokenizer.json
    without its roles, nor a record without its file.
    """
    names = _tokenizer_files()
    for name in sorted(names, key=lambda n: (n != CONFIG_FILE) + n.endswith(".sha256")):
        if (mirror / name).is_file() and not (target / name).exists():
            remote.upload(mirror / name, target / name)


def fits_vocab(tokenizer: AnyTokenizer, vocab_size: int) -> bool:
    """Whether a model of vocab_size ids can use tokenizer: exactly for sentencepiece (meshlm trains
    them so), at most for a tokenizer.json (an imported embedding may have spare rows, as Qwen's)."""
    if isinstance(tokenizer, HFTokenizer):
        return tokenizer.vocab_size <= vocab_size
    return tokenizer.vocab_size == vocab_size


def _read_model(path: pathlib.Path) -> bytes:
    """The bytes of a .model file, or one clear error if there is none."""
    if not path.is_file():
        raise FileNotFoundError(f"no tokenizer model at {path}: expected a sentencepiece "
                                ".model file")
    return path.read_bytes()


def _load_processor(path: pathlib.Path, model: bytes) -> spm.SentencePieceProcessor:
    """A processor for model bytes, or one clear error if they are not a sentencepiece model."""
    try:
        return spm.SentencePieceProcessor(model_proto=model)
    except (OSError, RuntimeError, ValueError):
        raise ValueError(f"{path} is not a sentencepiece model file: expected a .model file "
                         "written by sentencepiece") from None
