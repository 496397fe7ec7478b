"""Supervised fine-tuning data: prompt/response or chat records -> templated examples with a loss mask -> rows.

A record is a JSON object (a line of a .jsonl file, or a TFDS example) holding either a
list of messages (`{"role": "system" | "user" | "assistant", "content": str}`) or a prompt
and a response (read as one user and one assistant message). The chat template
(data/chat_template.py) renders the conversation to text, which is tokenized as a whole
(as Transformers' `apply_chat_template(..., tokenize=True)` does). The loss mask marks
the tokens of every assistant turn as the template renders it (with its closing eos):
the tokens past those of the text rendered up to that turn with the generation prompt.

An example longer than a row is truncated from the prompt side (its first token, the
document start, is kept) and, only if its last response alone does not fit, cut at the
end; both are counted. Examples pack whole into rows (data/packing.py's pack_examples),
several per row with their own segment ids. Train and validation splits are split as
pretraining's: a TFDS `validation` split when there is one, else the ~2% hash holdout.
Rows are made once per workdir and reused (keyed by the data, tokenizer, template and
row length). Every mistake in a record is a one-line DataError naming where it is.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
import tempfile
from collections.abc import Iterator

import numpy as np

from data.chat_template import ROLES, ChatTemplate, encode_text
from data.documents import SPLITS, DataError, decode_utf8, is_validation
from data.packing import PackedRows, pack_examples
from data.pipeline import PreparedData
from data.sources import SourceSpec, parse_source

FORMAT_VERSION = 1
Messages = list[dict[str, str]]


@dataclasses.dataclass(frozen=True)
class Fields:
    """Which fields of a record hold its prompt and response, or its messages."""

    prompt: str = "prompt"
    response: str = "response"
    messages: str = "messages"


@dataclasses.dataclass
class Counts:
    """What encoding a split did: examples, truncations and trained tokens."""

    examples: int = 0
    prompt_truncated: int = 0  # examples longer than a row, cut from the prompt side
    response_cut: int = 0  # examples whose last response alone did not fit: cut at the end
    tokens: int = 0
    response_tokens: int = 0


@dataclasses.dataclass
class SFTSource:
    """What the rows were made from, for the run's log."""

    source: str
    template: str
    counts: dict[str, dict[str, int]]

    def describe(self) -> str:
        train, validation = self.counts["train"], self.counts["validation"]
        return (f"sft data: {self.source} rendered by {self.template}: {train['examples']} train examples "
                f"({train['prompt_truncated']} truncated from the prompt side, {train['response_cut']} with the "
                f"response cut; {train['response_tokens']} of {train['tokens']} tokens in the loss), "
                f"{validation['examples']} validation ({validation['prompt_truncated']} truncated)")


def conversation(record: object, fields: Fields, where: str) -> Messages:
    """The messages of one record; a DataError names `where` and what is wrong."""
    if not isinstance(record, dict):
        raise DataError(f"{where} is a JSON {type(record).__name__}; accepted: one JSON object per record")
    if fields.messages in record:
        return _checked_messages(record[fields.messages], fields, where)
    missing = [f for f in (fields.prompt, fields.response) if f not in record]
    if missing:
        raise DataError(f"{where} has neither '{fields.messages}' nor '{fields.prompt}' and '{fields.response}' "
                        f"(fields: {', '.join(map(str, record)) or 'none'}); set data.messages_field, or "
                        "data.prompt_field and data.response_field")
    prompt, response = (_text(record[f], f"{where} field '{f}'") for f in (fields.prompt, fields.response))
    if not response.strip():
        raise DataError(f"{where} has an empty response ('{fields.response}'); accepted: some text to learn")
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]


