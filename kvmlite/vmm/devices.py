"""Which devices a VM has, where they sit, and how they are wired.

The device models know nothing of KVM; this module gives each its bus
range, interrupt line and backend, in the spirit of Firecracker's device
manager but kept small: one method per device family.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kvmlite.vmm.memory import GuestMemory
    from kvmlite.vmm.vm import Vm

log = logging.getLogger(__name__)


class DeviceManager:
    def __init__(self, vm: "Vm") -> None:
        self.vm = vm
        self._cmdline: list[str] = []

    def create(self) -> None:
        """Create and register every device (before any vCPU runs)."""

    def write_firmware_tables(self, memory: "GuestMemory") -> int | None:
        """Write ACPI and MP tables; return the RSDP address."""
        return None

    def cmdline_fragments(self) -> list[str]:
        return list(self._cmdline)

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def close(self) -> None:
        pass
