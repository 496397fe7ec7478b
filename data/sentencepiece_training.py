"""Training meshlm's sentencepiece models, with the special ids data/tokenizer.py fixes.

`train_tokenizer` trains on a one-document-per-line file (a seeded sample of at most
`max_sentences` lines, each cut into pieces sentencepiece accepts) and writes the model and
its .vocab listing atomically, recording the model's hash; `train_tokenizer_on_documents`
trains on an iterator of documents; `load_or_train_tokenizer` reuses a workdir's tokenizer
when it fits the vocabulary asked for. Bad arguments and a corpus too small for the
vocabulary get one-line errors.
"""

import hashlib
import io
import os
import pathlib
import tempfile
from collections.abc import Iterator

import numpy as np
import sentencepiece as spm

from data.hf_tokenizer import HFTokenizer
from data.integrity import record_sha256
from data.tokenizer import (CLS_PIECE, MASK_ID, MASK_PIECE, PAD_ID, PAD_PIECE, SEP_PIECE, UNK_ID, UNK_PIECE,
                            AnyTokenizer, Tokenizer, fits_vocab, open_tokenizer)

MAX_SENTENCE_BYTES = 4192  # sentencepiece's limit on one training line
MODEL_TYPES = ("unigram", "bpe", "word", "char")


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
