"""The import graph runs one way: the method (data -> model -> train/generate -> TRACE) below the evaluation harness.

Every module under src/sctrace is parsed with ``ast`` (imports inside functions and ``importlib.import_module``
with a literal name count too), so an upward import fails here before anyone has to read for it.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "sctrace"

# importer (a module or a package and everything under it) -> the modules and packages it must not import.
FORBIDDEN = {
    "sctrace": ("sctrace.harness",),  # the method never imports the harness (exceptions in ALLOWED)
    "sctrace.data": ("sctrace.model", "sctrace.estimator", "sctrace.train", "sctrace.generate"),
    "sctrace.model": ("sctrace.estimator", "sctrace.train", "sctrace.generate"),
}

# (importer, forbidden) pairs a rule leaves out, and where the import may stand: "anywhere" or "in a function"
# (the module imports it lazily, so importing the module does not load the harness).
ALLOWED = {
    # The harness sits on top of the method and may import any of it, and itself.
    ("sctrace.harness", "sctrace.harness"): "anywhere",
    # The CLI is the top layer: `benchmark`, `protocol`, `evaluate`, `plot`, `analyze`, ... run the harness, and
    # `prepare` prints the harness's corpus summary; each command imports what it needs.
    ("sctrace.cli", "sctrace.harness"): "in a function",
    ("sctrace.cli_harness", "sctrace.harness"): "in a function",
    # The demo is a small benchmark: TRACE next to the floors, scored by the harness's metrics into a table.
    ("sctrace.demo", "sctrace.harness"): "anywhere",
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, inside a function) for every import of ``path``, relative ones resolved."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((alias.name, child.lineno, in_function) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                # `from sctrace import harness` imports sctrace.harness.
                found.extend((f"{base}.{alias.name}", child.lineno, in_function) for alias in child.names)
            elif (isinstance(child, ast.Call) and getattr(child.func, "attr", getattr(child.func, "id", None)) == "import_module"
                  and child.args and isinstance(child.args[0], ast.Constant) and isinstance(child.args[0].value, str)):
                found.append((child.args[0].value, child.lineno, in_function))
            visit(child, nested)

    visit(ast.parse(path.read_text(), filename=str(path)), False)
    return found


def _violations(path: Path) -> list[str]:
    module = _module_name(path)
    problems = []
    for imported, line, in_function in _imports(path):
        for importer, forbidden in FORBIDDEN.items():
            if not _within(module, importer):
                continue
            for target in forbidden:
                if not _within(imported, target):
                    continue
                allowed = next((where for (who, what), where in ALLOWED.items()
                                if _within(module, who) and what == target), None)
                if allowed == "anywhere" or (allowed == "in a function" and in_function):
                    continue
                where = " at module level" if allowed == "in a function" else ""
                problems.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {module} imports {imported}{where} "
                                f"(rule: {importer} must not import {target})")
    return problems


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_is_parsed():
    names = {_module_name(path) for path in MODULES}
    assert {"sctrace.cli", "sctrace.data.corpus", "sctrace.model.module", "sctrace.harness.metrics"} <= names


@pytest.mark.parametrize("path", MODULES, ids=lambda path: _module_name(path))
def test_no_upward_import(path):
    assert _violations(path) == []


def test_the_rules_see_lazy_and_relative_imports(tmp_path, monkeypatch):
    fake = tmp_path / "sctrace"
    (fake / "data").mkdir(parents=True)
    (fake / "cli.py").write_text("from sctrace.harness.metrics import score\n")
    (fake / "data" / "io.py").write_text("def f():\n    from ..model import module\n")
    (fake / "data" / "corpus.py").write_text("import importlib\nimportlib.import_module('sctrace.harness.metrics')\n")
    monkeypatch.setitem(globals(), "PACKAGE", fake)
    assert len(_violations(fake / "cli.py")) == 1  # the CLI may import the harness, but only inside a command
    assert len(_violations(fake / "data" / "io.py")) == 1
    assert len(_violations(fake / "data" / "corpus.py")) == 1
