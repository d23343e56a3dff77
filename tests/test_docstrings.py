"""Public API documentation rules: every public function, class and method in the package has a
docstring, and a public function that raises an exception itself documents it in `Raises:`."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "metauas"

Definition = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef


def _public_modules() -> list[Path]:
    """Every module of the package whose dotted name has no private (_x) part."""
    modules = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        if not any(p.startswith("_") and p != "__init__" for p in parts):
            modules.append(path)
    return modules


def _public_definitions(tree: ast.Module) -> list[tuple[str, Definition]]:
    """(qualified name, node) of public top-level functions/classes and the public methods of
    public classes (nested classes included); functions defined inside functions are not API."""
    found: list[tuple[str, Definition]] = []

    def visit(body: list[ast.stmt], prefix: str) -> None:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                found.append((prefix + node.name, node))
                if isinstance(node, ast.ClassDef):
                    visit(node.body, f"{prefix}{node.name}.")

    visit(tree.body, "")
    return found


def _own_raises(node: ast.FunctionDef | ast.AsyncFunctionDef) -> list[ast.Raise]:
    """`raise` statements of the function's own body (not of functions or classes defined in it,
    which raise when they are called, e.g. a web route defined inside `create_app`)."""
    raises: list[ast.Raise] = []
    stack: list[ast.AST] = list(node.body)
    while stack:
        item = stack.pop()
        if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        if isinstance(item, ast.Raise):
            raises.append(item)
        stack.extend(ast.iter_child_nodes(item))
    return raises


def documentation_problems(source: str, where: str = "<source>") -> list[str]:
    """Public definitions of `source` without a docstring, and public functions with a raise
    statement of their own but no `Raises:` section."""
    problems = []
    for name, node in _public_definitions(ast.parse(source)):
        doc = ast.get_docstring(node) or ""
        if not doc.strip():
            problems.append(f"{where}::{name}: no docstring")
        elif not isinstance(node, ast.ClassDef) and _own_raises(node) and "Raises:" not in doc:
            problems.append(f"{where}::{name}: raises but has no Raises: section")
    return problems


def test_the_checker_finds_missing_docstrings_and_raises_sections():
    source = '''
class Documented:
    """A class."""

    def method(self):
        return 1

    def _private(self):
        return 2


def raises_without_section(x):
    """Checks x."""
    if x:
        raise ValueError(x)


def raises_documented(x):
    """Checks x.

    Raises:
        ValueError: x is true.
    """
    if x:
        raise ValueError(x)


def builds_a_route():
    """The raise belongs to the inner function."""
    def route():
        raise KeyError
    return route


def _private_helper():
    raise RuntimeError
'''
    assert documentation_problems(source) == ["<source>::Documented.method: no docstring",
                                              "<source>::raises_without_section: raises but has no Raises: section"]


def test_every_public_definition_has_a_docstring():
    modules = _public_modules()
    assert len(modules) > 60  # the walk sees the package
    count = sum(len(_public_definitions(ast.parse(p.read_text()))) for p in modules)
    assert count > 400
    problems = [problem for path in modules
                for problem in documentation_problems(path.read_text(), str(path.relative_to(SRC)))
                if problem.endswith("no docstring")]
    assert problems == []


def test_public_functions_that_raise_document_it():
    problems = [problem for path in _public_modules()
                for problem in documentation_problems(path.read_text(), str(path.relative_to(SRC)))
                if problem.endswith("Raises: section")]
    assert problems == []
