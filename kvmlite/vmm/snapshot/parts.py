"""Which parts of a VM's device model a snapshot saves, by name.

The names are the keys of the state file's ``devices`` object; a restore
looks each up again in a VM built from the same configuration, so the
order and naming here must stay stable across kvmlite versions of one
snapshot format."""

from __future__ import annotations

from typing import Any


def device_parts(devices: Any) -> list[tuple[str, Any]]:
    """(name, part) for every device model of a :class:`~kvmlite.vmm.devices.DeviceManager`.

    virtio devices on PCI are saved with the PCI bus (their transport is a
    PCI function); those on virtio-mmio by their own name."""
    from kvmlite.devices.pci.function import PciFunction

    parts: list[tuple[str, Any]] = [(f"com{i + 1}", uart) for i, uart in enumerate(devices.serial)]
    for name in ("i8042", "rtc", "acpi_pm", "port92"):
        part = getattr(devices, name)
        if part is not None:
            parts.append((name.replace("_", "-"), part))
    if devices.pci is not None:
        parts.append(("pci", devices.pci))
    for name, _device, transport in devices.virtio:
        if not isinstance(transport, PciFunction):
            parts.append((name, transport))
    return parts
