"""A LoRA fine-tune for serving: merged into a plain LlamaForCausalLM, or as a PEFT folder that
peft.PeftModel loads on the base export; both give meshlm's logits within 1e-4. The chat template
travels in tokenizer_config.json, and Transformers' apply_chat_template gives meshlm's ids."""

import dataclasses
import json

import numpy as np
import pytest
import transformers

from data.chat_template import DEFAULT_TEMPLATE, ChatTemplate, encode_text, special_tokens, write_template
from data.sft_examples import encode_conversation
from train.checkpoints.params import CheckpointParams
from train.config import ConfigError, LoraConfig
from train.interop.hf_export import export_hf
from train.interop.peft_export import export_peft
from train.trainable import split_trainable

from tests.data_fixtures import small_tokenizer
from tests.export_fixtures import fixed_batch, hf_logits, jax_logits, random_params, tiny_export_config, write_checkpoint

TARGETS = ("q", "k", "v", "o", "gate", "up", "down")


@pytest.fixture(scope="module")
def lora_workdir(tmp_path_factory):
    """A LoRA fine-tune's checkpoint with random base and adapter weights (saved 8 ways), and its base's."""
    tokenizer = small_tokenizer(tmp_path_factory)
    config = tiny_export_config(tokenizer.vocab_size, arch="llama", num_kv_heads=2, init_std=0.1,
                                lora=LoraConfig(rank=4, alpha=6.0, targets=TARGETS))
    params = random_params(config.model, seed=3)
    _, base_params = split_trainable(params)
    root = tmp_path_factory.mktemp("sft-export")
    base_config = dataclasses.replace(config, model=dataclasses.replace(config.model, lora=LoraConfig()))
    base = write_checkpoint(root / "base", base_config, base_params, tokenizer, mesh_shape=(1, 1, 1))
    tuned = write_checkpoint(root / "tuned", config, params, tokenizer, mesh_shape=(2, 2, 2),
                             meta={"init_from": str(base)})
    write_template(tuned, DEFAULT_TEMPLATE)
    return tuned, base, config, params, base_config, base_params, tokenizer


def _batch(config, tokenizer):
    return fixed_batch(config.model.vocab_size, tokenizer.pad_id)


def test_merged_export_is_a_plain_llama_with_the_fine_tuned_logits(lora_workdir, tmp_path):
    tuned, _, config, params, base_config, base_params, tokenizer = lora_workdir
    export_hf(CheckpointParams(tuned), tmp_path / "merged")
    tokens, segment_ids, positions = _batch(config, tokenizer)
    want = jax_logits(config, params, tokens, segment_ids, positions)
    got, model = hf_logits(transformers.LlamaForCausalLM, tmp_path / "merged", tokens, segment_ids, positions)
    real = segment_ids > 0
    assert np.abs(got[real] - want[real]).max() <= 1e-4
    base = jax_logits(base_config, base_params, tokens, segment_ids, positions)
    assert np.abs(base[real] - want[real]).max() > 0.1  # the adapters matter: the check has teeth
    assert not any("lora" in name for name, _ in model.named_parameters())
    hf_config = json.loads((tmp_path / "merged" / "tokenizer_config.json").read_text())
    assert hf_config["chat_template"] == DEFAULT_TEMPLATE  # the workdir's, for apply_chat_template


def test_peft_folder_loads_on_the_base_export_with_equal_logits(lora_workdir, tmp_path):
    import peft
    import torch

    tuned, base, config, params, *_, tokenizer = lora_workdir
    export_hf(CheckpointParams(base), tmp_path / "base")
    export_peft(CheckpointParams(tuned), tmp_path / "adapter")
    adapter_config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert (adapter_config["r"], adapter_config["lora_alpha"]) == (4, 6.0)
    assert sorted(adapter_config["target_modules"]) == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    model = peft.PeftModel.from_pretrained(
        transformers.LlamaForCausalLM.from_pretrained(tmp_path / "base", attn_implementation="eager"),
        tmp_path / "adapter")
    loaded = {name for name, _ in model.named_parameters() if "lora_" in name}
    assert len(loaded) == 2 * len(TARGETS) * config.model.num_layers
    tokens, segment_ids, positions = _batch(config, tokenizer)
    with torch.no_grad():
        got = model.eval()(input_ids=torch.tensor(tokens, dtype=torch.long),
                           attention_mask=torch.tensor(segment_ids > 0, dtype=torch.long),
                           position_ids=torch.tensor(positions, dtype=torch.long)).logits.numpy()
    want = jax_logits(config, params, tokens, segment_ids, positions)
    real = segment_ids > 0
    print(f"PEFT on the base export vs meshlm: max |logit difference| {np.abs(got[real] - want[real]).max():.2e}")
    assert np.abs(got[real] - want[real]).max() <= 1e-4


def test_a_model_without_adapters_has_no_peft_export(lora_workdir, tmp_path):
    _, base, *_ = lora_workdir
    with pytest.raises(ConfigError, match=r"--format=peft needs a LoRA fine-tune .* model.lora.rank=0") as error:
        export_peft(CheckpointParams(base), tmp_path / "adapter")
    assert "\n" not in str(error.value)


CONVERSATIONS = [
    [{"role": "user", "content": "reverse: river stone"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "alpha  beta\n"},
     {"role": "assistant", "content": "beta alpha"}, {"role": "user", "content": "gamma, delta"}],
]


@pytest.mark.parametrize("conversation", CONVERSATIONS)
def test_apply_chat_template_on_the_export_gives_meshlms_ids(lora_workdir, tmp_path, conversation):
    tuned, *_, tokenizer = lora_workdir
    export_hf(CheckpointParams(tuned), tmp_path / "hf")
    if not (tmp_path / "hf" / "tokenizer.json").is_file():
        pytest.skip("the export has no tokenizer.json yet (issue 17 adds it): Transformers cannot build a fast "
                    "tokenizer that encodes as meshlm does, so apply_chat_template's ids cannot match")
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    template = ChatTemplate(DEFAULT_TEMPLATE, special_tokens(tokenizer))
    want = encode_text(tokenizer, template.render(conversation, add_generation_prompt=True))
    got = tok.apply_chat_template(conversation, tokenize=True, add_generation_prompt=True, return_dict=False)
    assert list(got) == want
    finished = conversation + [{"role": "assistant", "content": "stone river"}]
    ids, _ = encode_conversation(finished, template, tokenizer, "conversation")
    assert list(tok.apply_chat_template(finished, tokenize=True, return_dict=False)) == list(ids)
