"""Generation from trained models: the compiled decoding loop, beam search, fill-mask and mask-predict.

Library: `autoregressive.py` (prefill + KV-cached while_loop, sampling), `beam_search.py`,
`completions.py` (text prompts in, continuations out), `mask_predict.py` (encoders).
Commands: `python -m train.generate.decode_cli`, `python -m train.generate.fill_mask_cli`.

May import: train's core, model, data.
"""
