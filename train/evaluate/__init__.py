"""Evaluation of saved checkpoints: held-out loss, and benchmark scores through lm-evaluation-harness.

Library: `evaluator.py` (one, all, or each new checkpoint; loss and task scores per step),
`harness.py` (the lm-eval model "meshlm"), `scoring.py` (the jitted log-probability scorer,
length buckets), `pseudo_likelihood.py` (encoders), `continuations.py` (generation requests
through the compiled decoding loop), `task_scores.py` (lm-eval tasks for the evaluator).
Commands: `python -m train.evaluate` (this package's `__main__.py`),
`python -m train.evaluate.lm_eval_cli` (lm-eval's CLI with meshlm registered).
The held-out metrics themselves are core (`train/heldout.py`): the training loop uses them too.

May import: train's core, model, data, train.generate (the decoding loop), and lm_eval (the
`eval` extra) in the modules that speak to the harness only: harness.py, task_scores.py, lm_eval_cli.py.
"""
