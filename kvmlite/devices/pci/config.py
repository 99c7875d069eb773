"""A PCI type 0 configuration header (PCI Local Bus 3.0 §6.1-§6.7).

The 256 bytes are stored as they read; a parallel write mask says which bits
the driver may change, so BAR sizing comes for free: writing all-ones to a
BAR whose low ``log2(size)`` address bits are read-only reads back
``~(size - 1) | flags`` (§6.2.5.1).

Snapshots: :meth:`PciConfigSpace.save_state` keeps the 256 bytes as they
read (BAR addresses, command register, interrupt line, capability
registers).  The write masks, BAR layout and capability list are built by
the device model, so they are not saved; a restore checks instead that
every read-only bit of the saved bytes equals this function's (the same
device, built the same way), except in the status register, which the
device itself drives.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from kvmlite.base.state import Reader, StateError, pack_bytes

CONFIG_SPACE_SIZE = 256

# §6.1: header registers
VENDOR_ID = 0x00
DEVICE_ID = 0x02
COMMAND = 0x04
STATUS = 0x06
REVISION_ID = 0x08
CLASS_PROG = 0x09
CLASS_DEVICE = 0x0A
CACHE_LINE_SIZE = 0x0C
HEADER_TYPE = 0x0E
BAR0 = 0x10
BAR_COUNT = 6
SUBSYSTEM_VENDOR_ID = 0x2C
SUBSYSTEM_ID = 0x2E
CAPABILITY_LIST = 0x34
INTERRUPT_LINE = 0x3C
INTERRUPT_PIN = 0x3D
CAPABILITY_START = 0x40

# §6.2.2: command register
COMMAND_IO = 1 << 0
COMMAND_MEMORY = 1 << 1
COMMAND_MASTER = 1 << 2
COMMAND_INTX_DISABLE = 1 << 10
COMMAND_WRITABLE = COMMAND_IO | COMMAND_MEMORY | COMMAND_MASTER | COMMAND_INTX_DISABLE

# §6.2.3: status register
STATUS_INTERRUPT = 1 << 3
STATUS_CAP_LIST = 1 << 4

# §6.2.5.1: BAR low bits
BAR_IO_SPACE = 0x1
BAR_MEM_TYPE_64 = 0x4
BAR_MEM_PREFETCH = 0x8

# §6.7 and appendix H: capability IDs
CAP_ID_MSI = 0x05
CAP_ID_VENDOR = 0x09
CAP_ID_MSIX = 0x11

INTERRUPT_PIN_INTA = 1


class PciConfigError(ValueError):
    """A device model built an impossible header (a VMM bug, not a guest one)."""


@dataclass(frozen=True)
class PciIds:
    """The identity a function shows in its header (§6.2.1)."""

    vendor_id: int
    device_id: int
    class_code: int          # base class << 16 | subclass << 8 | programming interface
    revision: int = 0
    subsystem_vendor_id: int = 0
    subsystem_id: int = 0


class BarKind(Enum):
    IO = "io"
    MEM32 = "mem32"
    MEM64 = "mem64"


@dataclass(frozen=True)
class Bar:
    """One base address register; a MEM64 BAR also takes slot ``index + 1``."""

    index: int
    size: int
    kind: BarKind
    prefetchable: bool = False

    @property
    def is_io(self) -> bool:
        return self.kind is BarKind.IO

    @property
    def flags(self) -> int:
        if self.is_io:
            return BAR_IO_SPACE
        return (BAR_MEM_TYPE_64 if self.kind is BarKind.MEM64 else 0) | (
            BAR_MEM_PREFETCH if self.prefetchable else 0)

    def validate(self) -> None:
        minimum = 4 if self.is_io else 16
        top = self.index + (2 if self.kind is BarKind.MEM64 else 1)
        if self.size < minimum or self.size & (self.size - 1) or top > BAR_COUNT:
            raise PciConfigError(f"BAR {self.index}: bad size {self.size:#x} or index")
        if self.is_io and self.size > 256:
            raise PciConfigError(f"BAR {self.index}: I/O BAR larger than 256 bytes")


class PciConfigSpace:
    """The header plus capabilities of one function, with write masks."""

    def __init__(self, ids: PciIds, header_type: int = 0) -> None:
        self._bytes = bytearray(CONFIG_SPACE_SIZE)
        self._wmask = bytearray(CONFIG_SPACE_SIZE)
        self.bars: dict[int, Bar] = {}
        self._caps: list[tuple[int, int]] = []       # (id, offset)
        self._next_cap = CAPABILITY_START
        self._init_header(ids, header_type)

    def _init_header(self, ids: PciIds, header_type: int) -> None:
        self.set_u16(VENDOR_ID, ids.vendor_id)
        self.set_u16(DEVICE_ID, ids.device_id)
        self.set_u8(REVISION_ID, ids.revision)
        self.set_u8(CLASS_PROG, ids.class_code & 0xFF)
        self.set_u16(CLASS_DEVICE, ids.class_code >> 8)
        self.set_u8(HEADER_TYPE, header_type)
        self.set_u16(SUBSYSTEM_VENDOR_ID, ids.subsystem_vendor_id)
        self.set_u16(SUBSYSTEM_ID, ids.subsystem_id)
        self.set_writable(COMMAND, COMMAND_WRITABLE, 2)
        self.set_writable(CACHE_LINE_SIZE, 0xFF, 1)
        self.set_writable(INTERRUPT_LINE, 0xFF, 1)

    # --- raw access (device side: ignores the write mask) ---

    def read(self, reg: int, length: int) -> bytes:
        return bytes(self._bytes[reg:reg + length])

    def u8(self, reg: int) -> int:
        return self._bytes[reg]

    def u16(self, reg: int) -> int:
        return int.from_bytes(self._bytes[reg:reg + 2], "little")

    def u32(self, reg: int) -> int:
        return int.from_bytes(self._bytes[reg:reg + 4], "little")

    def set_u8(self, reg: int, value: int) -> None:
        self._bytes[reg] = value & 0xFF

    def set_u16(self, reg: int, value: int) -> None:
        self._bytes[reg:reg + 2] = (value & 0xFFFF).to_bytes(2, "little")

    def set_u32(self, reg: int, value: int) -> None:
        self._bytes[reg:reg + 4] = (value & 0xFFFF_FFFF).to_bytes(4, "little")

    def set_writable(self, reg: int, mask: int, length: int) -> None:
        self._wmask[reg:reg + length] = mask.to_bytes(length, "little")

    # --- snapshots ---

    def save_state(self) -> dict:
        return {"bytes": pack_bytes(self._bytes)}

    def restore_state(self, state: dict, part: str = "pci config") -> None:
        """Load :meth:`save_state`'s bytes (all checked first).  Only the bytes:
        whoever maps the BARs must then re-read them (``PciFunction.restore_state`` does)."""
        saved = Reader(state, part).bytes("bytes", CONFIG_SPACE_SIZE)
        for at in range(CONFIG_SPACE_SIZE):
            if at in (STATUS, STATUS + 1):
                continue                         # device-driven (interrupt status, §6.2.3)
            fixed = ~self._wmask[at] & 0xFF
            ours, theirs = self._bytes[at] & fixed, saved[at] & fixed
            if ours != theirs:
                raise StateError(f"{part}: read-only bits of register {at:#04x} are {theirs:#04x}, this "
                                 f"function's are {ours:#04x} (saved from another device or configuration)")
        self._bytes = bytearray(saved)

    # --- guest access ---

    def write(self, reg: int, data: bytes) -> None:
        """A driver write: only bits set in the write mask change."""
        for i, value in enumerate(data):
            at = reg + i
            if at >= CONFIG_SPACE_SIZE:
                break
            mask = self._wmask[at]
            self._bytes[at] = (self._bytes[at] & ~mask) | (value & mask)

    @property
    def command(self) -> int:
        return self.u16(COMMAND)

    def set_status_bits(self, bits: int, on: bool) -> None:
        status = self.u16(STATUS)
        self.set_u16(STATUS, status | bits if on else status & ~bits)

    # --- BARs (§6.2.5) ---

    def add_bar(self, bar: Bar) -> None:
        bar.validate()
        slots = [bar.index] + ([bar.index + 1] if bar.kind is BarKind.MEM64 else [])
        taken = {i for b in self.bars.values() for i in self._bar_slots(b)}
        if taken & set(slots):
            raise PciConfigError(f"BAR {bar.index} overlaps another BAR")
        self.bars[bar.index] = bar
        reg = BAR0 + 4 * bar.index
        flag_bits = 0x3 if bar.is_io else 0xF
        address_mask = ~(bar.size - 1)           # the low log2(size) bits read as zero
        self.set_u32(reg, bar.flags)
        self.set_writable(reg, address_mask & ~flag_bits & 0xFFFF_FFFF, 4)
        if bar.kind is BarKind.MEM64:
            self.set_writable(reg + 4, (address_mask >> 32) & 0xFFFF_FFFF, 4)

    @staticmethod
    def _bar_slots(bar: Bar) -> list[int]:
        return [bar.index] + ([bar.index + 1] if bar.kind is BarKind.MEM64 else [])

    def bar_address(self, index: int) -> int:
        bar = self.bars[index]
        reg = BAR0 + 4 * index
        low = self.u32(reg) & (~0x3 if bar.is_io else ~0xF)
        high = self.u32(reg + 4) if bar.kind is BarKind.MEM64 else 0
        return (high << 32) | (low & 0xFFFF_FFFF)

    def set_bar_address(self, index: int, address: int) -> None:
        """What firmware does before the OS boots: place BAR ``index``."""
        bar = self.bars[index]
        if address & (bar.size - 1):
            raise PciConfigError(f"BAR {index}: {address:#x} not aligned to {bar.size:#x}")
        reg = BAR0 + 4 * index
        self.set_u32(reg, (address & 0xFFFF_FFFF) | bar.flags)
        if bar.kind is BarKind.MEM64:
            self.set_u32(reg + 4, address >> 32)

    def decoded_bars(self) -> dict[int, int]:
        """BAR index -> address, for BARs the command register lets decode.

        A BAR at address 0 is treated as unassigned and not decoded."""
        out: dict[int, int] = {}
        command = self.command
        for index, bar in self.bars.items():
            enabled = command & (COMMAND_IO if bar.is_io else COMMAND_MEMORY)
            address = self.bar_address(index)
            if enabled and address:
                out[index] = address
        return out

    # --- capabilities (§6.7) ---

    def add_capability(self, cap_id: int, body: bytes, writable: bytes | None = None) -> int:
        """Append a capability: ``body`` is everything after the ID and next
        pointer; ``writable`` its write mask (default read-only).  Returns
        the capability's offset."""
        offset = self._next_cap
        end = offset + 2 + len(body)
        if end > CONFIG_SPACE_SIZE:
            raise PciConfigError(f"no room for capability {cap_id:#x}")
        self._bytes[offset] = cap_id
        self._bytes[offset + 2:end] = body
        if writable is not None:
            self._wmask[offset + 2:offset + 2 + len(writable)] = writable
        if self._caps:
            self._bytes[self._caps[-1][1] + 1] = offset
        else:
            self.set_u8(CAPABILITY_LIST, offset)
            self.set_status_bits(STATUS_CAP_LIST, True)
        self._caps.append((cap_id, offset))
        self._next_cap = (end + 3) & ~3
        return offset

    def capabilities(self) -> list[tuple[int, int]]:
        return list(self._caps)
