"""The agent runs in the guest with nothing but the host's python3: every
module of kvmlite/agent imports the standard library and kvmlite.agent only,
and the package's parent (kvmlite/__init__.py, run first) imports nothing at
import time (its public names load lazily).
Imports are read with ``ast``, so one inside a function or under
TYPE_CHECKING counts too."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

from .conftest import REPO

AGENT = REPO / "kvmlite" / "agent"


def imports(path: Path) -> set[str]:
    """Absolute module names ``path`` imports (relative ones under kvmlite.agent)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add("kvmlite.agent" if node.level else node.module or "")
    return names


def test_agent_imports_only_stdlib_and_itself() -> None:
    bad = []
    for path in sorted(AGENT.glob("*.py")):
        for name in sorted(imports(path)):
            top = name.split(".")[0]
            if name == "kvmlite.agent" or name.startswith("kvmlite.agent."):
                continue
            if top not in sys.stdlib_module_names:
                bad.append(f"{path.name} imports {name}")
    assert bad == []


def test_kvmlite_package_init_imports_only_importlib_lazily() -> None:
    """The package's names (Sandbox, Vm, ...) load their modules on first
    use, through importlib inside ``__getattr__``; nothing else is imported."""
    assert imports(REPO / "kvmlite" / "__init__.py") == {"importlib"}


def test_importing_the_agent_loads_no_other_kvmlite_module() -> None:
    code = ("import json, sys, kvmlite.agent.server, kvmlite.agent.client; "
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('kvmlite'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout
    loaded = json.loads(out)
    assert [m for m in loaded if m != "kvmlite" and not m.startswith("kvmlite.agent")] == []
