"""Helpers for devices whose registers sit in several separate port ranges.

The bus tells a device only the offset into the range that was hit, so a
device with two ranges (the i8042 at 0x60 and 0x64, the ACPI PM blocks)
registers one :class:`PortView` per range; each view forwards to the
device's method for that range.  The bus takes one lock per view, so the
device guards its shared state with its own lock.
"""

from __future__ import annotations

from typing import Callable

ReadFn = Callable[[int, memoryview], None]
WriteFn = Callable[[int, bytes], None]


class PortView:
    """A BusDevice forwarding to a pair of callables."""

    def __init__(self, name: str, length: int, read: ReadFn, write: WriteFn) -> None:
        self.name = name
        self.length = length        # how many ports to register
        self._read = read
        self._write = write

    def read(self, offset: int, data: memoryview) -> None:
        self._read(offset, data)

    def write(self, offset: int, data: bytes) -> None:
        self._write(offset, data)

    def __repr__(self) -> str:
        return f"PortView({self.name!r}, {self.length})"


def fill(data: memoryview, first: int, rest: int = 0xFF) -> None:
    """Answer a read of a one-byte register: ``first`` in byte 0 and
    ``rest`` in any further bytes of a wider access (they belong to ports
    beyond this register)."""
    if len(data):
        data[0] = first & 0xFF
        for i in range(1, len(data)):
            data[i] = rest
