"""English prose documents from the docstrings of one Python source file, read with `ast`.

`run_worker` is the entry point of the corpus build's worker subprocesses, which let a build
use every core without forking a process that may already hold JAX threads.
"""

import ast
import json
import pathlib
import re
import string
import warnings
from collections.abc import Iterator

# sentencepiece skips training lines over 4192 bytes; stay well clear of that.
MAX_DOC_BYTES = 4000
MIN_WORDS = 8

_DOC_NODES = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
# Fields holding statements (or handlers and match cases, which hold statements).
_STATEMENT_FIELDS = ("body", "orelse", "finalbody", "handlers", "cases")
_ASCII_LETTERS = string.ascii_letters.encode()
_RULE_CHARS = set("=-+|~^*#_:.`'\" ")
_ROLE = re.compile(r":[\w.:-]+:`~?([^`<]*?)(?:\s*<[^>]*>)?`")
_LINK = re.compile(r"`([^`<]+?)\s*<[^>]*>`_*")
_WORD = re.compile(r"^[(\"'\[]*[A-Za-z][a-z'-]*[.,;:!?)\"'\]]*$")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def file_documents(path: str) -> list[str]:
    """The prose documents of every docstring in one source file; [] if it does not parse."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = ast.parse(pathlib.Path(path).read_bytes(), filename=path)
    except (SyntaxError, ValueError, UnicodeError, RecursionError, MemoryError, OSError):
        return []
    documents = []
    for node in _documented_nodes(tree):
        text = ast.get_docstring(node, clean=True)
        if text:
            documents.extend(docstring_documents(text))
    return documents


def _documented_nodes(node: ast.AST) -> Iterator[ast.AST]:
    """The module, classes and functions under node, depth first in source order.

    Only statement lists are searched (definitions are statements), which is much faster
    than ast.walk over every expression.
    """
    if isinstance(node, _DOC_NODES):
        yield node
    for field in _STATEMENT_FIELDS:
        for child in getattr(node, field, ()):
            yield from _documented_nodes(child)


def docstring_documents(text: str) -> list[str]:
    """One docstring as single-line prose documents of at most MAX_DOC_BYTES bytes each."""
    paragraphs = [p for p in _paragraphs(_prose_lines(text.splitlines())) if _is_prose(p, 3)]
    return [doc for doc in _chunks(paragraphs) if _is_prose(doc, MIN_WORDS)]


def _prose_lines(lines: list[str]) -> list[str]:
    """Drops doctests, reST directives, literal blocks, tables and section underlines."""
    kept: list[str] = []
    skip_indent = -1  # inside a block indented deeper than this, every line is dropped
    in_doctest = False
    for i, line in enumerate(lines):
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if skip_indent >= 0 and (not stripped or indent > skip_indent):
            continue
        skip_indent = -1
        if not stripped:
            in_doctest = False
            kept.append("")
        elif in_doctest or stripped.startswith(">>>"):
            in_doctest = True
        elif stripped.startswith(".. "):
            skip_indent = indent
        elif _is_rule(stripped) or stripped.startswith("|") or stripped.startswith("+-"):
            continue
        elif i + 1 < len(lines) and _is_underline(lines[i + 1].strip()):
            continue  # a section title such as "Parameters" over a line of dashes
        elif stripped.endswith("::"):
            kept.append(stripped[:-1])
            skip_indent = indent
        else:
            kept.append(stripped)
    return kept


def _is_rule(stripped: str) -> bool:
    """True for lines drawn only with punctuation: table borders, underlines."""
    return set(stripped) <= _RULE_CHARS


def _is_underline(stripped: str) -> bool:
    """True for a reST title underline such as '----------'."""
    return len(stripped) >= 3 and len(set(stripped)) == 1 and stripped[0] in "=-~^*#"


def _paragraphs(lines: list[str]) -> list[str]:
    """Blank-line separated paragraphs, each on one line with markup roles unwrapped."""
    paragraphs, current = [], []
    for line in lines + [""]:
        if line:
            current.append(line)
        elif current:
            paragraphs.append(_unmark(" ".join(" ".join(current).split())))
            current = []
    return paragraphs


def _unmark(text: str) -> str:
    """Replaces reST roles and links with their visible text and drops literal quotes."""
    text = _LINK.sub(r"\1", _ROLE.sub(r"\1", text))
    return text.replace("``", "")


def _is_prose(text: str, min_words: int) -> bool:
    """True for English-looking text: enough words, mostly plain words, mostly ASCII letters."""
    words = text.split()
    if len(words) < min_words:
        return False
    plain = sum(1 for w in words if _WORD.match(w))
    ascii_text = text.encode("ascii", "ignore")
    letters = len(ascii_text) - len(ascii_text.translate(None, _ASCII_LETTERS))
    return plain >= 0.6 * len(words) and letters >= 0.75 * (len(text) - text.count(" "))


def _chunks(paragraphs: list[str]) -> list[str]:
    """Joins paragraphs greedily into documents no longer than MAX_DOC_BYTES."""
    pieces = [piece for p in paragraphs for piece in _split_long(p)]
    documents, current, size = [], [], 0
    for piece in pieces:
        length = len(piece.encode())
        if current and size + 1 + length > MAX_DOC_BYTES:
            documents.append(" ".join(current))
            current, size = [], -1
        current.append(piece)
        size += 1 + length
    if current:
        documents.append(" ".join(current))
    return documents


def _split_long(text: str) -> list[str]:
    """Splits one over-long paragraph at sentence ends, then at spaces, under MAX_DOC_BYTES."""
    if len(text.encode()) <= MAX_DOC_BYTES:
        return [text]
    units = _SENTENCE_END.split(text)
    if len(units) == 1:
        units = text.split(" ")
    pieces, current = [], ""
    for unit in units:
        candidate = f"{current} {unit}" if current else unit
        if current and len(candidate.encode()) > MAX_DOC_BYTES:
            pieces.append(current)
            candidate = unit
        current = candidate
    pieces.append(current)
    return [p for piece in pieces for p in _cut_bytes(piece)]


def _cut_bytes(text: str) -> list[str]:
    """Last resort for a single unbreakable run: cut it into MAX_DOC_BYTES-sized pieces."""
    data = text.encode()
    if len(data) <= MAX_DOC_BYTES:
        return [text]
    return [data[i:i + MAX_DOC_BYTES].decode(errors="ignore")
            for i in range(0, len(data), MAX_DOC_BYTES)]


def run_worker(list_path: str, worker: str, count: str, out_path: str) -> None:
    """Extracts files worker::count of a path list, one JSON line of documents per file."""
    paths = pathlib.Path(list_path).read_text(encoding="utf-8").splitlines()
    with open(out_path, "w", encoding="utf-8") as out:
        for path in paths[int(worker)::int(count)]:
            out.write(json.dumps(file_documents(path)) + "\n")
