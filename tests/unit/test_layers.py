"""The source tree reads top-down: every package imports only from the
layers beneath it (ARCHITECTURE.md, "Source tree").  The imports are read
from the source with ``ast``, so a ``TYPE_CHECKING`` import or one inside a
function counts as much as one at the top of a module."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "kvmlite"

# package -> the kvmlite packages it must never import
FORBIDDEN = {
    "base": ("kvm", "net", "devices", "vmm", "control", "cli", "guest"),
    "kvm": ("base", "net", "devices", "vmm", "control", "cli", "guest"),
    "net": ("kvm", "base", "devices", "vmm", "control", "cli", "guest", "arch", "loader"),
    "loader": ("net", "devices", "vmm", "control", "cli"),
    "arch": ("net", "devices", "vmm", "control", "cli"),
    "devices": ("kvm", "net", "vmm", "control", "cli"),
    "vmm": ("cli",),
}


def imported_modules(path: Path) -> set[str]:
    """Absolute names of the modules ``path`` imports (relative imports resolved)."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    if path.name == "__init__.py":
        module = package
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def upward_imports(layer: str) -> list[str]:
    bad = []
    forbidden = tuple(f"kvmlite.{name}" for name in FORBIDDEN[layer])
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        for name in sorted(imported_modules(path)):
            if name in forbidden or name.startswith(tuple(f + "." for f in forbidden)):
                bad.append(f"{path.relative_to(PACKAGE.parent)} imports {name}")
    return bad


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layers_imports_point_down(layer: str) -> None:
    assert upward_imports(layer) == []


def test_layers_walker_finds_an_upward_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "kvmlite"
    (fake / "devices" / "virtio").mkdir(parents=True)
    (fake / "devices" / "virtio" / "net.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from ...vmm.memory import GuestMemory\n"
        "def f():\n    import kvmlite.vmm.vm\n"
        "from kvmlite.base import memory\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    found = upward_imports("devices")
    assert found == ["kvmlite/devices/virtio/net.py imports kvmlite.vmm.memory",
                     "kvmlite/devices/virtio/net.py imports kvmlite.vmm.memory.GuestMemory",
                     "kvmlite/devices/virtio/net.py imports kvmlite.vmm.vm"]
