"""Supervised fine-tuning data (data/chat_template.py, data/sft_examples.py): templates render as
Transformers renders them, the loss covers responses only, examples pack whole with their own
segments, long prompts are truncated and counted, and bad records get one-line errors."""

import json

import numpy as np
import pytest
from transformers.utils.chat_template_utils import render_jinja_template

from data.chat_template import DEFAULT_TEMPLATE, ChatTemplate, encode_text, special_tokens
from data.documents import DataError
from data.sft_examples import Fields, conversation, encode_conversation, prepare_sft, truncate

from tests.data_fixtures import small_store_tokenizer

# A Hub-style template: ChatML turns, a loop control, {% generation %} and raise_exception.
CHATML = (
    "{% for message in messages %}{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('bad role ' + message['role']) }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] + '<|im_end|>' }}"
    "{% endgeneration %}{% else %}{{ message['content'] + '<|im_end|>' }}{% endif %}{{ '\n' }}"
    "{% if loop.index > 8 %}{% break %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "alpha  beta\n"},
        {"role": "assistant", "content": "beta alpha"}, {"role": "user", "content": "gamma"},
        {"role": "assistant", "content": "  gamma stone "}]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return small_store_tokenizer(tmp_path_factory)


@pytest.mark.parametrize("text", [DEFAULT_TEMPLATE, CHATML])
@pytest.mark.parametrize("generation_prompt", [False, True])
def test_templates_render_as_transformers_renders_them(tok, text, generation_prompt):
    specials = special_tokens(tok)
    ours = ChatTemplate(text, specials).render(CHAT[:4] if generation_prompt else CHAT,
                                               add_generation_prompt=generation_prompt)
    theirs, _ = render_jinja_template([CHAT[:4] if generation_prompt else CHAT], chat_template=text,
                                      add_generation_prompt=generation_prompt, **specials)
    assert ours == theirs[0]
    assert ours.count("beta alpha") == 1


def test_the_loss_covers_every_response_and_nothing_else(tok):
    template = ChatTemplate(DEFAULT_TEMPLATE, special_tokens(tok))
    ids, mask = encode_conversation(CHAT, template, tok, "chat")
    assert ids[0] == tok.cls_id and ids[-1] == tok.sep_id  # meshlm's document convention
    runs = np.flatnonzero(np.diff(np.concatenate([[0], mask, [0]])))
    spans = [(int(a), int(b)) for a, b in zip(runs[::2], runs[1::2])]
    assert len(spans) == 2  # the two assistant turns
    texts = [tok.decode(ids[a:b]) for a, b in spans]
    assert texts[0].strip() == "beta alpha" and texts[1].strip() == "gamma stone"
    assert all(ids[b - 1] == tok.sep_id for _, b in spans)  # each turn's [SEP] is learned: decoding stops there
    prompt = encode_text(tok, template.render(CHAT[:1] + CHAT[1:2], add_generation_prompt=True))
    assert list(ids[:len(prompt)]) == prompt and not mask[:len(prompt)].any()


def test_truncation_keeps_the_document_start_and_the_last_response():
    ids = np.arange(20, dtype=np.int32)
    mask = np.zeros(20, np.int32)
    mask[14:20] = 1
    cut, cut_mask, prompt_cut, response_cut = truncate(ids, mask, 10)
    assert list(cut) == [0, 11, 12, 13, 14, 15, 16, 17, 18, 19] and cut_mask.sum() == 6
    assert prompt_cut and not response_cut
    cut, cut_mask, prompt_cut, response_cut = truncate(ids, mask, 5)  # the response alone is too long
    assert list(cut) == [0, 14, 15, 16, 17] and prompt_cut and response_cut
    assert truncate(ids, mask, 20)[2:] == (False, False)


