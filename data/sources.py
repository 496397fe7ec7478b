"""Text sources: the built-in corpus, local .txt/.jsonl files and TFDS datasets, as documents.

A source is named by one string:

    builtin                      docstrings of the installed packages (data/corpus.py)
    files:<glob>[,<glob>...]     local files; .jsonl has one JSON object per line with the
                                 text under `text_field`; any other file is plain text with
                                 one document per blank-line-separated paragraph
    tfds:<name>[:<split>]        a prepared TFDS dataset read with tfds.data_source
                                 (array_record, no TensorFlow), e.g. tfds:c4/en:train
    store:<dir>                  a store written by `python -m data.prepare`

Each source yields train and validation documents. The validation documents are the TFDS
"validation" split when the dataset has one, else the ~2% of documents that
corpus.is_validation picks by hash, so the holdout is the same on every run.
Bytes that are not UTF-8 are replaced with U+FFFD and counted, never a crash.
"""

import dataclasses
import glob
import json
import os
import pathlib
from collections.abc import Iterator

from data.corpus import is_validation

KINDS = ("builtin", "files", "tfds", "store")
SPLITS = ("train", "validation")
_REPLACEMENT = "\ufffd"


class DataError(ValueError):
    """A user-facing data mistake (bad source, missing files, bad records); one line."""


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


@dataclasses.dataclass
class DecodeCounts:
    """How many documents had bytes that are not UTF-8 (replaced, not fatal)."""

    replaced_docs: int = 0


def decode_utf8(raw: bytes) -> tuple[str, bool]:
    """raw as text with invalid bytes replaced by U+FFFD, and whether any were."""
    try:
        return raw.decode("utf-8"), False
    except UnicodeDecodeError:
        return raw.decode("utf-8", errors="replace"), True


def resolve_files(patterns: tuple[str, ...]) -> list[pathlib.Path]:
    """The files matching each glob, sorted and deduplicated; a DataError if one matches none."""
    found: dict[str, pathlib.Path] = {}
    for pattern in patterns:
        matches = sorted(p for p in glob.glob(os.path.expanduser(pattern), recursive=True)
                         if os.path.isfile(p))
        if not matches:
            raise DataError(f"no files match {pattern!r}: expected .txt or .jsonl files "
                            "(a path or a glob such as 'corpus/*.jsonl')")
        found.update((m, pathlib.Path(m)) for m in matches)
    return [found[k] for k in sorted(found)]


def file_documents(path: pathlib.Path, text_field: str) -> Iterator[tuple[str, bool]]:
    """(document, had invalid UTF-8) of one file: JSONL records or blank-line paragraphs."""
    if path.suffix == ".jsonl":
        yield from _jsonl_documents(path, text_field)
    else:
        yield from _paragraphs(path)


