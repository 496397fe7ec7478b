"""Task data: CSV/JSONL/TFDS examples, pair encoding, the label map, and one-line data errors."""

import json

import numpy as np
import pytest

from data.tasks import Example, Fields, LabelMap, encode_examples, read_examples, read_tfds_examples
from tests.data_fixtures import small_tokenizer


def _write_csv(path, rows, header=("text", "label")):
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_csv_and_jsonl_read_the_same_examples(tmp_path):
    csv_path = _write_csv(tmp_path / "a.csv", [("good film", "pos"), ("dull, long", "neg")])
    jsonl_path = _write_jsonl(tmp_path / "a.jsonl", [{"text": "good film", "label": "pos", "id": 1},
                                                      {"text": "dull, long", "label": "neg", "id": 2}])
    assert read_examples(csv_path, Fields()) == read_examples(jsonl_path, Fields()) == [
        Example("good film", "pos"), Example("dull, long", "neg")]


def test_pairs_encode_as_cls_a_sep_b_sep_with_token_types(tmp_path_factory):
    tok = small_tokenizer(tmp_path_factory)
    examples = [Example("the first text", "1", text_pair="a second one"), Example("single", "0")]
    rows = encode_examples(examples, tok, seq_len=16)
    a, b = tok.encode("the first text"), tok.encode("a second one")
    expected = [tok.cls_id, *a, tok.sep_id, *b, tok.sep_id]
    np.testing.assert_array_equal(rows["tokens"][0, :len(expected)], expected)
    assert (rows["tokens"][0, len(expected):] == tok.pad_id).all()
    np.testing.assert_array_equal(rows["token_types"][0, :len(expected)], [0] * (len(a) + 2) + [1] * (len(b) + 1))
    assert rows["token_types"][1].sum() == 0 and rows["tokens"][1, 0] == tok.cls_id
    np.testing.assert_array_equal(rows["segment_ids"][0], (rows["tokens"][0] != tok.pad_id).astype(np.int32))
    # Too long: the longer text is cut first and both [SEP]s stay.
    long = encode_examples([Example("word " * 40, "1", text_pair="short")], tok, seq_len=12)["tokens"][0]
    assert long[-1] == tok.sep_id and list(long).count(tok.sep_id) == 2


def test_label_map_orders_integers_numerically_and_round_trips(tmp_path):
    labels = LabelMap.from_examples([Example("x", s) for s in ("10", "2", "1", "2")])
    assert labels.names == ("1", "2", "10")
    labels.save(tmp_path / "labels.json")
    assert LabelMap.load(tmp_path / "labels.json") == labels
    np.testing.assert_array_equal(labels.ids([Example("y", "10"), Example("z", "1")], "dev"), [2, 0])


def test_jsonl_integer_labels_equal_csv_string_labels(tmp_path):
    path = _write_jsonl(tmp_path / "b.jsonl", [{"text": "t", "label": 1}, {"text": "u", "label": 0}])
    assert [e.label for e in read_examples(path, Fields())] == ["1", "0"]


@pytest.mark.parametrize("value, shown", [(None, "None"), ([1, 2], r"\[1, 2\]"), ("  ", "'  '"), (0.5, "0.5"),
                                          (True, "True")])
def test_bad_label_values_get_one_line(tmp_path, value, shown):
    path = _write_jsonl(tmp_path / "bad.jsonl", [{"text": "fine", "label": "a"}, {"text": "t", "label": value}])
    with pytest.raises(ValueError, match=rf"bad.jsonl line 2 field 'label' has bad label value {shown}; accepted") as e:
        read_examples(path, Fields())
    assert "\n" not in str(e.value)


def test_missing_label_field_names_the_fields_and_the_flag(tmp_path):
    csv_path = _write_csv(tmp_path / "c.csv", [("t", "x")], header=("sentence", "class"))
    with pytest.raises(ValueError, match=r"no column 'label' \(columns: sentence, class\).*task.label_field"):
        read_examples(csv_path, Fields(text="sentence"))
    jsonl_path = _write_jsonl(tmp_path / "c.jsonl", [{"text": "t", "label": "x"}, {"text": "u", "target": "y"}])
    with pytest.raises(ValueError, match=r"c.jsonl line 2 has no field 'label' \(fields: text, target\)"):
        read_examples(jsonl_path, Fields())


def test_validation_label_outside_the_training_labels_is_named(tmp_path):
    labels = LabelMap.from_examples([Example("a", "pos"), Example("b", "neg")])
    with pytest.raises(ValueError, match=r"validation split example 1 has label 'neutral', which is not one of "
                                         r"the training labels \['neg', 'pos'\]"):
        labels.ids([Example("c", "pos"), Example("d", "neutral")], "the validation split")
    with pytest.raises(ValueError, match="only the label"):
        LabelMap.from_examples([Example("a", "pos")])


def test_tfds_dataset_with_a_class_label_feature():
    import tensorflow_datasets as tfds
    import tensorflow_datasets.text.glue  # noqa: F401  registers glue for mock_data

    with tfds.testing.mock_data(num_examples=6):
        examples, names = read_tfds_examples("glue/sst2", "train", Fields(text="sentence"))
        with pytest.raises(ValueError, match=r"has no feature 'polarity' \(features: idx, label, sentence\)"):
            read_tfds_examples("glue/sst2", "train", Fields(text="sentence", label="polarity"))
    assert names == ["negative", "positive"] and len(examples) == 6
    assert {e.label for e in examples} <= set(names) and all(isinstance(e.text, str) for e in examples)
    assert LabelMap.from_examples(examples, names).names == ("negative", "positive")
