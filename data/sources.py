"""Text sources, named by one string, as the documents of a split.

    builtin                      docstrings of the installed packages (data/builtin_corpus.py)
    files:<glob>[,<glob>...]     local files (data/text_files.py): .jsonl has one JSON object
                                 per line with the text under `text_field`; any other file is
                                 plain text, one document per blank-line-separated paragraph
    tfds:<name>[:<split>]        a prepared TFDS dataset read with tfds.data_source
                                 (data/tfds_source.py; array_record, no TensorFlow)
    store:<dir>                  a token store written by `python -m data.prepare_cli`

Each text source yields train and validation documents, split as data/documents.py says.
"""

import dataclasses
import os
from collections.abc import Iterator

from data.documents import SPLITS, DataError, DecodeCounts

KINDS = ("builtin", "files", "tfds", "store")


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """A parsed source string."""

    kind: str  # one of KINDS
    patterns: tuple[str, ...] = ()  # files: the globs
    name: str = ""  # tfds: dataset name, e.g. c4/en
    split: str = "train"  # tfds: the split read for training
    path: str = ""  # store: its directory

    def describe(self) -> str:
        """The source string this spec was parsed from."""
        if self.kind == "files":
            return "files:" + ",".join(self.patterns)
        if self.kind == "tfds":
            return f"tfds:{self.name}:{self.split}"
        return f"store:{self.path}" if self.kind == "store" else "builtin"


def parse_source(text: str) -> SourceSpec:
    """Parses a source string; a DataError names what is accepted."""
    kind, _, rest = text.partition(":")
    accepted = ("accepted: builtin, files:<glob>[,<glob>...], tfds:<name>[:<split>] "
                "or store:<dir>")
    if kind == "builtin" and not rest:
        return SourceSpec("builtin")
    if kind == "files" and rest.strip(", "):
        return SourceSpec("files", patterns=tuple(p for p in rest.split(",") if p))
    if kind == "tfds" and rest:
        name, colon, split = rest.partition(":")
        if name and (split or not colon):
            return SourceSpec("tfds", name=name, split=split or "train")
    if kind == "store" and rest:
        return SourceSpec("store", path=rest)
    raise DataError(f"data source {text!r} is not understood; {accepted}")


def source_documents(spec: SourceSpec, split: str, *, text_field: str = "text",
                     tfds_data_dir: str = "", builtin_dir: str | os.PathLike = "",
                     max_corpus_bytes: int | None = None,
                     counts: DecodeCounts | None = None) -> Iterator[str]:
    """The documents of one split of any text source (store: sources hold tokens, not text)."""
    if split not in SPLITS:
        raise DataError(f"split {split!r} is not one of {', '.join(SPLITS)}")
    if spec.kind == "files":
        from data.text_files import files_documents
        return files_documents(spec.patterns, split, text_field, counts)
    if spec.kind == "tfds":
        from data.tfds_source import tfds_documents  # slow to import: only for tfds: sources
        return tfds_documents(spec.name, split, spec.split, text_field, tfds_data_dir, counts)
    if spec.kind == "builtin":
        from data.builtin_corpus import builtin_corpus, read_documents
        corpus = builtin_corpus(builtin_dir, max_corpus_bytes)
        return iter(read_documents(corpus.train if split == "train" else corpus.validation))
    raise DataError(f"source {spec.describe()} holds tokens, not text: read it with "
                    "data.token_store")
