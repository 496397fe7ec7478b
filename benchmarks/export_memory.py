"""Peak host memory of the streamed HF export vs a whole-model export, each in a fresh process.

    python benchmarks/export_memory.py [--layers=12 --hidden=512 --vocab=32000]

Writes one checkpoint (sharded over 8 simulated devices), then exports it twice in child
processes: `streamed` is train.interop.export_cli's path (one array restored and written at a time);
`whole` restores every parameter to host first and writes with safetensors.numpy.save_file.
Each child resets its peak-RSS counter (/proc/self/clear_refs) after imports and setup, so the
figure is the export's own growth. Prints both, the model and largest-array sizes, and the ratio.

Measured on the shared 2-core box (noisy, other jobs running): 12 layers, hidden 512, vocab
32000 (209 MiB of params, largest array 62.5 MiB): whole 393 MiB, streamed 202 MiB (1.9x). With
MALLOC_MMAP_THRESHOLD_=65536 (glibc otherwise raises its mmap threshold after the first big free
and keeps freed arrays in the heap): whole 357 MiB, streamed 97 MiB (3.7x), i.e. ~1.5x the
largest array.
"""

import argparse
import os
import pathlib
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]

_CHILD = r"""
import os, sys, pathlib
sys.path.insert(0, sys.argv[1])
import numpy as np
from train.checkpoints.params import CheckpointParams
from train.interop.hf_export import export_hf, tensor_plan, _hf_tensors
from train.interop.hf_families import family_of
import safetensors.numpy, transformers  # imported before the measurement in both modes

def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
mode, workdir, out = sys.argv[2:]
source = CheckpointParams(workdir)
source.read("head.bias")  # warm orbax/tensorstore once
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset VmHWM to the current RSS
start = rss("VmRSS:")
if mode == "streamed":
    export_hf(source, out)
else:
    family = family_of(source.config.model)
    everything = {name: source.read(name) for name in source.specs}  # the whole model on host
    source.read = everything.__getitem__
    plan = tensor_plan(family, source, np.dtype(np.float32))
    tensors = dict(zip([spec[0] for spec, _, _ in plan], _hf_tensors(family, source, np.dtype(np.float32))))
    safetensors.numpy.save_file(tensors, f"{out}/model.safetensors", metadata={"format": "pt"})
print(rss("VmHWM:") - start)
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=32000)
    args = parser.parse_args()
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    sys.path.insert(0, str(ROOT))
    import dataclasses

    from data.builtin_corpus import builtin_corpus
    from data.sentencepiece_training import load_or_train_tokenizer
    from tests.export_fixtures import random_params, tiny_export_config, write_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        corpus = builtin_corpus(tmp / "corpus", max_bytes=150_000)
        tokenizer = load_or_train_tokenizer(tmp / "t.model", corpus.train, vocab_size=800)
        config = tiny_export_config(args.vocab)
        config.model = dataclasses.replace(config.model, hidden=args.hidden, num_layers=args.layers,
                                           num_heads=8, mlp_dim=4 * args.hidden, max_len=512)
        params = random_params(config.model)
        sizes = [x.nbytes for x in __import__("jax").tree.leaves(params)]
        write_checkpoint(tmp / "work", config, params, tokenizer, mesh_shape=(2, 2, 2))
        del params
        peaks = {}
        for mode in ("whole", "streamed"):
            (tmp / mode).mkdir()
            result = subprocess.run([sys.executable, "-c", _CHILD, str(ROOT), mode, str(tmp / "work"), str(tmp / mode)],
                                    capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
            if result.returncode:
                raise SystemExit(result.stderr[-2000:])
            peaks[mode] = int(result.stdout.split()[-1])
        mb = lambda b: f"{b / 2**20:.1f} MiB"
        print(f"model params {mb(sum(sizes))}; largest stored array {mb(max(sizes))}")
        print(f"peak host memory growth during export: whole-model {mb(peaks['whole'])}, "
              f"streamed {mb(peaks['streamed'])}; ratio whole/streamed {peaks['whole'] / max(peaks['streamed'], 1):.2f}x")


if __name__ == "__main__":
    main()
