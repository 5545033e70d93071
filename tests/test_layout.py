"""The layout's rules that import-linter does not check: no module imports another module's
private names (a name starting with one underscore) from our own packages."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

OURS = ("triggers", "thresholds", "pipeline_client", "pipelines")


def _private_imports(path: Path, base: Path = ROOT) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.split(".")[0] in OURS:
            found += [f"{path.relative_to(base)}: from {node.module} import {alias.name}"
                      for alias in node.names
                      if alias.name.startswith("_") and not alias.name.startswith("__")]
    return found


def test_no_module_imports_another_modules_private_names() -> None:
    sources = [ROOT / "main.py", *(p for package in OURS for p in (ROOT / package).rglob("*.py"))]
    assert len(sources) > 50
    found = [line for path in sources for line in _private_imports(path)]
    assert found == [], "\n".join(found)


def test_the_check_sees_a_private_import(tmp_path: Path) -> None:
    module = tmp_path / "probe.py"
    module.write_text("from triggers.ids import PUBLIC, _PATTERN\nfrom json import _x\n",
                      encoding="utf-8")
    assert _private_imports(module, tmp_path) == ["probe.py: from triggers.ids import _PATTERN"]
