"""Build the TFDS dataset `meshlm_text_files` from local .txt/.jsonl files (no TensorFlow needed).

    python -m data.build_tfds_cli --files='corpus/*.jsonl' --data_dir=~/tfds
    python -m train.main ... --config.data.source=tfds:meshlm_text_files \\
        --config.data.tfds_data_dir=~/tfds

The builder is in data/tfds_source.py.
"""

import sys

from absl import app, flags

from data.documents import DataError
from data.tfds_source import NAME, build_text_dataset


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