def _checked_messages(value: object, fields: Fields, where: str) -> Messages:
    if isinstance(value, dict) and {"role", "content"} <= set(value):  # TFDS: a sequence of dicts, as columns
        value = [dict(zip(value, row)) for row in zip(*value.values())]
    if not isinstance(value, (list, tuple)) or not value:
        raise DataError(f"{where} field '{fields.messages}' is {value!r}; accepted: a non-empty list of "
                        '{"role", "content"} messages')
    messages = []
    for number, message in enumerate(value):
        at = f"{where} message {number}"
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise DataError(f"{at} is {message!r}; accepted: an object with 'role' and 'content'")
        role, content = _text(message["role"], f"{at} role"), _text(message["content"], f"{at} content")
        if role not in ROLES:
            raise DataError(f"{at} has role '{role}'; accepted: {', '.join(ROLES)}")
        if role == "assistant" and not content.strip():
            raise DataError(f"{at} is an empty response (an assistant message without content)")
        messages.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{where} has no assistant message: nothing to learn")
    return messages


def _text(value: object, where: str) -> str:
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, bytes):
        value = decode_utf8(value)[0]
    if not isinstance(value, str):
        raise DataError(f"{where} is {value!r}; accepted: a string")
    return value


def encode_conversation(messages: Messages, template: ChatTemplate, tokenizer,
                        where: str) -> tuple[np.ndarray, np.ndarray]:
    """(ids, loss mask) of a conversation, int32; the mask is 1 on every assistant turn's tokens."""
    text = template.render(messages, where=where)
    ids = encode_text(tokenizer, text)
    mask = np.zeros(len(ids), np.int32)
    for turn, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        last = turn == len(messages) - 1
        before = template.render(messages[:turn], add_generation_prompt=True, where=where)
        through = text if last else template.render(messages[:turn + 1], where=where)
        if not (text.startswith(through) and through.startswith(before)):
            raise DataError(f"{template.name} renders {where} so that the prompt of message {turn} is not the "
                            "start of the conversation's text; accepted: templates that render a conversation as "
                            "its earlier turns' text followed by the new turn's")
        start = _common_prefix(encode_text(tokenizer, before), ids)
        end = len(ids) if last else _common_prefix(encode_text(tokenizer, through), ids)
        mask[start:end] = 1
    if not mask.any():
        raise DataError(f"{template.name} renders no response tokens for {where}")
    return np.asarray(ids, np.int32), mask


def _common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading ids a and b share (the prompt's own encoding may end in a merged piece)."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def truncate(ids: np.ndarray, mask: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray, bool, bool]:
    """(ids, mask, prompt truncated?, response cut?): at most seq_len tokens, the first one kept.

    Tokens after the first go from the front up to the last response; if that response
    still does not fit, its end is cut.
    """
    excess = len(ids) - seq_len
    if excess <= 0:
        return ids, mask, False, False
    last_response = int(np.flatnonzero(np.diff(np.concatenate([[0], mask])) == 1)[-1])
    drop = min(excess, max(last_response - 1, 0))
    keep = np.concatenate([[0], np.arange(1 + drop, len(ids))])
    ids, mask = ids[keep][:seq_len], mask[keep][:seq_len]
    return ids, mask, drop > 0, drop < excess


def records(spec: SourceSpec, split: str, tfds_data_dir: str = "") -> Iterator[tuple[object, str]]:
    """(record, where) of one split of a files: (.jsonl) or tfds: source."""
    if spec.kind == "files":
        yield from _jsonl_records(spec.patterns, split)
    elif spec.kind == "tfds":
        from data.tfds_source import open_tfds, split_plan  # slow to import: only for tfds: sources

        tfds_split, holdout = split_plan(spec.name, spec.split, split, tfds_data_dir)
        source = open_tfds(spec.name, tfds_split, tfds_data_dir)
        for index in range(len(source)):
            record = dict(source[index])
            if holdout is None or is_validation(_canonical(record)) == holdout:
                yield record, f"TFDS dataset {spec.name} {tfds_split}[{index}]"
    else:
        raise DataError(f"data.format=sft reads files:<glob of .jsonl> or tfds:<name> records, not {spec.describe()}")


def _jsonl_records(patterns: tuple[str, ...], split: str) -> Iterator[tuple[object, str]]:
    from data.text_files import resolve_files

    for path in resolve_files(patterns):
        if path.suffix != ".jsonl":
            raise DataError(f"{path} is not a .jsonl file; data.format=sft reads one JSON record per line")
        with open(path, "rb") as f:
            for number, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    record = json.loads(decode_utf8(raw)[0])
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{number} is not a JSON object ({e.msg}); expected one JSON "
                                    "object per line") from None
                if is_validation(_canonical(record)) == (split == "validation"):
                    yield record, f"{path}:{number}"


