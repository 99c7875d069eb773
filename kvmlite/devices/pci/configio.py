"""Configuration mechanism #1 (PCI Local Bus 3.0 §3.2.2.3.2): ports
0xCF8-0xCFF.

CONFIG_ADDRESS at 0xCF8 is a 32-bit register, written and read only as a
whole dword: bit 31 enable, bits 23:16 bus, 15:11 device, 10:8 function,
7:2 register.  CONFIG_DATA at 0xCFC-0xCFF reads or writes that register;
a byte or word access at 0xCFC + n reaches register + n.  Bits 27:24 (AMD's
extended register number) select registers past 255, which kvmlite does
not have: such accesses read all-ones.

Linux's probe (arch/x86/pci/direct.c) writes a byte to 0xCFB, then checks
that 0x80000000 written to 0xCF8 reads back; byte and word accesses to
0xCF8-0xCFB are therefore ignored (reads return all-ones), which also makes
the configuration mechanism #2 probe fail as it should.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kvmlite.devices.pci.root import PciRoot

log = logging.getLogger(__name__)

ENABLE = 1 << 31
ADDRESS_MASK = 0x8FFF_FFFC       # enable, extended register, bus, device, function, register


class PciConfigIo:
    """The 8-port bus device at 0xCF8 forwarding to a :class:`PciRoot`."""

    LENGTH = 8

    def __init__(self, root: "PciRoot") -> None:
        self.root = root
        self.address = 0

    def read(self, offset: int, data: memoryview) -> None:
        if offset >= 4:
            self._data_access(offset - 4, data, None)
        elif offset == 0 and len(data) == 4:
            data[:] = self.address.to_bytes(4, "little")
        else:
            data[:] = b"\xff" * len(data)

    def write(self, offset: int, data: bytes) -> None:
        if offset >= 4:
            self._data_access(offset - 4, None, data)
        elif offset == 0 and len(data) == 4:
            self.address = int.from_bytes(data, "little") & ADDRESS_MASK
        else:
            log.debug("pci-config: ignored %d-byte write at %#x", len(data), 0xCF8 + offset)

    def _data_access(self, offset: int, out: memoryview | None, data: bytes | None) -> None:
        length = len(out) if out is not None else len(data or b"")
        target = self._target(offset, length)
        if target is None:
            if out is not None:
                out[:] = b"\xff" * length
            return
        bus, slot, fn, reg = target
        if out is not None:
            self.root.config_read(bus, slot, fn, reg, out)
        else:
            self.root.config_write(bus, slot, fn, reg, data or b"")

    def _target(self, offset: int, length: int) -> tuple[int, int, int, int] | None:
        a = self.address
        if not a & ENABLE or (a >> 24) & 0xF or offset + length > 4 or length not in (1, 2, 4):
            return None
        return (a >> 16) & 0xFF, (a >> 11) & 0x1F, (a >> 8) & 0x7, (a & 0xFC) + offset
