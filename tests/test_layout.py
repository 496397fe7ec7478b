"""DESIGN.md's layout: dependency direction, one room per capability, CLIs named as such, no cycles."""

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

    for name in _cli_modules():
        importlib.import_module(name)


PACKAGES = ("model", "data", "train")
CAPABILITIES = ("generate", "interop", "finetune", "evaluate")


def _modules() -> dict[str, pathlib.Path]:
    """Dotted module name -> file, for every module of the three packages."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _is_cli(path: pathlib.Path) -> bool:
    return '__name__ == "__main__"' in path.read_text()


def _cli_modules() -> list[str]:
    return [name for name, path in _modules().items() if _is_cli(path)]


def test_a_cli_is_named_as_one():
    """A command is a package's __main__.py, train/main.py or a *_cli.py module, and only those are."""
    for name, path in _modules().items():
        named = path.name == "__main__.py" or path.stem.endswith("_cli") or name == "train.main"
        assert named == _is_cli(path), f"{path.relative_to(ROOT)}: named {'a' if named else 'not a'} CLI, but it is{' not' if named else ''}"


def test_no_two_modules_differ_only_by_a_suffix():
    """checkpoint.py / checkpoints.py, decode.py / decoding.py, export.py / export_hf.py: never again."""
    import re

    folders: dict[pathlib.Path, set[str]] = {}
    for path in _modules().values():
        if not path.stem.startswith("__"):
            folders.setdefault(path.parent, set()).add(re.sub(r"_cli$", "", path.stem))
    for folder, names in folders.items():
        bases: dict[str, set[str]] = {}
        for name in names:
            bases.setdefault(re.sub(r"(ing|ion|s|e)$", "", name), set()).add(name)
        clash = [group for group in bases.values() if len(group) > 1]
        clash += [{a, b} for a in names for b in names if b.startswith(a + "_")]
        assert not clash, f"{folder.relative_to(ROOT)}: module names that differ only by a suffix: {clash}"


def _all_imports(path: pathlib.Path, own: set[str]) -> set[str]:
    """Project modules a file imports, at any depth of the file (lazy imports count)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            submodules = {f"{node.module}.{alias.name}" for alias in node.names} & own
            names.update(submodules)
            if len(submodules) < len(node.names):  # `from pkg import name` runs pkg/__init__.py
                names.add(node.module)
    return {n for n in names if n in own}


def test_no_import_cycles():
    modules = _modules()
    graph = {name: _all_imports(path, set(modules)) - {name} for name, path in modules.items()}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = trail[trail.index(nxt):] + [nxt] if nxt in trail else [node, nxt]
                raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_the_core_never_imports_a_capability():
    modules = _modules()
    for name, path in modules.items():
        if name.startswith("train.") and name.count(".") == 1:
            bad = [m for m in _all_imports(path, set(modules)) if m.split(".")[1:2] and m.split(".")[1] in CAPABILITIES]
            assert not bad, f"{path.relative_to(ROOT)} (core) imports {bad}"


def test_every_package_says_what_it_owns_and_may_import():
    for init in sorted(p for package in PACKAGES for p in (ROOT / package).rglob("__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "May import" in doc or "may import" in doc, f"{init.relative_to(ROOT)} does not say what it may import"
