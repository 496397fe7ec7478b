"""Tokenizers: meshlm's sentencepiece models (trained here or loaded), and which file is a workdir's.

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
import io
import os
import pathlib
import shutil
import tempfile
from collections.abc import Iterator, Sequence

import numpy as np
import sentencepiece as spm

from data.hf_tokenizer import HFTokenizer
from data.integrity import check_recorded_sha256, record_sha256

PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = 0, 1, 2, 3, 4
PAD_PIECE, UNK_PIECE = "[PAD]", "[UNK]"
CLS_PIECE, SEP_PIECE, MASK_PIECE = "[CLS]", "[SEP]", "[MASK]"
MAX_SENTENCE_BYTES = 4192  # sentencepiece's limit on one training line
MODEL_TYPES = ("unigram", "bpe", "word", "char")
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
    """The tokenizer of a workdir or store: tokenizer.model or tokenizer.json (never both), or None."""
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


def copy_tokenizer(tokenizer: AnyTokenizer, directory: pathlib.Path) -> pathlib.Path:
    """Copies a tokenizer's files into directory under the standard names; returns its main file."""
    directory.mkdir(parents=True, exist_ok=True)
    if isinstance(tokenizer, HFTokenizer):
        return tokenizer.copy_to(directory)
    shutil.copyfile(tokenizer.path, directory / SPM_FILE)
    record_sha256(directory / SPM_FILE, tokenizer.sha256())  # checked by every later load
    return directory / SPM_FILE


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


def train_tokenizer(text_path: str | os.PathLike, model_path: str | os.PathLike, *,
                    vocab_size: int, model_type: str = "unigram",
                    max_sentences: int = 300_000, seed: int = 0) -> Tokenizer:
    """Trains a sentencepiece model on a one-document-per-line file and writes model_path."""
    text_path, model_path = pathlib.Path(text_path), pathlib.Path(model_path)
    _check_training_args(text_path, vocab_size, model_type, max_sentences)
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=_sampled_lines(text_path, max_sentences, seed),
            model_writer=model, **_trainer_flags(vocab_size, model_type))
    except RuntimeError as e:
        reason = str(e).rsplit("] ", 1)[-1].strip() or str(e)  # drop sentencepiece's source location
        raise ValueError(f"sentencepiece could not train on {text_path} with "
                         f"vocab_size={vocab_size}, model_type={model_type}: {reason}") from None
    _check_trained_size(model.getvalue(), vocab_size, model_type, text_path)
    _write_model(model.getvalue(), model_path)
    return Tokenizer(model_path)


def _check_trained_size(model: bytes, vocab_size: int, model_type: str,
                        text_path: pathlib.Path) -> None:
    """Insists on exactly vocab_size ids, so a reload with the same setting always matches."""
    trained = spm.SentencePieceProcessor(model_proto=model).get_piece_size()
    if trained != vocab_size:
        raise ValueError(f"a {model_type} tokenizer of {text_path} has {trained} pieces, not "
                         f"the vocab_size {vocab_size} asked for: set vocab_size={trained}")


def _write_model(model: bytes, model_path: pathlib.Path) -> None:
    """Writes the .vocab listing, then the .model file last, each by an atomic rename."""
    model_path.parent.mkdir(parents=True, exist_ok=True)
    processor = spm.SentencePieceProcessor(model_proto=model)
    vocab = "".join(f"{processor.id_to_piece(i)}\t{processor.get_score(i)}\n"
                    for i in range(processor.get_piece_size()))
    _write_atomic(model_path.with_suffix(".vocab"), vocab.encode())
    _write_atomic(model_path, model)
    record_sha256(model_path, hashlib.sha256(model).hexdigest())  # checked by every later load


def _write_atomic(path: pathlib.Path, data: bytes) -> None:
    """Writes a file so that readers see either nothing or all of it."""
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(temp, path)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)


def _check_training_args(text_path: pathlib.Path, vocab_size: int, model_type: str,
                         max_sentences: int) -> None:
    """Rejects arguments sentencepiece would fail on deep inside, with one clear line."""
    if not text_path.is_file():
        raise FileNotFoundError(f"no training text at {text_path}: expected a UTF-8 file, "
                                "one document per line")
    if text_path.stat().st_size == 0:
        raise ValueError(f"training text {text_path} is empty")
    if model_type not in MODEL_TYPES:
        raise ValueError(f"model_type {model_type!r} is not one of {', '.join(MODEL_TYPES)}")
    if vocab_size <= MASK_ID + 1:
        raise ValueError(f"vocab_size {vocab_size} is too small: need more than {MASK_ID + 1} "
                         "(the special ids)")
    if max_sentences <= 0:
        raise ValueError(f"max_sentences must be positive, got {max_sentences}")


