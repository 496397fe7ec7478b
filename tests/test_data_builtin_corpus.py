"""data/builtin_corpus.py and data/docstrings.py: a deterministic, cached, clean docstring corpus."""

import json
import re

import pytest

from data import builtin_corpus as corpus_module
from data.builtin_corpus import builtin_corpus, corpus_distributions, read_documents, source_files
from data.documents import DataError, is_validation
from data.docstrings import MAX_DOC_BYTES, docstring_documents, file_documents
from tests.data_fixtures import SMALL_CORPUS_BYTES, small_corpus

DOCSTRING = """Compute the running total of the values along one axis.

This function adds the values one after another and returns every partial sum,
which is handy when you want a cumulative view of the data.

Parameters
----------
values : array_like
    The numbers to add up, in the order they should be summed.

Examples
--------
>>> running_total([1, 2, 3])
array([1, 3, 6])

.. note:: This directive and its body
   should not appear in the corpus at all.

The classic loop looks like this::

    total = 0
    for v in values:
        total += v

+-------+-------+
| a     | b     |
+-------+-------+
"""


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return small_corpus(tmp_path_factory)


def test_docstring_keeps_prose_and_drops_code_and_markup():
    (doc,) = docstring_documents(DOCSTRING)
    assert doc.startswith("Compute the running total of the values along one axis. This function")
    assert "values : array_like The numbers to add up" in doc
    assert "The classic loop looks like this:" in doc
    for junk in (">>>", "array([1", "directive", "total = 0", "+---", "| a", "Parameters",
                 "----", "Examples", "\n", "  "):
        assert junk not in doc


def test_rest_roles_and_links_read_as_their_text():
    (doc,) = docstring_documents(
        "See :func:`numpy.sum` and :class:`~pathlib.Path` for the ``axis`` argument, "
        "or read `the user guide <https://example.org/guide>`_ before you start.")
    assert doc == ("See numpy.sum and pathlib.Path for the axis argument, "
                   "or read the user guide before you start.")


def test_code_only_and_short_docstrings_are_dropped():
    assert docstring_documents("Return x.") == []
    assert docstring_documents(">>> f(1, 2)\n3\n>>> f(2, 2)\n4") == []
    assert docstring_documents("x = [1, 2, 3]; y = {k: v for k, v in z}; f(x, y) -> (a, b)") == []


def test_long_docstrings_split_at_paragraphs_under_the_limit():
    paragraph = " ".join(["The quick brown fox jumps over the lazy dog."] * 30)
    text = "\n\n".join([paragraph] * 12) + "\n\n" + "word " * 2000
    docs = docstring_documents(text)
    assert len(docs) > 3
    assert all(len(d.encode()) <= MAX_DOC_BYTES for d in docs)
    assert " ".join(docs).split() == text.split()


