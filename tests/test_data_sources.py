"""data/sources.py, data/text_files.py and data/tfds_source.py: files and TFDS sources, offline, with clear errors."""

import pytest

from data.documents import is_validation
from data.documents import DataError, DecodeCounts
from data.sources import parse_source, source_documents
from train.config import ConfigError, load_config

from tests.data_fixtures import write_text_files


def docs_of(source: str, split: str, **kwargs) -> list[str]:
    return list(source_documents(parse_source(source), split, **kwargs))


@pytest.mark.parametrize("text,kind", [
    ("builtin", "builtin"), ("files:a/*.txt,b.jsonl", "files"), ("tfds:c4/en", "tfds"),
    ("tfds:wikipedia/20230601.en:train[:90%]", "tfds"), ("store:/data/s", "store")])
def test_source_strings_parse(text, kind):
    spec = parse_source(text)
    assert spec.kind == kind and parse_source(spec.describe()) == spec


@pytest.mark.parametrize("text", ["", "files:", "tfds:", "tfds:c4:", "hub:bert", "builtin:x"])
def test_bad_source_strings_are_one_line_errors(text):
    with pytest.raises(DataError, match="accepted: builtin, files:") as e:
        parse_source(text)
    assert "\n" not in str(e.value)


def test_config_rejects_a_bad_source_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="config key 'data.source'.*'hub:x'"):
        load_config("configs/bert_tiny.py", ["data.source=hub:x"])
    config = load_config("configs/bert_tiny.py", ["data.source=files:x/*.jsonl",
                                                  "data.text_field=body"])
    assert config.data.text_field == "body"


def test_files_split_into_train_and_validation_by_hash(tmp_path):
    docs = write_text_files(tmp_path)
    train = docs_of(f"files:{tmp_path}/*.txt,{tmp_path}/*.jsonl", "train")
    validation = docs_of(f"files:{tmp_path}/*", "validation")
    assert sorted(train + validation) == sorted(docs)
    assert validation and all(is_validation(d) for d in validation)
    assert train == [d for d in docs if not is_validation(d)]  # a.txt then b.jsonl, in order


def test_paragraphs_keep_their_lines_and_invalid_utf8_is_replaced_and_counted(tmp_path):
    (tmp_path / "x.txt").write_bytes(b"one\ntwo\n\n\nthree \xff\xfe end\n\n")
    (tmp_path / "y.jsonl").write_bytes(b'{"text": "ok"}\n\n{"text": "bad \xc3 byte"}\n')
    counts = DecodeCounts()
    docs = docs_of(f"files:{tmp_path}/*", "train", counts=counts) + docs_of(
        f"files:{tmp_path}/*", "validation", counts=counts)
    assert sorted(docs) == sorted(["one\ntwo", "three \ufffd\ufffd end", "ok", "bad \ufffd byte"])
    assert counts.replaced_docs == 2


def test_missing_files_and_records_without_the_field_are_one_line_errors(tmp_path):
    with pytest.raises(DataError, match=r"no files match '.*nothing/\*.txt'"):
        docs_of(f"files:{tmp_path}/nothing/*.txt", "train")
    (tmp_path / "r.jsonl").write_text('{"text": "fine"}\n{"body": "x"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"r.jsonl:2 has no field 'text'"):
        docs_of(f"files:{tmp_path}/r.jsonl", "train")
    (tmp_path / "s.jsonl").write_text('{"text": "fine"}\nnot json\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"s.jsonl:2 is not a JSON object"):
        docs_of(f"files:{tmp_path}/s.jsonl", "train")


def test_a_tfds_dataset_built_from_local_files_reads_like_c4(tmp_path):
    from data.tfds_source import NAME, build_text_dataset

    write_text_files(tmp_path / "text")
    build_text_dataset((f"{tmp_path}/text/*",), tmp_path / "tfds", num_shards=2)
    assert len(list((tmp_path / "tfds").rglob("*train.array_record-*-of-00002"))) == 2
    for split in ("train", "validation"):
        from_tfds = docs_of(f"tfds:{NAME}", split, tfds_data_dir=str(tmp_path / "tfds"))
        from_files = docs_of(f"files:{tmp_path}/text/*", split)
        assert sorted(from_tfds) == sorted(from_files) and from_tfds


def test_a_missing_tfds_dataset_is_a_one_line_error(tmp_path):
    with pytest.raises(DataError, match="TFDS dataset 'meshlm_text_files'.*cannot") as e:
        docs_of("tfds:meshlm_text_files", "train", tfds_data_dir=str(tmp_path))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name", ["c4/en", "wikipedia/20230601.en"])
def test_c4_and_wikipedia_read_through_tfds_data_source_with_mock_data(name):
    import tensorflow_datasets as tfds
    from tensorflow_datasets.text import c4, wikipedia  # noqa: F401  registers the builders

    with tfds.testing.mock_data(num_examples=40):
        train = docs_of(f"tfds:{name}", "train")
        validation = docs_of(f"tfds:{name}:train", "validation")
        with pytest.raises(DataError, match="has no feature 'body'"):
            docs_of(f"tfds:{name}", "train", text_field="body")
    assert train and all(isinstance(d, str) and d.strip() for d in train)
    # Mock infos record no splits, so validation is the hash holdout of the same records.
    assert validation and not set(train) & set(validation)