def _sampled_lines(text_path: pathlib.Path, max_sentences: int, seed: int) -> Iterator[str]:
    """The non-empty lines of text_path, or a seeded sample of max_sentences of them in order.

    We sample ourselves because sentencepiece's own sampling differs from run to run even
    with its seed set (sentencepiece 0.2.3), and feeding lines (not a path) keeps the path
    out of the model file, so equal training gives byte-equal models.
    """
    with open(text_path, encoding="utf-8") as f:
        count = sum(1 for line in f if line.strip())
    chosen = None
    if count > max_sentences:
        chosen = set(np.random.default_rng(seed).choice(count, max_sentences, replace=False)
                     .tolist())
    with open(text_path, encoding="utf-8") as f:
        lines = (line.rstrip("\n") for line in f if line.strip())
        for i, line in enumerate(lines):
            if chosen is None or i in chosen:
                yield from _pieces_of_line(line)


def _pieces_of_line(line: str, limit: int = MAX_SENTENCE_BYTES) -> Iterator[str]:
    """line, cut at spaces into pieces of at most `limit` UTF-8 bytes.

    sentencepiece silently skips longer training lines, so a corpus of long documents (a
    book per paragraph, an article per JSONL record) would otherwise train on nothing.
    A single word longer than the limit is cut inside the word.
    """
    if len(line.encode()) <= limit:
        yield line
        return
    piece, size = [], 0
    for word in line.split(" "):
        word_size = len(word.encode()) + 1
        if piece and size + word_size > limit + 1:
            yield " ".join(piece)
            piece, size = [], 0
        while word_size > limit + 1:  # one huge "word": cut on characters
            head = word.encode()[:limit].decode(errors="ignore")
            yield head
            word = word[len(head):]
            word_size = len(word.encode()) + 1
        piece.append(word)
        size += word_size
    if piece:
        yield " ".join(piece)


def _trainer_flags(vocab_size: int, model_type: str) -> dict:
    """sentencepiece trainer options: our special ids, every given line, all cores."""
    return dict(
        vocab_size=vocab_size, model_type=model_type, pad_id=PAD_ID, unk_id=UNK_ID,
        bos_id=-1, eos_id=-1, pad_piece=PAD_PIECE, unk_piece=UNK_PIECE,
        user_defined_symbols=[CLS_PIECE, SEP_PIECE, MASK_PIECE],
        input_sentence_size=0, shuffle_input_sentence=False, max_sentence_length=MAX_SENTENCE_BYTES,
        num_threads=os.cpu_count() or 1, minloglevel=2,
    )


def load_or_train_tokenizer(model_path: str | os.PathLike, text_path: str | os.PathLike, *,
                            vocab_size: int, model_type: str = "unigram") -> AnyTokenizer:
    """Reuses the tokenizer at model_path if it fits vocab_size ids, else trains one on text_path.

    A sentencepiece model must have exactly vocab_size pieces (meshlm trains them so); an
    imported tokenizer.json may have fewer ids than the model's embedding has rows (Qwen's do).
    """
    if not pathlib.Path(model_path).exists():
        return train_tokenizer(text_path, model_path, vocab_size=vocab_size,
                               model_type=model_type)
    tokenizer = open_tokenizer(model_path)
    if isinstance(tokenizer, HFTokenizer) and not fits_vocab(tokenizer, vocab_size):
        raise ValueError(f"tokenizer {model_path} has {tokenizer.vocab_size} ids, more than the vocab_size "
                         f"{vocab_size} asked for: set vocab_size to at least {tokenizer.vocab_size}")
    if not fits_vocab(tokenizer, vocab_size):
        raise ValueError(f"tokenizer {model_path} has vocab_size {tokenizer.vocab_size} but "
                         f"{vocab_size} was asked for: set vocab_size={tokenizer.vocab_size} "
                         "or delete the file to train a new one")
    return tokenizer


def train_tokenizer_on_documents(docs: Iterator[str], model_path: str | os.PathLike, *,
                                 vocab_size: int, model_type: str = "unigram",
                                 max_bytes: int = 50_000_000) -> Tokenizer:
    """Trains on the first max_bytes of documents (one per line, newlines as spaces)."""
    model_path = pathlib.Path(model_path)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    fd, text_path = tempfile.mkstemp(prefix=".tokenizer-text-", suffix=".txt",
                                     dir=model_path.parent)
    try:
        total = 0
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for doc in docs:
                line = " ".join(doc.split()) + "\n"
                f.write(line)
                total += len(line.encode())
                if total >= max_bytes:
                    break
        if total == 0:
            raise ValueError("no documents to train the tokenizer on: the source is empty")
        return train_tokenizer(text_path, model_path, vocab_size=vocab_size,
                               model_type=model_type)
    finally:
        os.unlink(text_path)