def test_files_that_do_not_parse_are_skipped(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text('def f(:\n    """A docstring that would be fine in a valid file of code."""\n')
    assert file_documents(str(bad)) == []
    good = tmp_path / "good.py"
    good.write_text('"""This module explains in plain words what the small helpers do."""\n')
    assert file_documents(str(good)) == [
        "This module explains in plain words what the small helpers do."]


def test_walk_skips_tests_and_is_sorted():
    files = source_files()
    assert len(files) > 1000
    assert all(f.endswith(".py") for f in files)
    assert not [f for f in files if re.search(r"/tests?/|/test_[^/]*$|_test\.py$", f)]
    stdlib = [f for f in files if "site-packages" not in f]
    assert stdlib and files[:len(stdlib)] == stdlib, "the standard library comes first"


def test_worker_processes_extract_exactly_what_one_process_does(tmp_path):
    paths = source_files()[:40]
    parallel = list(corpus_module._parallel_documents(paths, tmp_path, 2))
    assert parallel == [file_documents(p) for p in paths]
    assert sum(map(len, parallel)) > 10


def test_documents_are_single_clean_lines(corpus):
    for path in (corpus.train, corpus.validation):
        raw = path.read_bytes()
        lines = raw.decode("utf-8").split("\n")
        assert lines[-1] == "" and all(lines[:-1])
        for line in lines[:-1]:
            assert len(line.encode()) <= MAX_DOC_BYTES < 4192
            assert line == " ".join(line.split()) and len(line.split()) >= 8
    docs = read_documents(corpus.train) + read_documents(corpus.validation)
    assert len(docs) == len(set(docs)) == corpus.train_docs + corpus.validation_docs


def test_sizes_and_counts_match_the_files(corpus):
    assert corpus.train_bytes == corpus.train.stat().st_size
    assert corpus.validation_bytes == corpus.validation.stat().st_size
    assert corpus.train_bytes + corpus.validation_bytes <= SMALL_CORPUS_BYTES
    assert corpus.train_bytes > 0.9 * SMALL_CORPUS_BYTES
    info = json.loads((corpus.train.parent / "info.json").read_text())
    assert info["train_docs"] == corpus.train_docs == len(read_documents(corpus.train))
    assert re.fullmatch(r"built-in corpus: 0\.1\d MB train \([\d,]+ docs\), 0\.\d\d MB "
                        r"validation \([\d,]+ docs\) at /.+/builtin-[0-9a-f]{16}",
                        corpus.describe())


def test_validation_is_the_stable_hash_split_and_disjoint(corpus):
    train, validation = read_documents(corpus.train), read_documents(corpus.validation)
    assert validation and not set(train) & set(validation)
    assert all(is_validation(d) for d in validation)
    assert not any(is_validation(d) for d in train)
    share = sum(is_validation(f"document number {i}") for i in range(20_000)) / 20_000
    assert 0.015 < share < 0.025


def test_builds_are_deterministic_and_a_smaller_cap_is_a_prefix(corpus, tmp_path):
    again = builtin_corpus(tmp_path / "other", max_bytes=SMALL_CORPUS_BYTES)
    assert again.train != corpus.train
    assert again.train.read_bytes() == corpus.train.read_bytes()
    assert again.validation.read_bytes() == corpus.validation.read_bytes()
    smaller = builtin_corpus(tmp_path / "other", max_bytes=SMALL_CORPUS_BYTES // 3)
    small_docs = read_documents(smaller.train)
    assert 0 < len(small_docs) < corpus.train_docs
    assert read_documents(corpus.train)[:len(small_docs)] == small_docs


def test_the_cache_is_reused_checked_and_leaves_no_temporary_folders(tmp_path):
    first = builtin_corpus(tmp_path, max_bytes=20_000)
    written = first.train.stat()
    second = builtin_corpus(tmp_path, max_bytes=20_000)
    assert second == first
    assert (first.train.stat().st_ino, first.train.stat().st_mtime_ns) == (written.st_ino, written.st_mtime_ns)
    assert [p.name for p in tmp_path.iterdir()] == [first.train.parent.name]
    with open(first.train, "a", encoding="utf-8") as f:  # the cache is checked, not trusted
        f.write("a line that was never part of the corpus\n")
    with pytest.raises(DataError, match=f"{first.train} is damaged .* sha256 recorded in .*info.json"):
        builtin_corpus(tmp_path, max_bytes=20_000)


def test_bad_arguments_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="max_bytes must be a positive number of bytes or None, "
                                         "got 0"):
        builtin_corpus(tmp_path, max_bytes=0)
    with pytest.raises(ValueError, match="came out empty"):
        builtin_corpus(tmp_path, max_bytes=10)
    assert list(tmp_path.iterdir()) == [], "a failed build leaves nothing behind"
    with pytest.raises(FileNotFoundError, match="no corpus file at .*missing.txt"):
        read_documents(tmp_path / "missing.txt")


def test_corpus_follows_core_dependencies_not_extras():
    dists = corpus_distributions()
    assert {"jax", "flax", "numpy", "scipy"} <= set(dists), "core dependencies and their requirements"
    assert "pytest" not in dists and "pluggy" not in dists, "the test extra must not change the corpus"
    files = source_files()
    assert not any("/_pytest/" in f or "/pytest/" in f for f in files)
    assert any("/flax/" in f for f in files) and any("/json/" in f for f in files)
