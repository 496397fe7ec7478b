"""lm-evaluation-harness's own command line with meshlm's model registered.

    python -m train.evaluate.lm_eval_cli --model meshlm --model_args workdir=DIR[,step=N,batch_size=B,mesh=1x-1x1] \
        --tasks TASKS [any other lm_eval flag: --include_path, --num_fewshot, --limit, --output_path, ...]

(`./launch.sh lm_eval ...` runs this.) lm-eval 0.4.13 finds a model class only in its own
registry: it reads no entry points or plugins, so a bare `lm_eval --model meshlm` cannot see
meshlm. This command registers it (train/evaluate/harness.py) and hands every argument to
lm-eval's CLI unchanged; a meshlm error (bad workdir, mesh, model args) is one line, exit 2.
"""

from __future__ import annotations

import sys


def main() -> None:
    from train import distributed
    from train.config import ConfigError

    try:
        distributed.initialize(distributed.plan())  # before any JAX work, as every meshlm command
        import train.evaluate.harness  # noqa: F401  registers "meshlm"
        from lm_eval.__main__ import cli_evaluate

        cli_evaluate()
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except ModuleNotFoundError as e:
        if e.name != "lm_eval":
            raise
        print("error: lm-eval is not installed; install meshlm's eval extra (pip install -e '.[eval]', "
              "or MESHLM_EXTRAS=eval ./launch.sh ...)", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
