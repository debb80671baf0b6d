"""The packages import downwards only: api ← render ← datastore ← tenant ← controller (and
dev, cli on top). A cycle between two of them is what made a step hard to add in one place."""

from __future__ import annotations

import ast
from pathlib import Path

import haku

ROOT = Path(haku.__file__).parent
# What each package may import of Haku's, besides itself.
ALLOWED = {
    "api": set(),
    "render": {"api"},
    "datastore": {"api", "render"},
    "tenant": {"api", "render"},
    "controller": {"api", "render", "datastore", "tenant", "errors"},
}


def haku_imports(path: Path) -> set[str]:
    """The top-level haku packages that ``path`` imports (``haku.X`` → X)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "haku" and len(parts) > 1:
                found.add(parts[1])
    return found


def test_packages_import_downwards_only() -> None:
    wrong = []
    for package, allowed in ALLOWED.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            for imported in haku_imports(path) - allowed - {package}:
                wrong.append(f"{path.relative_to(ROOT)} imports haku.{imported}")
    assert wrong == []


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("from haku.controller.runtime import Key\nimport haku.render.pki\n")
    assert haku_imports(module) == {"controller", "render"}
