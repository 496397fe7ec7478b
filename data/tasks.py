"""Labelled examples for fine-tuning: read from CSV, JSONL or a TFDS dataset, mapped to ids, encoded.

An example is one text or a pair of texts and a label. Labels are kept as strings (a
JSON integer 1 and the CSV cell "1" are the same label) and mapped to ids by a
`LabelMap`, which is saved as JSON next to the checkpoints so predictions can be named.
Rows are encoded BERT's way: `[CLS] a [SEP]` or `[CLS] a [SEP] b [SEP]`, with token
types 0 for the first part and 1 for the second, one example per row.

Every mistake in the data (a missing field, a bad label value, a label the training
split lacks) raises ValueError with one line naming the file, the row and what is accepted.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import pathlib
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from data.tokenizer import AnyTokenizer

FILE_SUFFIXES = (".csv", ".jsonl")


@dataclasses.dataclass(frozen=True)
class Example:
    """One labelled example: a text, an optional second text, and its label's name."""

    text: str
    label: str
    text_pair: str | None = None


@dataclasses.dataclass(frozen=True)
class Fields:
    """Which fields of a record hold the text(s) and the label ("" text_pair: single texts)."""

    text: str = "text"
    label: str = "label"
    text_pair: str = ""


def read_examples(path: str | os.PathLike, fields: Fields) -> list[Example]:
    """The examples of a .csv (with a header row) or .jsonl (one object per line) file."""
    path = pathlib.Path(path)
    if path.suffix.lower() not in FILE_SUFFIXES:
        raise ValueError(f"task file {path} has suffix '{path.suffix}'; accepted: {', '.join(FILE_SUFFIXES)}")
    if not path.is_file():
        raise ValueError(f"task file {path} not found")
    records = _csv_records(path, fields) if path.suffix.lower() == ".csv" else _jsonl_records(path)
    examples = [_example(record, fields, f"{path} {where}") for where, record in records]
    if not examples:
        raise ValueError(f"task file {path} has no examples")
    return examples


def _csv_records(path: pathlib.Path, fields: Fields) -> Iterator[tuple[str, dict]]:
    """(row description, record) for each data row; the header must name every field."""
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        for name in _wanted(fields):
            if name not in columns:
                raise ValueError(f"task file {path} has no column '{name}' (columns: {', '.join(columns) or 'none'}); "
                                 f"{_field_hint(name, fields)}")
        for row in reader:
            yield f"row {reader.line_num}", row


def _jsonl_records(path: pathlib.Path) -> Iterator[tuple[str, dict]]:
    """(line description, record) for each non-empty line, each a JSON object."""
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"task file {path} line {number} is not valid JSON ({e.msg})") from None
            if not isinstance(record, dict):
                raise ValueError(f"task file {path} line {number} is a JSON {type(record).__name__}; "
                                 "accepted: one JSON object per line")
            yield f"line {number}", record


def _wanted(fields: Fields) -> list[str]:
    return [fields.text, fields.label] + ([fields.text_pair] if fields.text_pair else [])


def _field_hint(name: str, fields: Fields) -> str:
    key = {fields.label: "label_field", fields.text: "text_field"}.get(name, "text_pair_field")
    return f"set --config.task.{key} to the right name"


def _example(record: dict, fields: Fields, where: str) -> Example:
    """Checks one record and makes its Example."""
    for name in _wanted(fields):
        if name not in record:
            raise ValueError(f"{where} has no field '{name}' (fields: {', '.join(map(str, record)) or 'none'}); "
                             f"{_field_hint(name, fields)}")
    texts = [_text(record[name], name, where) for name in [fields.text] + ([fields.text_pair] if fields.text_pair else [])]
    return Example(text=texts[0], label=label_name(record[fields.label], f"{where} field '{fields.label}'"),
                   text_pair=texts[1] if len(texts) > 1 else None)


def _text(value: object, name: str, where: str) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if not isinstance(value, str):
        raise ValueError(f"{where} field '{name}' is {value!r}; accepted: a string")
    return value


