"""Fine-tuning: a classification head on a pretrained encoder, trained, evaluated and used to predict.

Library: `task_data.py` (labelled examples as rows and batches), `classifier_steps.py`,
`classifier_loop.py`, `classify.py` (probabilities for texts).
Commands: `python -m train.finetune` (this package's `__main__.py`),
`python -m train.finetune.predict_cli`.

May import: train's core, model, data.
"""
