"""A small PCI function for the root tests: three BARs (64-bit memory,
32-bit memory, I/O) that record what reaches them."""

from __future__ import annotations

from kvmlite.devices.pci.config import Bar, BarKind, PciIds
from kvmlite.devices.pci.function import PciFunction

SAMPLE_IDS = PciIds(vendor_id=0x1234, device_id=0x5678, class_code=0xFF0000)


class SampleFunction(PciFunction):
    def __init__(self, name: str = "sample") -> None:
        super().__init__(SAMPLE_IDS, name)
        self.config.add_bar(Bar(0, 0x4000, BarKind.MEM64))
        self.config.add_bar(Bar(2, 0x1000, BarKind.MEM32))
        self.config.add_bar(Bar(3, 0x20, BarKind.IO))
        self.writes: list[tuple[int, int, bytes]] = []
        self.moves: list[tuple[int, int | None]] = []

    def bar_read(self, index: int, offset: int, data: memoryview) -> None:
        assert self.lock.locked(), "BAR access without the function lock"
        data[:] = bytes([index * 16 + offset % 16] * len(data))

    def bar_write(self, index: int, offset: int, data: bytes) -> None:
        assert self.lock.locked(), "BAR access without the function lock"
        self.writes.append((index, offset, data))

    def bar_mapped(self, index: int, address: int | None) -> None:
        self.moves.append((index, address))
