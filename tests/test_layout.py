"""DESIGN.md's dependency direction: model/ and data/ never import train/ or each other."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
FORBIDDEN = {"model": {"data", "train"}, "data": {"model", "train", "jax", "flax"}}


def _imports(path: pathlib.Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_dependency_direction(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"{package}/ has no Python files"
    for path in files:
        bad = _imports(path) & FORBIDDEN[package]
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_no_jit_in_model():
    for path in sorted((ROOT / "model").rglob("*.py")):
        text = path.read_text()
        assert "jax.jit" not in text and "nnx.jit" not in text, f"{path.relative_to(ROOT)} jits"


def test_configs_import_only_the_schema():
    for path in sorted((ROOT / "configs").glob("*.py")):
        assert _imports(path) <= {"train", "__future__", "dataclasses"}, path.name


def test_every_entry_point_imports_into_one_process():
    """Tests (and tools) import several CLIs together: absl flags must not be defined twice."""
    import importlib

    for name in ("main", "evaluate", "export", "import_hf", "decode", "fill_mask", "finetune", "predict",
                 "checkpoints"):
        importlib.import_module(f"train.{name}")
    importlib.import_module("data.prepare")