def _write(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def test_rows_pack_examples_with_their_own_segments_and_count_truncations(tok, tmp_path):
    records = [{"prompt": f"river stone {'cloud ' * (i % 5)}", "response": "paper light"} for i in range(60)]
    records += [{"prompt": "water " * 100, "response": "tree"}] * 3  # longer than a row
    records += [{"messages": CHAT}]
    _write(tmp_path / "train.jsonl", records)
    template = ChatTemplate(DEFAULT_TEMPLATE, special_tokens(tok), "the default")
    data = prepare_sft(tmp_path / "w", f"files:{tmp_path}/train.jsonl", tokenizer=tok, template=template, seq_len=96)
    rows = data.train
    assert rows.loss_mask is not None and rows.loss_mask.shape == rows.tokens.shape
    train, validation = data.source.counts["train"], data.source.counts["validation"]
    assert train["examples"] + validation["examples"] == len(records)
    assert train["prompt_truncated"] + validation["prompt_truncated"] == 3  # the three long ones
    assert "truncated from the prompt side" in data.describe()
    starts = (rows.positions == 0) & (rows.segment_ids > 0)
    assert np.all(rows.tokens[starts] == tok.cls_id)  # every example starts a segment with [CLS]
    assert starts.sum() == train["examples"] and (starts.sum(axis=1) > 1).any()  # several per row
    assert not rows.loss_mask[rows.segment_ids == 0].any() and not rows.loss_mask[starts].any()
    assert rows.loss_mask.sum() == train["response_tokens"]
    again = prepare_sft(tmp_path / "w", f"files:{tmp_path}/train.jsonl", tokenizer=tok, template=template, seq_len=96)
    assert again.key == data.key and np.array_equal(again.train.tokens, rows.tokens)  # made once, reused


@pytest.mark.parametrize("record, words", [
    ({"question": "x", "answer": "y"}, r"x.jsonl:2 has neither 'messages' nor 'prompt' and 'response'"),
    ({"prompt": "x", "response": "  "}, r"x.jsonl:2 has an empty response"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": ""}]},
     r"x.jsonl:2 message 1 is an empty response"),
    ({"messages": [{"role": "user", "content": "x"}]}, r"x.jsonl:2 has no assistant message"),
    ({"messages": [{"role": "robot", "content": "x"}]}, r"message 0 has role 'robot'; accepted: system, user, assistant"),
    ({"prompt": 3, "response": "y"}, r"field 'prompt' is 3; accepted: a string"),
    ("[1, 2]", r"x.jsonl:2 is a JSON list"),
    ("{not json", r"x.jsonl:2 is not a JSON object"),
])
def test_bad_records_are_one_line_errors_naming_the_line(tok, tmp_path, record, words):
    _write(tmp_path / "x.jsonl", [{"prompt": "a", "response": "b"}, record])
    template = ChatTemplate(DEFAULT_TEMPLATE, special_tokens(tok))
    with pytest.raises(DataError, match=words) as error:  # (both splits are read: a held-out line too)
        prepare_sft(tmp_path / "w", f"files:{tmp_path}/x.jsonl", tokenizer=tok, template=template, seq_len=32)
    assert "\n" not in str(error.value)


def test_templates_that_do_not_compile_or_render_are_one_line_errors(tok):
    with pytest.raises(DataError, match=r"my.jinja is not a valid Jinja template \(line 1: ") as error:
        ChatTemplate("{% for m in messages %}", special_tokens(tok), "my.jinja")
    assert "\n" not in str(error.value)
    raising = ChatTemplate("{{ raise_exception('only user turns, please') }}", special_tokens(tok), "strict.jinja")
    with pytest.raises(DataError, match=r"strict.jinja does not render f.jsonl:3: TemplateError: only user turns"):
        raising.render(CHAT, where="f.jsonl:3")
    reordered = ChatTemplate("{% for m in messages|reverse %}{{ m['content'] }}{% endfor %}", special_tokens(tok), "r")
    with pytest.raises(DataError, match=r"r renders chat so that the prompt of message 2 is not the start"):
        encode_conversation(CHAT, reordered, tok, "chat")
    assert conversation({"prompt": "p", "response": "r"}, Fields(), "x") == [
        {"role": "user", "content": "p"}, {"role": "assistant", "content": "r"}]


def test_tfds_records_with_their_own_validation_split(tok, tmp_path):
    """A prepared TFDS dataset (array_record, read without TensorFlow) of question/answer and chat records."""
    import tensorflow_datasets as tfds

    chats = [[{"role": "user", "content": f"stone {i}"}, {"role": "assistant", "content": f"river {i}"}]
             for i in range(12)]

    class MeshlmSftTestRecords(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            text = tfds.features.Text()
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "question": text, "answer": text,
                "messages": tfds.features.Sequence({"role": text, "content": text})}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(range(10)), "validation": self._generate_examples(range(10, 12))}

        def _generate_examples(self, numbers):
            for i in numbers:
                yield str(i), {"question": f"cloud {i}", "answer": f"paper {i}",
                               "messages": {key: [m[key] for m in chats[i]] for key in ("role", "content")}}

    MeshlmSftTestRecords(data_dir=str(tmp_path / "tfds")).download_and_prepare(file_format="array_record")
    template = ChatTemplate(DEFAULT_TEMPLATE, special_tokens(tok))
    common = dict(tokenizer=tok, template=template, seq_len=64, tfds_data_dir=str(tmp_path / "tfds"))
    qa = prepare_sft(tmp_path / "qa", "tfds:meshlm_sft_test_records", fields=Fields("question", "answer", "none"),
                     **common)
    assert (qa.source.counts["train"]["examples"], qa.source.counts["validation"]["examples"]) == (10, 2)
    first = qa.train.tokens[qa.train.segment_ids == 1][:40]
    assert "cloud" in tok.decode(first) and "paper" in tok.decode(first)
    chat = prepare_sft(tmp_path / "chat", "tfds:meshlm_sft_test_records", **common)  # messages first
    responses = chat.validation.tokens[chat.validation.loss_mask > 0]
    assert sorted(tok.decode(responses).split()) == sorted("river 10 river 11".split())
