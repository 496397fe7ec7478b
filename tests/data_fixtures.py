"""A small built-in corpus and a tokenizer trained on it, shared by the data/ tests.

Both are cached on disk under the session's pytest temp folder, so every test module that
asks gets the same files and only the first one pays for building them (about a second).
"""

import json
import pathlib

import numpy as np

from data.builtin_corpus import CorpusFiles, builtin_corpus
from data.packing import PackedRows
from data.sentencepiece_training import load_or_train_tokenizer
from data.tokenizer import Tokenizer

SMALL_CORPUS_BYTES = 150_000
SMALL_VOCAB = 800


def shared_dir(tmp_path_factory) -> pathlib.Path:
    """A folder shared by all data tests of one pytest session."""
    return tmp_path_factory.getbasetemp() / "meshlm-data-shared"


def small_corpus(tmp_path_factory) -> CorpusFiles:
    """The first ~150 KB of the built-in corpus, built once per session."""
    return builtin_corpus(shared_dir(tmp_path_factory) / "corpus", max_bytes=SMALL_CORPUS_BYTES)


def small_tokenizer(tmp_path_factory) -> Tokenizer:
    """A unigram tokenizer of SMALL_VOCAB pieces trained on small_corpus's train split."""
    corpus = small_corpus(tmp_path_factory)
    return load_or_train_tokenizer(shared_dir(tmp_path_factory) / "small.model", corpus.train,
                                   vocab_size=SMALL_VOCAB)


def numbered_rows(num_rows: int, seq_len: int = 8, pad_id: int = 0) -> PackedRows:
    """Rows whose every token is its row number + 10, so a batch shows which rows it holds."""
    tokens = np.repeat(np.arange(num_rows, dtype=np.int32)[:, None] + 10, seq_len, axis=1)
    segment_ids = np.ones((num_rows, seq_len), np.int32)
    positions = np.tile(np.arange(seq_len, dtype=np.int32), (num_rows, 1))
    return PackedRows(tokens, segment_ids, positions, pad_id=pad_id)


WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi "
         "rho sigma tau upsilon phi chi psi omega river stone cloud paper light water").split()


def write_text_files(directory: pathlib.Path, num_docs: int = 120, seed: int = 0) -> list[str]:
    """A .txt of paragraphs and a .jsonl of records (each half the docs); returns the docs."""
    rng = np.random.default_rng(seed)
    docs = [" ".join(rng.choice(WORDS, int(rng.integers(3, 90)))) + f" doc{i}."
            for i in range(num_docs)]
    directory.mkdir(parents=True, exist_ok=True)
    half = num_docs // 2
    (directory / "a.txt").write_text("\n\n".join(docs[:half]) + "\n", encoding="utf-8")
    (directory / "b.jsonl").write_text(
        "".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(docs[half:])),
        encoding="utf-8")
    return docs


def small_store_tokenizer(tmp_path_factory) -> Tokenizer:
    """A 120-piece BPE tokenizer trained on write_text_files' documents, once per session."""
    base = shared_dir(tmp_path_factory)
    model = base / "store-tok.model"
    if not model.exists():
        docs = write_text_files(base / "tok-text")
        text = base / "store-tok.txt"
        text.write_text("\n".join(docs) + "\n", encoding="utf-8")
        return load_or_train_tokenizer(model, text, vocab_size=120, model_type="bpe")
    return Tokenizer(model)


BOS, EOS = "<|begin_of_text|>", "<|end_of_text|>"


def byte_level_bpe_folder(tmp_path_factory, vocab_size: int = 400) -> pathlib.Path:
    """A Llama-3-style tokenizer (byte-level BPE, bos/eos, no pad) trained on small_corpus, once per session.

    The folder holds what a Hugging Face model folder holds for it: tokenizer.json (with
    the post-processor that prepends bos) and tokenizer_config.json naming bos and eos.
    """
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers, processors, trainers

    folder = shared_dir(tmp_path_factory) / f"byte-bpe-{vocab_size}"
    if (folder / "tokenizer_config.json").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[BOS, EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train([str(small_corpus(tmp_path_factory).train)], trainer)
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B",
                                      special_tokens=[(BOS, tok.token_to_id(BOS))])])
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": BOS, "eos_token": EOS,
         "model_max_length": 64}))
    return folder


# Texts a tokenizer must get right: whitespace runs, unicode, digits, [MASK] at the start, the
# end and beside punctuation, literal [CLS]/[SEP], the empty string.
VARIED_TEXTS = [
    "", " ", "   ", "Return the number of items in the list.", "  leading and   inner   spaces  ",
    "tabs\tand\nnew\r\nlines\t", "123 4567 89.01 3,000,000 1e-5 0x1F v2.0.1", "café naïve résumé Ωmega straße",
    "日本語のテキスト and 中文", "emoji 🙂👍 ok", "full－width ＡＢＣ １２３", "nbsp\u00a0and\u3000ideographic",
    "combining e\u0301 vs é", "[MASK]", "[MASK] starts it.", "It ends with [MASK]", "Let there be [MASK]: and",
    "a [MASK], b [MASK].", "([MASK])", "[MASK][MASK]", "a [MASK] [MASK] b", "x[MASK]y", "  [MASK]  ",
    "end.[MASK]", '"[MASK]"', "[MASK]!?", "[CLS] a [SEP] b", "a [SEP]", "[mask] is not a mask",
    "def f(x):\n    return x ** 2  # comment", "see http://example.com/a_b?c=d&e=f", "ok...!!!???",
]
