"""Enhanced configuration access (PCI Express Base 4.0 §7.2.2): each
function's configuration space memory-mapped at
``base + (bus << 20 | device << 15 | function << 12 | register)``.

Only the first 256 bytes exist; extended registers (256-4095) of a present
function read as zero, which a driver reads as "no extended capabilities".
Needs an ACPI MCFG table to be found by Linux.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kvmlite.devices.pci.root import PciRoot

BUS_SIZE = 1 << 20


class PciEcam:
    """A bus device covering ``BUS_SIZE`` bytes per decoded bus (bus 0 only)."""

    LENGTH = BUS_SIZE

    def __init__(self, root: "PciRoot") -> None:
        self.root = root

    @staticmethod
    def _decode(offset: int, length: int) -> tuple[int, int, int, int] | None:
        if length not in (1, 2, 4) or offset % length:
            return None
        return offset >> 20, (offset >> 15) & 0x1F, (offset >> 12) & 0x7, offset & 0xFFF

    def read(self, offset: int, data: memoryview) -> None:
        target = self._decode(offset, len(data))
        if target is None:
            data[:] = b"\xff" * len(data)
            return
        bus, slot, fn, reg = target
        if reg >= 256:
            probe = memoryview(bytearray(2))
            self.root.config_read(bus, slot, fn, 0, probe)
            data[:] = (b"\xff" if bytes(probe) == b"\xff\xff" else b"\x00") * len(data)
            return
        self.root.config_read(bus, slot, fn, reg, data)

    def write(self, offset: int, data: bytes) -> None:
        target = self._decode(offset, len(data))
        if target is not None and target[3] < 256:
            self.root.config_write(*target, data)