def _jsonl_documents(path: pathlib.Path, text_field: str) -> Iterator[tuple[str, bool]]:
    """The text_field of each JSON line; a DataError names the file and line of a bad one."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            line, replaced = decode_utf8(raw)
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{number} is not a JSON object ({e.msg}); expected "
                                "one JSON object per line") from None
            if not isinstance(record, dict) or text_field not in record:
                raise DataError(f"{path}:{number} has no field {text_field!r}; set the JSONL "
                                "text field (data.text_field / --text_field) to the key "
                                "holding the text")
            text = record[text_field]
            if not isinstance(text, str):
                raise DataError(f"{path}:{number} field {text_field!r} holds "
                                f"{type(text).__name__}, not a string")
            if text.strip():
                yield text, replaced


def _paragraphs(path: pathlib.Path) -> Iterator[tuple[str, bool]]:
    """Blank-line-separated paragraphs of a text file, each one document."""
    lines: list[str] = []
    replaced = False
    with open(path, "rb") as f:
        for raw in f:
            line, bad = decode_utf8(raw)
            line = line.rstrip("\r\n")
            if line.strip():
                lines.append(line)
                replaced |= bad
            elif lines:
                yield "\n".join(lines), replaced
                lines, replaced = [], False
    if lines:
        yield "\n".join(lines), replaced


def files_documents(spec: SourceSpec, split: str, text_field: str = "text",
                    counts: DecodeCounts | None = None) -> Iterator[str]:
    """One split of a files: source, in sorted file order, held out by corpus.is_validation."""
    counts = counts if counts is not None else DecodeCounts()
    want_validation = split == "validation"
    for path in resolve_files(spec.patterns):
        for doc, replaced in file_documents(path, text_field):
            if is_validation(doc) == want_validation:
                counts.replaced_docs += replaced
                yield doc


def tfds_documents(spec: SourceSpec, split: str, text_field: str = "text", data_dir: str = "",
                   counts: DecodeCounts | None = None) -> Iterator[str]:
    """One split of a prepared TFDS dataset, read in record order through tfds.data_source."""
    counts = counts if counts is not None else DecodeCounts()
    tfds_split, holdout = _tfds_split(spec, split, data_dir)
    for example in open_tfds(spec.name, tfds_split, data_dir):
        if text_field not in example:
            raise DataError(f"TFDS dataset {spec.name} has no feature {text_field!r} "
                            f"(it has {', '.join(sorted(example))}); set data.text_field")
        value = example[text_field]
        doc, replaced = decode_utf8(value) if isinstance(value, bytes) else (str(value), False)
        if doc.strip() and (holdout is None or is_validation(doc) == holdout):
            counts.replaced_docs += replaced
            yield doc


def _tfds_split(spec: SourceSpec, split: str, data_dir: str) -> tuple[str, bool | None]:
    """The TFDS split to read for our split, and which hash holdout to keep (None: all)."""
    if split == "train":
        has_validation = "validation" in tfds_split_names(spec.name, data_dir)
        return spec.split, None if has_validation else False
    if "validation" in tfds_split_names(spec.name, data_dir):
        return "validation", None
    return spec.split, True


def tfds_split_names(name: str, data_dir: str) -> set[str]:
    """The split names a prepared TFDS dataset records."""
    import tensorflow_datasets as tfds  # slow to import: only for tfds: sources

    from data import text_dataset  # noqa: F401  registers the local-files builder

    try:
        return set(tfds.builder(name, data_dir=data_dir or None).info.splits.keys())
    except Exception as e:  # tfds raises many kinds; the user needs one line
        raise DataError(f"TFDS dataset {name!r} cannot be opened "
                        f"(data_dir={data_dir or 'default'}): {_first_line(e)}") from None


def open_tfds(name: str, split: str, data_dir: str):
    """tfds.data_source of a prepared dataset (never downloads); a DataError if absent."""
    import tensorflow_datasets as tfds

    from data import text_dataset  # noqa: F401

    try:
        return tfds.data_source(name, split=split, data_dir=data_dir or None, download=False)
    except Exception as e:
        raise DataError(f"TFDS dataset {name!r} split {split!r} cannot be read as an "
                        f"array_record data source (data_dir={data_dir or 'default'}): "
                        f"{_first_line(e)}; prepare it with file_format='array_record'"
                        ) from None


def _first_line(error: Exception) -> str:
    """The first non-empty line of an exception's message, for one-line errors."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0].strip() if lines else ''}"


def source_documents(spec: SourceSpec, split: str, *, text_field: str = "text",
                     tfds_data_dir: str = "", builtin_dir: str | os.PathLike = "",
                     counts: DecodeCounts | None = None) -> Iterator[str]:
    """The documents of one split of any text source (store: sources hold tokens, not text)."""
    if split not in SPLITS:
        raise DataError(f"split {split!r} is not one of {', '.join(SPLITS)}")
    if spec.kind == "files":
        return files_documents(spec, split, text_field, counts)
    if spec.kind == "tfds":
        return tfds_documents(spec, split, text_field, tfds_data_dir, counts)
    if spec.kind == "builtin":
        from data.corpus import builtin_corpus, read_documents
        corpus = builtin_corpus(builtin_dir)
        return iter(read_documents(corpus.train if split == "train" else corpus.validation))
    raise DataError(f"source {spec.describe()} holds tokens, not text: read it with "
                    "data.token_store")
