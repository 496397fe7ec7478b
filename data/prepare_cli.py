"""Prepare once, train many: tokenize a source into a token store.

    python -m data.prepare_cli --source='files:corpus/*.jsonl' --tokenizer=tok.model \\
        --vocab_size=32000 --out=stores/corpus
    python -m train.main --config=configs/bert_base.py --workdir=runs/a \\
        --config.data.source=store:stores/corpus

--source takes every form data/sources.py accepts except store:. If --tokenizer does not
exist and --vocab_size is given, a tokenizer is trained on the source's train documents
first. Documents are tokenized in worker processes (--workers) into shards of
--shard_docs documents; see data/token_store.py for the layout and data/pipeline.py for the
library (tokenize_to_store).

This is a data/ program, so it cannot use train.program (data/ never imports train/): it
prints user mistakes (DataError, ValueError, OSError) as one line on stderr and exits 2
itself, as train.program.run does; --debug shows the traceback.
"""

import sys
import time

from absl import app, flags

from data.token_store import SHARD_DOCS
from data.sentencepiece_training import MODEL_TYPES
from data.pipeline import tokenize_to_store


def main(argv: list[str]) -> None:
    """The CLI: one line per user mistake, exit status 2."""
    f = flags.FLAGS
    if len(argv) > 1:
        _fail(f"unexpected arguments {argv[1:]}; flags take the form --name=value")
    if not f.source:
        _fail("--source is required, e.g. --source='files:corpus/*.jsonl'")
    started = time.perf_counter()
    try:
        manifest = tokenize_to_store(f.source, f.tokenizer, f.out,
                           vocab_size=f.vocab_size, tokenizer_type=f.tokenizer_type,
                           text_field=f.text_field, tfds_data_dir=f.tfds_data_dir,
                           workers=f.workers, shard_docs=f.shard_docs)
    except (ValueError, OSError) as e:  # DataError is a ValueError
        if f.debug:
            raise
        _fail(str(e))
    sizes = ", ".join(f"{split}: {info['docs']:,} docs, {info['tokens']:,} tokens, "
                      f"{len(info['shards'])} shards" for split, info in manifest["splits"].items())
    print(f"wrote {f.out} in {time.perf_counter() - started:.1f}s ({sizes}); "
          f"{manifest['replaced_invalid_utf8_docs']} docs had invalid UTF-8 (replaced); "
          f"content hash {manifest['content_hash'][:16]}")


def _fail(message: str) -> None:
    """Prints one error line and exits 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    flags.DEFINE_string("source", None, "builtin | files:<glob>[,...] | tfds:<name>[:<split>]")
    flags.DEFINE_string("tokenizer", None, "sentencepiece .model (trained here first if missing and "
                        "--vocab_size is set) or a Hugging Face tokenizer.json (its tokenizer_config.json "
                        "beside it names the special tokens) to encode with.")
    flags.DEFINE_integer("vocab_size", 0, "Train a tokenizer of this many pieces if "
                         "--tokenizer does not exist.")
    flags.DEFINE_enum("tokenizer_type", "unigram", MODEL_TYPES, "Model type when training.")
    flags.DEFINE_string("out", None, "New directory for the store (must not exist).")
    flags.DEFINE_string("text_field", "text", "JSONL key / TFDS feature with the text.")
    flags.DEFINE_string("tfds_data_dir", "", "TFDS data_dir (local or a bucket).")
    flags.DEFINE_integer("workers", 0, "Tokenizer processes; 0: one per core (max 8).")
    flags.DEFINE_integer("shard_docs", SHARD_DOCS, "Documents per shard.")
    flags.DEFINE_bool("debug", False, "Show full tracebacks for user errors.")
    app.run(main)
