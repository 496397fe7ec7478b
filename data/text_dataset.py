"""A TFDS builder that turns local .txt/.jsonl files into a dataset with train/validation splits.

Build once, then read it like any prepared TFDS dataset (C4, Wikipedia) through
`tfds.data_source`, with no TensorFlow installed:

    python -m data.text_dataset --files='corpus/*.jsonl' --data_dir=~/tfds
    python -m train.main ... --config.data.source=tfds:meshlm_text_files \\
        --config.data.tfds_data_dir=~/tfds

Documents are read as data/sources.py reads a files: source (JSONL field or paragraphs),
split by the same stable hash, and written as array_record shards.
"""

import os
import sys

import tensorflow_datasets as tfds
from absl import app, flags

from data.sources import DataError, file_documents, resolve_files
from data.corpus import is_validation

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
                            "python -m data.text_dataset --files=GLOB --data_dir=DIR")
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


def main(argv: list[str]) -> None:
    """Builds the dataset from flags; user mistakes print one line and exit 2."""
    del argv
    f = flags.FLAGS
    try:
        if not f.files or not f.data_dir:
            raise DataError("--files and --data_dir are required")
        build_text_dataset(tuple(f.files), f.data_dir, text_field=f.text_field,
                           num_shards=f.num_shards)
    except (DataError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"built {NAME} in {f.data_dir}; train with --config.data.source=tfds:{NAME} "
          f"--config.data.tfds_data_dir={f.data_dir}")


if __name__ == "__main__":  # flags only here: importing the builder must define none
    flags.DEFINE_list("files", None, "Globs of .txt/.jsonl files.")
    flags.DEFINE_string("data_dir", None, "TFDS data_dir to write the dataset into.")
    flags.DEFINE_string("text_field", "text", "JSONL key holding the text.")
    flags.DEFINE_integer("num_shards", None, "Shards per split (default: by size).")
    app.run(main)
