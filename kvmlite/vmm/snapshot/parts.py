"""Which parts of a VM's device model a snapshot saves, by name.

The names are the keys of the state file's ``devices`` object; a restore
looks each up again in a VM built from the same configuration, so the
order and naming here must stay stable across kvmlite versions of one
snapshot format."""

from __future__ import annotations

from typing import Any


def device_parts(devices: Any) -> list[tuple[str, Any]]:
    """(name, part) for every device model of a :class:`~kvmlite.vmm.devices.DeviceManager`.

    The PCI root saves its CONFIG_ADDRESS latch, the host bridge its
    configuration space; each virtio device is saved through its transport
    (on PCI that is the function: configuration space, MSI-X table and the
    virtio part), by the device's name.  The exit port and the ignored ports
    hold nothing to save."""
    parts: list[tuple[str, Any]] = [(f"com{i + 1}", uart) for i, uart in enumerate(devices.serial)]
    for name in ("i8042", "rtc", "acpi_pm", "port92"):
        part = getattr(devices, name)
        if part is not None:
            parts.append((name.replace("_", "-"), part))
    if devices.pci is not None:
        parts.append(("pci", devices.pci))
        parts.append(("pci-hostbridge", dict(devices.pci.functions())[0]))
    parts += [(name, transport) for name, _device, transport in devices.virtio]
    return parts
