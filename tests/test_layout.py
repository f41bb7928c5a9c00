"""The house rules of #16, read from the source: every module says its room in its first
docstring line, has its test file at the mirrored path under ``tests/``, stays under
~400 lines, and a function over 60 lines says why in a ``# long:`` comment."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.paths import REPO, TESTS

PACKAGES = ("pixmo", "pipelines", "molmo")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
MODULES = sorted(p.relative_to(REPO) for package in PACKAGES
                 for p in (REPO / package).rglob("*.py"))
TESTED = [m for m in MODULES if m.name not in ("__init__.py", "__main__.py")]


def test_the_walk_finds_the_packages():
    assert Path("pixmo/dataset/shards.py") in MODULES or Path("pixmo/dataset/reader.py") in MODULES
    assert Path("molmo/train/loop.py") in TESTED


@pytest.mark.parametrize("module", TESTED, ids=str)
def test_every_module_has_its_test_file(module):
    assert (TESTS / module.parent / f"test_{module.name}").is_file()


@pytest.mark.parametrize("module", MODULES, ids=str)
def test_every_module_states_its_room(module):
    doc = ast.get_docstring(ast.parse((REPO / module).read_text()))
    assert doc and doc.splitlines()[0].strip()


@pytest.mark.parametrize("module", MODULES, ids=str)
def test_no_module_is_long(module):
    assert (REPO / module).read_text().count("\n") <= MAX_MODULE_LINES


def long_functions(source: str) -> list[str]:
    """Functions over the limit whose source has no ``# long:`` comment saying why."""
    lines = source.splitlines()
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body = lines[node.lineno - 1:node.end_lineno]
            if len(body) > MAX_FUNCTION_LINES and not any(
                    line.strip().startswith("# long:") for line in body):
                found.append(node.name)
    return found


def test_a_long_function_is_found_unless_it_says_why():
    def body(n: int) -> str:
        return "".join(f"    x{i} = {i}\n" for i in range(n))
    assert long_functions("def f():\n" + body(60)) == ["f"]
    assert long_functions("def f():\n    # long: one table\n" + body(60)) == []
    assert long_functions("def f():\n" + body(59)) == []


@pytest.mark.parametrize("module", MODULES, ids=str)
def test_no_function_is_long_without_a_reason(module):
    assert long_functions((REPO / module).read_text()) == []
