"""Import a Hugging Face folder as a workdir (the library is train/interop/hf_import.py).

    python -m train.interop.import_cli --hf_dir=DIR --workdir=OUT
"""

from __future__ import annotations

from absl import flags

from data.tokenizer import tokenizer_file
from train import program
from train.config import ConfigError
from train.interop.hf_import import import_hf


def main(argv: list[str]) -> None:
    del argv
    hf_dir, workdir = flags.FLAGS.hf_dir, program.WORKDIR.value
    if not hf_dir:
        raise ConfigError("--hf_dir is required: a Transformers model folder")
    if not workdir:
        raise ConfigError("--workdir is required: the meshlm workdir to create")
    config = import_hf(hf_dir, workdir)
    m = config.model
    tokenizer = tokenizer_file(workdir)
    told = (f"tokenizer {tokenizer.name}" if tokenizer else
            "no tokenizer in the folder (put the model's tokenizer.model or tokenizer.json in the workdir)")
    print(f"imported {hf_dir} into {workdir} as checkpoint step 0: {m.num_layers} layers, "
          f"hidden {m.hidden}, vocab {m.vocab_size}; {told}")


if __name__ == "__main__":  # --hf_dir only here; --workdir (the workdir to create) is cli's
    flags.DEFINE_string("hf_dir", None, "A Transformers model folder: config.json and model.safetensors.")
    program.run(main)
