"""Host-side data, one way down: sources -> tokenizer -> token store -> packed rows -> batches.

`pipeline.py` is the path a config takes: `sources.py` names a source and reads its
documents (`builtin_corpus.py` + `docstrings.py`, `text_files.py`, `tfds_source.py`, all
split as `documents.py` says), `tokenizer.py` loads sentencepiece (trained by
`sentencepiece_training.py`)
(or, through `hf_tokenizer.py`, an imported Hugging Face tokenizer.json; `fast_tokenizer.py`
writes either as a tokenizer.json for exports),
`token_store.py` writes and reads tokenized shards, `packing.py` packs them into rows;
`batches.py` and `prefetch.py` serve the rows of each step; `integrity.py` records and checks
the hashes of every cached file. `tasks.py` reads labelled examples for fine-tuning;
`docstring_task.py` makes one. Supervised fine-tuning's rows come from `sft_examples.py`
(prompt/response or chat records rendered by `chat_template.py`, with a loss mask; packed by
`packing.py`). Commands: `python -m data.prepare_cli`, `data.build_tfds_cli`,
`data.write_task_cli`.

May import: numpy, sentencepiece (and its protobuf model file), tokenizers, tensorflow_datasets,
grain, jinja2; never model/, train/ or jax.
"""
