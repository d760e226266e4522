"""The architecture page and the package docstrings stay true to the code."""

from __future__ import annotations

import ast
import re

from tests.conftest import REPO
from usersegments.stages import STAGES

LIB = REPO / "lib" / "usersegments"
ARCHITECTURE = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")


def test_architecture_names_every_module_and_package():
    missing = []
    for path in sorted(LIB.iterdir()):
        if path.name.startswith(("_", ".")) and path.name not in ("__init__.py", "__main__.py"):
            continue
        if path.is_dir() and (path / "__init__.py").exists():
            if f"{path.name}/" not in ARCHITECTURE:
                missing.append(f"{path.name}/")
        elif path.suffix == ".py" and path.name not in ARCHITECTURE:
            missing.append(path.name)
    assert not missing, f"docs/architecture.md does not mention {missing}"


def test_every_package_docstring_lists_its_modules():
    for init in sorted(LIB.glob("*/__init__.py")):
        docstring = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))) or ""
        modules = [p.stem for p in init.parent.glob("*.py") if not p.name.startswith("_")]
        unlisted = [m for m in modules if not re.search(rf"\b{m}\b", docstring)]
        assert not unlisted, f"{init.relative_to(REPO)} docstring does not list {unlisted}"


def test_architecture_lists_every_registered_stage():
    rows = {line.split("|")[1].strip() for line in ARCHITECTURE.splitlines() if line[:2] == "| "}
    assert {stage.name for stage in STAGES} <= rows