def _canonical(record: object) -> str:
    """A record as stable text, for the hash holdout."""
    return json.dumps(record, sort_keys=True, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v))


def encode_split(spec: SourceSpec, split: str, *, template: ChatTemplate, tokenizer, seq_len: int,
                 fields: Fields, tfds_data_dir: str = "") -> tuple[PackedRows, Counts]:
    """One split's examples, truncated to seq_len and packed into rows with a loss mask."""
    examples, counts = [], Counts()
    for record, where in records(spec, split, tfds_data_dir):
        ids, mask = encode_conversation(conversation(record, fields, where), template, tokenizer, where)
        ids, mask, cut_prompt, cut_response = truncate(ids, mask, seq_len)
        counts.examples += 1
        counts.prompt_truncated += cut_prompt
        counts.response_cut += cut_response
        counts.tokens += len(ids)
        counts.response_tokens += int(mask.sum())
        examples.append((ids, mask))
    return pack_examples(examples, seq_len, pad_id=tokenizer.pad_id), counts


def prepare_sft(workdir: str | os.PathLike, source: str | SourceSpec, *, tokenizer, template: ChatTemplate,
                seq_len: int, fields: Fields = Fields(), tfds_data_dir: str = "") -> PreparedData:
    """The packed fine-tuning rows of a source for workdir, made once (workdir/data/sft-<key>/) and reused."""
    spec = parse_source(source) if isinstance(source, str) else source
    identity = {"source": spec.describe(), "files": _file_hashes(spec), "tfds_data_dir": tfds_data_dir,
                "fields": dataclasses.asdict(fields), "tokenizer": tokenizer.sha256(), "template": template.sha256(),
                "special_tokens": template.special_tokens, "seq_len": seq_len, "version": FORMAT_VERSION}
    key = "sft-" + hashlib.blake2b(json.dumps(identity, sort_keys=True).encode(), digest_size=8).hexdigest()
    rows_dir = pathlib.Path(workdir) / "data" / key
    if not (rows_dir / "counts.json").is_file():
        _write_rows(rows_dir, spec, template=template, tokenizer=tokenizer, seq_len=seq_len, fields=fields,
                    tfds_data_dir=tfds_data_dir)
    counts = json.loads((rows_dir / "counts.json").read_text())
    train = PackedRows.load(rows_dir / "train")
    if train.num_rows == 0:
        raise DataError(f"{spec.describe()} holds no training examples")
    return PreparedData(tokenizer=tokenizer, train=train, validation=PackedRows.load(rows_dir / "validation"),
                        source=SFTSource(spec.describe(), template.name, counts), key=key)


def _write_rows(rows_dir: pathlib.Path, spec: SourceSpec, **options) -> None:
    """Both splits' rows and their counts, written to a temporary folder and renamed into place."""
    rows_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{rows_dir.name}.tmp-", dir=rows_dir.parent))
    try:
        counts = {}
        for split in SPLITS:
            rows, split_counts = encode_split(spec, split, **options)
            rows.save(staging / split)
            counts[split] = dataclasses.asdict(split_counts)
        (staging / "counts.json").write_text(json.dumps(counts, indent=2) + "\n")
        shutil.rmtree(rows_dir, ignore_errors=True)
        os.rename(staging, rows_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _file_hashes(spec: SourceSpec) -> list:
    """(path, content hash) of a files: source's files: edited files make new rows, touched ones do not."""
    if spec.kind != "files":
        return []
    from data.text_files import resolve_files

    hashes = []
    for path in resolve_files(spec.patterns):
        digest = hashlib.blake2b(digest_size=16)
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        hashes.append((str(path), digest.hexdigest()))
    return hashes
