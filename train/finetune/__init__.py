"""Fine-tuning: a classification head on a pretrained encoder, and supervised fine-tuning (SFT) of decoders.

Library: `task_data.py` (labelled examples as rows and batches), `classifier_steps.py`,
`classifier_loop.py`, `classify.py` (probabilities for texts); `sft.py` (a decoder, full or
LoRA, fine-tuned on prompt/response or chat records through the pretraining loop).
Commands: `python -m train.finetune` (this package's `__main__.py`),
`python -m train.finetune.predict_cli`, `python -m train.finetune.sft_cli`.

May import: train's core, model, data.
"""
