"""The guest side of PCI for unit tests: configuration mechanism #1 on a
real port :class:`Bus` and BAR accesses on a real MMIO :class:`Bus`, used
the way Linux's arch/x86/pci/direct.c and drivers/pci/probe.c use them.

Shared with the transport tests:
``from tests.unit.devices.pci.pciguest import PciGuest``.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvmlite.devices.bus import Bus

CONFIG_ADDRESS = 0xCF8
CONFIG_DATA = 0xCFC
COMMAND = 0x04
COMMAND_IO = 0x1
COMMAND_MEMORY = 0x2
COMMAND_MASTER = 0x4
CAPABILITY_LIST = 0x34
STATUS = 0x06
STATUS_CAP_LIST = 0x10


@dataclass(frozen=True)
class BarProbe:
    """What sizing BAR ``index`` found (drivers/pci/probe.c: __pci_read_base)."""

    index: int
    size: int
    is_io: bool
    is64: bool
    prefetchable: bool


class PciGuest:
    """Port and memory accessors plus the config-space walks Linux does."""

    def __init__(self, pio: Bus, mmio: Bus) -> None:
        self.pio = pio
        self.mmio = mmio

    # --- raw port and memory access ---

    def port_in(self, port: int, size: int) -> int:
        buf = bytearray(size)
        self.pio.read(port, memoryview(buf))
        return int.from_bytes(buf, "little")

    def port_out(self, port: int, size: int, value: int) -> None:
        self.pio.write(port, value.to_bytes(size, "little"))

    def mem_read(self, addr: int, size: int) -> int:
        buf = bytearray(size)
        self.mmio.read(addr, memoryview(buf))
        return int.from_bytes(buf, "little")

    def mem_write(self, addr: int, size: int, value: int) -> None:
        self.mmio.write(addr, value.to_bytes(size, "little"))

    # --- configuration mechanism #1 (PCI_CONF1_ADDRESS) ---

    @staticmethod
    def address(bus: int, slot: int, fn: int, reg: int) -> int:
        return 0x8000_0000 | bus << 16 | slot << 11 | fn << 8 | (reg & 0xFC)

    def cfg_read(self, slot: int, reg: int, size: int, *, bus: int = 0, fn: int = 0) -> int:
        self.port_out(CONFIG_ADDRESS, 4, self.address(bus, slot, fn, reg))
        return self.port_in(CONFIG_DATA + (reg & 3), size)

    def cfg_write(self, slot: int, reg: int, size: int, value: int, *, bus: int = 0,
                  fn: int = 0) -> None:
        self.port_out(CONFIG_ADDRESS, 4, self.address(bus, slot, fn, reg))
        self.port_out(CONFIG_DATA + (reg & 3), size, value)

    def probe_type1(self) -> bool:
        """arch/x86/pci/direct.c: pci_check_type1 + pci_sanity_check."""
        self.port_out(0xCFB, 1, 0x01)
        saved = self.port_in(CONFIG_ADDRESS, 4)
        self.port_out(CONFIG_ADDRESS, 4, 0x8000_0000)
        works = self.port_in(CONFIG_ADDRESS, 4) == 0x8000_0000
        self.port_out(CONFIG_ADDRESS, 4, saved)
        return works and self._sanity_check()

    def _sanity_check(self) -> bool:
        for devfn in range(256):
            slot, fn = devfn >> 3, devfn & 7
            if self.cfg_read(slot, 0x0A, 2, fn=fn) in (0x0600, 0x0300):
                return True
            if self.cfg_read(slot, 0x00, 2, fn=fn) in (0x8086, 0x0E11):
                return True
        return False

    def enumerate(self) -> list[int]:
        """Slots on bus 0 whose vendor ID is not all-ones."""
        return [slot for slot in range(32) if self.cfg_read(slot, 0x00, 2) != 0xFFFF]

    # --- BARs ---

    def size_bar(self, slot: int, index: int) -> BarProbe | None:
        """Size a BAR with decode disabled, restoring it after."""
        command = self.cfg_read(slot, COMMAND, 2)
        self.cfg_write(slot, COMMAND, 2, command & ~(COMMAND_IO | COMMAND_MEMORY))
        reg = 0x10 + 4 * index
        low = self.cfg_read(slot, reg, 4)
        self.cfg_write(slot, reg, 4, 0xFFFF_FFFF)
        low_mask = self.cfg_read(slot, reg, 4)
        self.cfg_write(slot, reg, 4, low)
        probe = self._decode_bar(slot, index, low, low_mask)
        self.cfg_write(slot, COMMAND, 2, command)
        return probe

    def _decode_bar(self, slot: int, index: int, low: int, mask: int) -> BarProbe | None:
        if mask == 0:
            return None
        if low & 1:
            return BarProbe(index, (~(mask & ~0x3) & 0xFFFF) + 1, True, False, False)
        is64 = (low >> 1) & 3 == 2
        size_mask = mask & ~0xF
        if is64:
            reg = 0x10 + 4 * (index + 1)
            high = self.cfg_read(slot, reg, 4)
            self.cfg_write(slot, reg, 4, 0xFFFF_FFFF)
            size_mask |= self.cfg_read(slot, reg, 4) << 32
            self.cfg_write(slot, reg, 4, high)
            size = (~size_mask & 0xFFFF_FFFF_FFFF_FFFF) + 1
        else:
            size = (~size_mask & 0xFFFF_FFFF) + 1
        return BarProbe(index, size, False, is64, bool(low & 0x8))

    def size_bars(self, slot: int) -> list[BarProbe]:
        """Size BARs 0-5 as pci_read_bases does, skipping a 64-bit BAR's upper half."""
        found, index = [], 0
        while index < 6:
            probe = self.size_bar(slot, index)
            if probe is not None:
                found.append(probe)
            index += 2 if probe is not None and probe.is64 else 1
        return found

    def bar_address(self, slot: int, index: int) -> int:
        low = self.cfg_read(slot, 0x10 + 4 * index, 4)
        if low & 1:
            return low & ~0x3
        address = low & ~0xF
        if (low >> 1) & 3 == 2:
            address |= self.cfg_read(slot, 0x10 + 4 * (index + 1), 4) << 32
        return address

    def set_bar(self, slot: int, index: int, address: int, is64: bool = True) -> None:
        self.cfg_write(slot, 0x10 + 4 * index, 4, address & 0xFFFF_FFFF)
        if is64:
            self.cfg_write(slot, 0x10 + 4 * (index + 1), 4, address >> 32)

    def enable(self, slot: int, bits: int = COMMAND_MEMORY | COMMAND_MASTER) -> None:
        """pci_enable_device + pci_set_master."""
        self.cfg_write(slot, COMMAND, 2, self.cfg_read(slot, COMMAND, 2) | bits)

    def disable(self, slot: int, bits: int = COMMAND_MEMORY | COMMAND_IO) -> None:
        self.cfg_write(slot, COMMAND, 2, self.cfg_read(slot, COMMAND, 2) & ~bits)

    # --- capabilities (drivers/pci/pci.c: __pci_find_next_cap_ttl) ---

    def capabilities(self, slot: int) -> list[tuple[int, int]]:
        """(cap ID, offset) in list order; at most 48 hops, as Linux does."""
        if not self.cfg_read(slot, STATUS, 2) & STATUS_CAP_LIST:
            return []
        caps = []
        pos = self.cfg_read(slot, CAPABILITY_LIST, 1) & ~3
        for _ in range(48):
            if pos < 0x40:
                break
            header = self.cfg_read(slot, pos, 2)
            caps.append((header & 0xFF, pos))
            pos = (header >> 8) & ~3
        return caps
