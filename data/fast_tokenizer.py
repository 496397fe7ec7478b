"""A `tokenizers.Tokenizer` (what tokenizer.json holds) that encodes text exactly as meshlm does.

Exports carry this so that Transformers, vLLM or TGI tokenize a prompt into meshlm's ids
without sentencepiece. A tokenizer.json tokenizer is already one; a sentencepiece model is
rebuilt from its file (reading it needs sentencepiece and protobuf; the result needs neither):

    normalizer   sentencepiece's own precompiled character map (nmt_nfkc for meshlm's),
                 extra spaces removed as sentencepiece does, the dummy "▁" prefix, spaces as
                 "▁", and "▁[MASK]" -> "[MASK]" (likewise [CLS], [SEP]), as Tokenizer._clean
    added tokens the user-defined symbols, matched in the normalized text
    model        unigram: the pieces and scores; bpe: merges ranked by the merged piece's score
                 (sentencepiece merges the best-scoring pair first); char: bpe without merges;
                 word: a word-level lookup after splitting at "▁"
    decoder      "▁" back to spaces (and byte fallback when the model has it)

Differences that remain, both outside what meshlm's models meet: a run of unknown words
in a "word" model is one [UNK] in sentencepiece and one [UNK] per word here; and
Transformers reads the literal text of a control token ("[PAD]", "[UNK]", "<s>") as that
token, where sentencepiece reads its characters.
"""

from __future__ import annotations

import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers

from data.tokenizer import AnyTokenizer, HFTokenizer, Tokenizer

_WORD_START = "\u2581"
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6
_UNIGRAM, _BPE, _WORD, _CHAR = 1, 2, 3, 4
_NEVER_CHOSEN = -1e9  # a unigram score that keeps control/byte pieces from matching text


def fast_tokenizer(tokenizer: AnyTokenizer) -> tokenizers.Tokenizer:
    """A tokenizers.Tokenizer whose `encode(text, add_special_tokens=False).ids` equals tokenizer.encode(text)."""
    if isinstance(tokenizer, HFTokenizer):
        return tokenizer.backend
    return from_sentencepiece(tokenizer)


def from_sentencepiece(tokenizer: Tokenizer) -> tokenizers.Tokenizer:
    """The sentencepiece model of `tokenizer` rebuilt with the tokenizers library."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(tokenizer.path.read_bytes())
    spec, normalizer = proto.trainer_spec, proto.normalizer_spec
    if spec.treat_whitespace_as_suffix or not normalizer.escape_whitespaces:
        raise ValueError(f"{tokenizer.path}: sentencepiece models with treat_whitespace_as_suffix or without "
                         "escape_whitespaces cannot be written as tokenizer.json")
    pieces = [(p.piece, p.score, p.type) for p in proto.pieces]
    symbols = [piece for piece, _, kind in pieces if kind == _USER_DEFINED and not piece.startswith(_WORD_START)]
    fast = tokenizers.Tokenizer(_model(spec.model_type, pieces, spec.byte_fallback))
    fast.normalizer = _normalizer(normalizer, symbols)
    if spec.model_type == _WORD:  # a word model looks whole words up
        fast.pre_tokenizer = pre_tokenizers.Metaspace(replacement=_WORD_START, prepend_scheme="never", split=True)
    fast.decoder = _decoder(spec.byte_fallback, normalizer.add_dummy_prefix, tokenizer)
    fast.add_special_tokens([AddedToken(piece, special=True, normalized=True) for piece in symbols])
    return fast


def _model(model_type: int, pieces: list[tuple[str, float, int]], byte_fallback: bool) -> models.Model:
    """The segmentation model of a sentencepiece model type."""
    unk_id = next(i for i, (_, _, kind) in enumerate(pieces) if kind == _UNKNOWN)
    unk = pieces[unk_id][0]
    ids = {piece: i for i, (piece, _, _) in enumerate(pieces)}
    if model_type == _UNIGRAM:
        vocab = [(piece, score if kind in (_NORMAL, _USER_DEFINED) else _NEVER_CHOSEN) for piece, score, kind in pieces]
        return models.Unigram(vocab, unk_id=unk_id, byte_fallback=byte_fallback)
    if model_type == _BPE:
        return models.BPE(ids, _merges(pieces), unk_token=unk, fuse_unk=True, byte_fallback=byte_fallback)
    if model_type == _WORD:
        return models.WordLevel(ids, unk_token=unk)
    if model_type == _CHAR:
        return models.BPE(ids, [], unk_token=unk, fuse_unk=True, byte_fallback=byte_fallback)
    raise ValueError(f"sentencepiece model type {model_type} cannot be written as tokenizer.json")


def _merges(pieces: list[tuple[str, float, int]]) -> list[tuple[str, str]]:
    """Every split of a normal piece into two normal pieces, the best-scoring merged piece first.

    sentencepiece's BPE merges any adjacent pair whose concatenation is a piece, best score
    first (ties: leftmost); an HF BPE applies its listed merges by rank, so each way of
    forming a piece is listed at that piece's rank.
    """
    normal = {piece: (score, i) for i, (piece, score, kind) in enumerate(pieces) if kind == _NORMAL}
    ranked = []
    for piece, (score, i) in normal.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in normal and right in normal:
                ranked.append((-score, i, cut, left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def _normalizer(spec, symbols: list[str]) -> normalizers.Normalizer:
    """sentencepiece's normalization, then the "▁" before a user-defined symbol dropped."""
    steps = [normalizers.Precompiled(spec.precompiled_charsmap)] if spec.precompiled_charsmap else []
    if spec.remove_extra_whitespaces:  # sentencepiece treats only U+0020 (after its map) as a space
        steps += [normalizers.Replace(Regex("^ +| +$"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    if spec.add_dummy_prefix:
        steps.append(normalizers.Prepend(" "))
    steps.append(normalizers.Replace(" ", _WORD_START))
    # Added tokens are matched after normalization, so a symbol's own text must normalize to
    # itself: dropping "▁" before it does that and encodes as Tokenizer._clean does.
    steps += [normalizers.Replace(_WORD_START + symbol, symbol) for symbol in symbols]
    return normalizers.Sequence(steps)


def _decoder(byte_fallback: bool, dummy_prefix: bool, tokenizer: Tokenizer) -> decoders.Decoder:
    """Pieces back to text; a mask reads " [MASK]" as Tokenizer.decode writes it."""
    steps = []
    if tokenizer.mask_id is not None:
        mask = tokenizer.id_to_piece(tokenizer.mask_id)
        steps.append(decoders.Replace(mask, _WORD_START + mask))
    if byte_fallback:
        steps.append(decoders.ByteFallback())
    steps.append(decoders.Metaspace(replacement=_WORD_START, prepend_scheme="always" if dummy_prefix else "never",
                                    split=True))
    return decoders.Sequence(steps)
