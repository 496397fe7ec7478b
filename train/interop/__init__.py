"""Hand-off to other tools: Hugging Face folders, PEFT adapter folders and serialized jax.export artifacts.

Library: `hf_families.py` (per-architecture tensor tables), `hf_export.py`, `peft_export.py`,
`jax_export.py`, `hf_import.py`, `hf_tokenizer_files.py` (tokenizer.json and its configs out, a
folder's tokenizer in), `safetensors_file.py` (one tensor at a time).
Commands: `python -m train.interop.export_cli`, `python -m train.interop.import_cli`.

May import: train's core, model, data, and train.generate.autoregressive (the decoding step and
layout that jax_export.py exports).
"""