def label_name(value: object, where: str) -> str:
    """A label value as its name: a non-empty string or an integer; anything else is an error."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise ValueError(f"{where} has bad label value {value!r}; accepted: a non-empty string or an integer")


def read_tfds_examples(name: str, split: str, fields: Fields, data_dir: str = "") -> tuple[list[Example], list[str] | None]:
    """The examples of a prepared TFDS dataset split (read with tfds.data_source, no TensorFlow).

    Also returns the label feature's class names when it is a ClassLabel (their order is
    the dataset's label ids), else None.
    """
    import tensorflow_datasets as tfds  # only for this source: it is slow to import

    try:
        builder = tfds.builder(name, data_dir=data_dir or None)
        source = tfds.data_source(name, split=split, data_dir=data_dir or None, download=False)
    except Exception as e:  # TFDS raises many types for a missing or unprepared dataset
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"TFDS dataset '{name}' split '{split}' cannot be read ({first}); "
                         "prepare it first (tfds build) and set task.tfds_data_dir") from None
    features = builder.info.features
    for wanted in _wanted(fields):
        if wanted not in features:
            raise ValueError(f"TFDS dataset '{name}' has no feature '{wanted}' "
                             f"(features: {', '.join(sorted(features))}); {_field_hint(wanted, fields)}")
    label_feature = features[fields.label]
    names = list(label_feature.names) if isinstance(label_feature, tfds.features.ClassLabel) else None
    examples = []
    for index in range(len(source)):
        record = dict(source[index])
        if names is not None:
            label = int(np.asarray(record[fields.label]))
            if not 0 <= label < len(names):
                raise ValueError(f"TFDS dataset '{name}' {split}[{index}] has bad label value {label}; "
                                 f"accepted: 0..{len(names) - 1} ({', '.join(names)})")
            record[fields.label] = names[label]
        examples.append(_example(record, fields, f"TFDS dataset '{name}' {split}[{index}]"))
    if not examples:
        raise ValueError(f"TFDS dataset '{name}' split '{split}' has no examples")
    return examples, names


@dataclasses.dataclass(frozen=True)
class LabelMap:
    """Label names in id order; saved as {"labels": [...]} JSON."""

    names: tuple[str, ...]

    @classmethod
    def from_examples(cls, examples: Iterable[Example], names: Sequence[str] | None = None,
                      where: str = "the training split") -> "LabelMap":
        """The given names (e.g. a TFDS ClassLabel's), else the labels seen, sorted (numerically if all integers)."""
        seen = sorted({e.label for e in examples}, key=lambda s: (0, int(s), s) if _is_int(s) else (1, 0, s))
        label_map = cls(tuple(names) if names is not None else tuple(seen))
        if len(label_map.names) < 2:
            raise ValueError(f"{where} has only the label(s) {list(label_map.names)}; a classifier needs at least 2")
        return label_map

    def ids(self, examples: Sequence[Example], where: str) -> np.ndarray:
        """Label ids of examples, int32; a label outside the map is an error naming it."""
        index = {name: i for i, name in enumerate(self.names)}
        for number, example in enumerate(examples):
            if example.label not in index:
                raise ValueError(f"{where} example {number} has label '{example.label}', which is not one of "
                                 f"the training labels {list(self.names)}")
        return np.array([index[e.label] for e in examples], np.int32)

    def save(self, path: str | os.PathLike) -> None:
        pathlib.Path(path).write_text(json.dumps({"labels": list(self.names)}, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LabelMap":
        path = pathlib.Path(path)
        if not path.is_file():
            raise ValueError(f"no label map at {path}; it is written when fine-tuning starts")
        return cls(tuple(json.loads(path.read_text(encoding="utf-8"))["labels"]))


def _is_int(text: str) -> bool:
    try:
        int(text)
        return True
    except ValueError:
        return False


def encode_examples(examples: Sequence[Example], tokenizer: AnyTokenizer, seq_len: int) -> dict[str, np.ndarray]:
    """Rows of [CLS] a [SEP] (b [SEP]) [PAD]...: tokens, token_types, segment_ids, positions, int32 [N, seq_len].

    Texts too long for seq_len are cut, the longer of a pair first (as BERT does).
    """
    firsts = tokenizer.encode_batch([e.text for e in examples])
    pairs = tokenizer.encode_batch([e.text_pair or "" for e in examples])
    tokens = np.full((len(examples), seq_len), tokenizer.pad_id, np.int32)
    token_types = np.zeros_like(tokens)
    for row, (example, a, b) in enumerate(zip(examples, firsts, pairs)):
        is_pair = example.text_pair is not None
        a, b = _truncate(a, b if is_pair else [], seq_len - (3 if is_pair else 2))
        ids = [tokenizer.cls_id, *a, tokenizer.sep_id] + ([*b, tokenizer.sep_id] if is_pair else [])
        tokens[row, :len(ids)] = ids
        token_types[row, len(a) + 2:len(ids)] = 1
    segment_ids = (tokens != tokenizer.pad_id).astype(np.int32)
    positions = np.arange(seq_len, dtype=np.int32)[None, :] * segment_ids
    return {"tokens": tokens, "token_types": token_types, "segment_ids": segment_ids, "positions": positions}


def _truncate(a: list[int], b: list[int], budget: int) -> tuple[list[int], list[int]]:
    """Drops tokens from the end of the longer list until both fit in budget."""
    a, b = list(a), list(b)
    while len(a) + len(b) > budget:
        (a if len(a) >= len(b) else b).pop()
    return a, b
