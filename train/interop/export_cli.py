"""Exports a checkpoint for serving: a Hugging Face folder or a serialized jax.export artifact.

    python -m train.interop.export_cli --workdir=DIR [--step=N] --format=hf --out=OUT [--dtype=bfloat16]
    python -m train.interop.export_cli --workdir=DIR [--step=N] --format=jax --out=OUT [--platforms=cpu,cuda,tpu]
        [--dtype=bfloat16 | --dtype=int8]
    python -m train.interop.export_cli --workdir=LORA_DIR [--step=N] --format=peft --out=OUT

hf writes BertForMaskedLM (model.arch=bert) or LlamaForCausalLM (model.arch=llama; a LoRA fine-tune's
adapters merged in); jax writes forward.jax and, for decoders, decode.jax (one KV-cached decode step);
see train/interop/jax_export.py. peft writes a LoRA fine-tune's adapters as a PEFT folder, to load on
the base model's hf export (train/interop/peft_export.py).
`--format=jax --dtype=int8` writes a decoder in its decoding layout with int8 kernels and per-channel
scales (model/decode_kernels.py), the form `./launch.sh decode --dtype=int8` runs.

Parameters are read from the checkpoint one array at a time (whatever mesh wrote it) and
written before the next is read, so host memory stays near the largest stored array.
"""

from __future__ import annotations

from absl import flags

from data import remote
from train import program

_WORKDIR = program.WORKDIR
_STEP = program.STEP
_FORMAT = flags.DEFINE_enum("format", "hf", ["hf", "jax", "peft"],
                            "hf: Transformers folder; jax: jax.export artifact; peft: a LoRA fine-tune's adapters.")
_OUT = flags.DEFINE_string("out", None, "Output folder (created; files in it are overwritten).")
_DTYPE = program.DTYPE
_PLATFORMS = flags.DEFINE_list("platforms", ["cpu"], "--format=jax: platforms to lower for (cpu, cuda, rocm, tpu).")

_KNOWN_PLATFORMS = ("cpu", "cuda", "rocm", "tpu")


def main(argv: list[str]) -> None:
    del argv
    from train.interop.hf_export import export_dtype, export_hf
    from train.checkpoints.params import CheckpointParams, read_checkpoint

    if not _OUT.value:
        raise program.ConfigError("--out is required: the folder to write the export into")
    if _FORMAT.value == "jax":
        from train.interop.jax_export import check_jax_dtype

        check_jax_dtype(_DTYPE.value)  # a bad dtype fails before any reading
    else:
        export_dtype(_DTYPE.value)
    bad = [p for p in _PLATFORMS.value if p not in _KNOWN_PLATFORMS]
    if bad:
        raise program.ConfigError(f"--platforms={','.join(_PLATFORMS.value)}; accepted: {', '.join(_KNOWN_PLATFORMS)}")
    exported_meta = {}

    def export(step: int, meta: dict):
        exported_meta.update(meta)
        source = CheckpointParams(_WORKDIR.value, step)
        with remote.staged_folder(_OUT.value) as out:  # --out=gs://...: written here, then uploaded
            if _FORMAT.value == "hf":
                return export_hf(source, out, _DTYPE.value)
            if _FORMAT.value == "peft":
                from train.interop.peft_export import export_peft

                return export_peft(source, out, _DTYPE.value)
            from train.interop.jax_export import export_jax

            return export_jax(source, out, _DTYPE.value, tuple(_PLATFORMS.value))

    # The newest step whose files read (a damaged newer one is named and passed over), or --step.
    path, step = read_checkpoint(_WORKDIR.value or "", _STEP.value, export)
    print(f"exported checkpoint step {step} of {_WORKDIR.value} as {_FORMAT.value} "
          f"({_DTYPE.value}) to {_OUT.value}: {path.name}")
    if _FORMAT.value == "peft":
        print(f"load it on its base: peft.PeftModel.from_pretrained(<--format=hf export of "
              f"{exported_meta.get('init_from', 'the --init_from workdir')}>, {_OUT.value!r})")


if __name__ == "__main__":
    program.run(main)
