"""Local text files as documents: .jsonl records (one JSON object per line) or blank-line paragraphs."""

import glob
import json
import os
import pathlib
from collections.abc import Iterator

from data.documents import DataError, DecodeCounts, decode_utf8, is_validation


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


def files_documents(patterns: tuple[str, ...], split: str, text_field: str = "text",
                    counts: DecodeCounts | None = None) -> Iterator[str]:
    """One split of the files matching patterns, in sorted file order, held out by is_validation."""
    counts = counts if counts is not None else DecodeCounts()
    want_validation = split == "validation"
    for path in resolve_files(patterns):
        for doc, replaced in file_documents(path, text_field):
            if is_validation(doc) == want_validation:
                counts.replaced_docs += replaced
                yield doc
