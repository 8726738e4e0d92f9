"""The layers of docs/architecture.md, held to the code: which package imports which."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).parent.parent / "src" / "rsthound"
FORBIDDEN = {
    "formats": ("sources", "observe", "analyze", "report", "sinks", "commands", "cli"),
    "analyze": ("sources", "observe", "report", "sinks", "commands", "cli"),
    "report": ("sources", "observe", "sinks", "commands", "cli"),
    "sinks": ("sources", "observe", "commands", "cli"),
    "sources": ("observe", "analyze", "report", "sinks", "commands", "cli"),
    "observe": ("commands", "cli"),
    "model": ("formats", "sources", "observe", "analyze", "report", "sinks", "commands"),
    "textforms": ("formats", "sources", "observe", "analyze", "report", "sinks", "commands"),
}


def imports(path: Path) -> set[str]:
    """The rsthound packages a module imports (at any depth of its code)."""
    got = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for n in names:
            parts = n.split(".")
            if parts[0] == "rsthound" and len(parts) > 1:
                got.add(parts[1])
    return got


def modules(layer: str) -> list[Path]:
    d = SRC / layer
    return sorted(d.rglob("*.py")) if d.is_dir() else [SRC / f"{layer}.py"]


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_only_what_it_may(layer):
    bad = [f"{p.relative_to(SRC)} imports rsthound.{x}" for p in modules(layer)
           for x in sorted(imports(p) & set(FORBIDDEN[layer]))]
    assert not bad, bad


def test_the_check_sees_a_forbidden_import(tmp_path):
    p = tmp_path / "m.py"
    p.write_text("def f():\n    from rsthound.sources.procfs import CounterReader\n")
    assert imports(p) == {"sources"}


def test_cli_is_the_parser_and_the_dispatch_only():
    assert len((SRC / "cli.py").read_text().splitlines()) < 300


def test_commands_do_not_import_cli():
    assert not [p for p in modules("commands") if "cli" in imports(p)]
