"""A labelled task made from this Python install: which standard-library package a docstring comes from.

It needs no download, so tests and the README can fine-tune on it:

    python -m data.write_task_cli --out=DIR [--families=asyncio,email,logging] [--per_family=150]

writes DIR/train.csv and DIR/validation.csv (columns text,label), balanced across the
families, with a stable hash deciding which documents are held out.
"""

from __future__ import annotations

import csv
import hashlib
import os
import pathlib
import random
import sysconfig

from data.docstrings import file_documents

DEFAULT_FAMILIES = ("asyncio", "email", "logging")


def family_documents(family: str) -> list[str]:
    """The docstring documents of one standard-library package, in file order, without duplicates."""
    root = pathlib.Path(sysconfig.get_paths()["stdlib"]) / family
    if not root.is_dir():
        raise ValueError(f"'{family}' is not a standard-library package at {root}")
    docs: dict[str, None] = {}
    for directory, subdirs, names in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in ("test", "tests", "__pycache__"))
        for name in sorted(n for n in names if n.endswith(".py") and not n.startswith("test_")):
            docs.update(dict.fromkeys(file_documents(os.path.join(directory, name))))
    return list(docs)


def is_held_out(doc: str, percent: int) -> bool:
    """True for about `percent`% of documents, by a hash that is stable across runs."""
    digest = hashlib.blake2b(doc.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % 100 < percent


def write_task(out: str | os.PathLike, families: tuple[str, ...] = DEFAULT_FAMILIES, *, per_family: int = 150,
               validation_percent: int = 30, seed: int = 0) -> tuple[pathlib.Path, pathlib.Path]:
    """Writes train.csv and validation.csv with `per_family` documents of each family; returns their paths."""
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    splits: dict[str, list[tuple[str, str]]] = {"train": [], "validation": []}
    for family in families:
        docs = family_documents(family)
        if len(docs) < per_family:
            raise ValueError(f"'{family}' has {len(docs)} documents, fewer than per_family={per_family}")
        for doc in rng.sample(docs, per_family):
            splits["validation" if is_held_out(doc, validation_percent) else "train"].append((doc, family))
    for rows in splits.values():
        rng.shuffle(rows)
    return _write_splits(out, splits)


def _write_splits(out: pathlib.Path, splits: dict[str, list[tuple[str, str]]]) -> tuple[pathlib.Path, pathlib.Path]:
    """train.csv and validation.csv with a text,label header."""
    paths = []
    for split, rows in splits.items():
        path = out / f"{split}.csv"
        with open(path, "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            writer.writerows(rows)
        paths.append(path)
    return paths[0], paths[1]
