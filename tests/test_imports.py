"""The import graph points one way (../shared/DESIGN.md): ``pixmo/`` stages never
import an engine, no library module imports a command line, and the core never
imports the demo's code. Read from the source with ``ast``, function-level
imports included, so a lazy import cannot hide an edge."""

from __future__ import annotations

import ast

import pytest

from tests.paths import REPO

PACKAGES = ("pixmo", "pipelines", "molmo")
ENGINES = ("apache_beam", "ray", "pipelines")
COMMAND_LINES = ("pipelines.cli", "molmo.cli", "molmo.__main__")
DEMO = ("pixmo.synth", "pipelines.demo")
# the programs a user runs; they may reach any library module, the demo's included
ENTRY_POINTS = ("pipelines.cli", "pipelines.demo", "molmo.cli", "molmo.__main__")


def imports_of(source: str, package: str) -> set[str]:
    """Every module ``source`` imports, as absolute names, at any depth;
    ``package`` resolves its relative imports."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{anchor}.{base}" if base else anchor
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def graph() -> dict[str, set[str]]:
    out = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            is_init = parts[-1] == "__init__"
            name = ".".join(parts[:-1] if is_init else parts)
            out[name] = imports_of(path.read_text(), name if is_init else name.rsplit(".", 1)[0])
    return out


def under(name: str, roots: tuple[str, ...]) -> bool:
    return any(name == r or name.startswith(r + ".") for r in roots)


GRAPH = graph()


def test_the_graph_covers_every_package():
    assert {"pixmo.speech.transcribe", "pipelines.beam.graph", "molmo.train.loop",
            "pixmo.synth.raw"} <= set(GRAPH)
    assert "molmo.cli" in GRAPH["molmo.__main__"]


def test_lazy_and_relative_imports_are_edges():
    source = "def f():\n    from .cli import main\n    import ray.data\n"
    assert {"molmo.cli", "molmo.cli.main", "ray.data"} <= imports_of(source, "molmo")


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if under(m, ("pixmo",))))
def test_stages_never_import_an_engine(module):
    assert not {n for n in GRAPH[module] if under(n, ENGINES)}


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if m not in ENTRY_POINTS))
def test_libraries_never_import_a_command_line(module):
    assert not {n for n in GRAPH[module] if under(n, COMMAND_LINES)}


@pytest.mark.parametrize("module", sorted(m for m in GRAPH
                                          if m not in ENTRY_POINTS and not under(m, DEMO)))
def test_the_core_never_imports_demo_code(module):
    assert not {n for n in GRAPH[module] if under(n, DEMO)}
