"""Prepared TFDS datasets as documents, read with tfds.data_source (array_record, no TensorFlow).

Also the TFDS builder `meshlm_text_files`, which turns local .txt/.jsonl files into such a
dataset (build it once with `python -m data.build_tfds_cli --files=GLOB --data_dir=DIR`,
then train with `data.source=tfds:meshlm_text_files`): documents are read as a files:
source reads them and split by the same stable hash. Importing this module registers it.
"""

import os
from collections.abc import Iterator

import tensorflow_datasets as tfds

from data.documents import DataError, DecodeCounts, decode_utf8, is_validation
from data.text_files import file_documents, resolve_files


def tfds_documents(name: str, split: str, read_split: str, text_field: str = "text", data_dir: str = "",
                   counts: DecodeCounts | None = None) -> Iterator[str]:
    """Our split (train or validation) of a prepared TFDS dataset whose training split is read_split."""
    counts = counts if counts is not None else DecodeCounts()
    tfds_split, holdout = split_plan(name, read_split, split, data_dir)
    for example in open_tfds(name, tfds_split, data_dir):
        if text_field not in example:
            raise DataError(f"TFDS dataset {name} has no feature {text_field!r} "
                            f"(it has {', '.join(sorted(example))}); set data.text_field")
        value = example[text_field]
        doc, replaced = decode_utf8(value) if isinstance(value, bytes) else (str(value), False)
        if doc.strip() and (holdout is None or is_validation(doc) == holdout):
            counts.replaced_docs += replaced
            yield doc


def split_plan(name: str, read_split: str, split: str, data_dir: str) -> tuple[str, bool | None]:
    """The TFDS split to read for our split, and which hash holdout to keep (None: all)."""
    has_validation = "validation" in tfds_split_names(name, data_dir)
    if split == "train":
        return read_split, None if has_validation else False
    return ("validation", None) if has_validation else (read_split, True)


def tfds_split_names(name: str, data_dir: str) -> set[str]:
    """The split names a prepared TFDS dataset records."""
    try:
        return set(tfds.builder(name, data_dir=data_dir or None).info.splits.keys())
    except Exception as e:  # tfds raises many kinds; the user needs one line
        raise DataError(f"TFDS dataset {name!r} cannot be opened "
                        f"(data_dir={data_dir or 'default'}): {_first_line(e)}") from None


def open_tfds(name: str, split: str, data_dir: str):
    """tfds.data_source of a prepared dataset (never downloads); a DataError if absent."""
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


NAME = "meshlm_text_files"


class MeshlmTextFiles(tfds.core.GeneratorBasedBuilder):
    """Documents of local text files as {"text": str}, with train and validation splits."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Documents of local .txt/.jsonl files."}

    def __init__(self, *, files: tuple[str, ...] = (), text_field: str = "text", **kwargs):
        self._patterns = tuple(files)
        self._text_field = text_field
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self, description="Documents of local text files (meshlm).",
            features=tfds.features.FeaturesDict({"text": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
        if not self._patterns:
            raise DataError(f"{NAME} is not prepared in {self.data_dir}: build it first with "
                            "python -m data.build_tfds_cli --files=GLOB --data_dir=DIR")
        paths = resolve_files(self._patterns)
        return {"train": self._generate_examples(paths, False),
                "validation": self._generate_examples(paths, True)}

    def _generate_examples(self, paths, validation: bool):
        for file_index, path in enumerate(paths):
            for doc_index, (doc, _) in enumerate(file_documents(path, self._text_field)):
                if is_validation(doc) == validation:
                    yield f"{file_index}-{doc_index}", {"text": doc}


def build_text_dataset(files: tuple[str, ...], data_dir: str | os.PathLike, *,
                       text_field: str = "text", num_shards: int | None = None) -> str:
    """Builds the dataset from local files into data_dir as array_record; returns its name."""
    builder = MeshlmTextFiles(files=files, text_field=text_field,
                              data_dir=os.path.expanduser(str(data_dir)))
    config = tfds.download.DownloadConfig(num_shards=num_shards)
    builder.download_and_prepare(file_format="array_record", download_config=config)
    if builder.info.splits["train"].num_examples == 0:
        raise DataError(f"files {','.join(files)} hold no documents for the train split")
    return NAME
