"""kvmlite.net sits beneath the devices: it imports nothing from the
devices, the VMM, the control socket or the CLI (only kvmlite.errors,
kvmlite.paths and itself), so the device model can be handed a backend
without the two knowing each other's modules."""

from __future__ import annotations

from tests.unit.test_layers import PACKAGE, imported_modules

ALLOWED = ("kvmlite.errors", "kvmlite.paths", "kvmlite.net")


def test_layers_net_imports_only_errors_paths_and_itself() -> None:
    bad = []
    for path in sorted((PACKAGE / "net").rglob("*.py")):
        for name in sorted(imported_modules(path)):
            if name == "kvmlite" or not name.startswith("kvmlite"):
                continue
            if not any(name == a or name.startswith(a + ".") for a in ALLOWED):
                bad.append(f"{path.relative_to(PACKAGE.parent)} imports {name}")
    assert bad == []


def test_layers_nothing_beneath_imports_net() -> None:
    bad = []
    for layer in ("kvm", "base", "devices", "arch", "loader"):
        for path in sorted((PACKAGE / layer).rglob("*.py")):
            if any(n == "kvmlite.net" or n.startswith("kvmlite.net.") for n in imported_modules(path)):
                bad.append(str(path.relative_to(PACKAGE.parent)))
    assert bad == []
