"""MSI-X (PCI Local Bus 3.0 §6.8.2): the capability, the vector table and
the pending bit array, for a function that keeps both in one of its BARs.

Table entry ``i`` (16 bytes at ``16 * i``, §6.8.2.6-9): message address
low (bits 1:0 read as zero), message address high, message data, vector
control (bit 0: mask, set at reset).  A vector is *effectively masked*
while MSI-X is disabled, the function mask is set, or its own mask bit is
set; a trigger then sets its pending bit, and unmasking delivers it
(§6.8.3.5).  All table and PBA accesses must be aligned dwords or qwords;
others are ignored (reads return zero).

Threads: table and control accesses run under the function's lock;
:meth:`MsixCapability.trigger` may run on any thread.
"""

from __future__ import annotations

import logging
import struct
from typing import Sequence

from kvmlite.devices.interrupts import MsiVector
from kvmlite.devices.pci.config import CAP_ID_MSIX, PciConfigError
from kvmlite.devices.pci.function import PciFunction

log = logging.getLogger(__name__)

ENTRY_SIZE = 16
MAX_VECTORS = 2048
CONTROL_TABLE_SIZE_MASK = 0x07FF
CONTROL_FUNCTION_MASK = 1 << 14
CONTROL_ENABLE = 1 << 15
VECTOR_CTRL_MASKBIT = 1

# offsets inside the capability (after the 2-byte ID/next header)
CAP_CONTROL = 2
CAP_TABLE = 4
CAP_PBA = 8


def pba_size(count: int) -> int:
    """Bytes of PBA for ``count`` vectors (whole qwords)."""
    return (count + 63) // 64 * 8


class MsixCapability:
    """The MSI-X capability of ``function`` with one :class:`MsiVector`
    per table entry; table and PBA live in BAR ``bar`` at the given offsets."""

    def __init__(self, function: PciFunction, vectors: Sequence[MsiVector], bar: int,
                 table_offset: int, pba_offset: int) -> None:
        count = len(vectors)
        if not 1 <= count <= MAX_VECTORS or (table_offset | pba_offset) & 7 or bar > 5:
            raise PciConfigError(f"{function.name}: bad MSI-X layout ({count} vectors)")
        self.function = function
        self.vectors = list(vectors)
        self.table_offset = table_offset
        self.pba_offset = pba_offset
        self.bar = bar
        body = struct.pack("<HII", count - 1, table_offset | bar, pba_offset | bar)
        writable = struct.pack("<HII", CONTROL_ENABLE | CONTROL_FUNCTION_MASK, 0, 0)
        self.offset = function.config.add_capability(CAP_ID_MSIX, body, writable)
        function.add_config_hook(self.offset + CAP_CONTROL, 2, on_write=self._control_written)
        self._table = bytearray(ENTRY_SIZE * count)
        for i in range(count):
            self._table[ENTRY_SIZE * i + 12] = VECTOR_CTRL_MASKBIT
        self._applied: list[tuple[int, int, bool] | None] = [None] * count
        self.enabled = False
        self.function_masked = False
        for i in range(count):
            self._sync(i)

    @property
    def count(self) -> int:
        return len(self.vectors)

    @property
    def table_size(self) -> int:
        return ENTRY_SIZE * self.count

    # --- configuration space: message control ---

    def _control_written(self) -> None:
        control = self.function.config.u16(self.offset + CAP_CONTROL)
        enabled = bool(control & CONTROL_ENABLE)
        masked = bool(control & CONTROL_FUNCTION_MASK)
        if (enabled, masked) != (self.enabled, self.function_masked):
            self.enabled, self.function_masked = enabled, masked
            for i in range(self.count):
                self._sync(i)

    # --- the table and PBA (BAR accesses) ---

    @staticmethod
    def _aligned(offset: int, length: int) -> bool:
        return length in (4, 8) and offset % length == 0

    def table_read(self, offset: int, data: memoryview) -> None:
        if not self._aligned(offset, len(data)) or offset + len(data) > self.table_size:
            log.debug("%s: ignored %d-byte MSI-X table read at %#x",
                      self.function.name, len(data), offset)
            data[:] = bytes(len(data))
            return
        data[:] = self._table[offset:offset + len(data)]

    def table_write(self, offset: int, data: bytes) -> None:
        if not self._aligned(offset, len(data)) or offset + len(data) > self.table_size:
            log.debug("%s: ignored %d-byte MSI-X table write at %#x",
                      self.function.name, len(data), offset)
            return
        for at in range(offset, offset + len(data), 4):
            self._write_dword(at, data[at - offset:at - offset + 4])
        for entry in {offset // ENTRY_SIZE, (offset + len(data) - 1) // ENTRY_SIZE}:
            self._sync(entry)

    def _write_dword(self, at: int, value: bytes) -> None:
        field = at % ENTRY_SIZE
        word = int.from_bytes(value, "little")
        if field == 0:
            word &= ~0x3                  # message address is dword aligned
        elif field == 12:
            word &= VECTOR_CTRL_MASKBIT   # other vector control bits are reserved
        self._table[at:at + 4] = word.to_bytes(4, "little")

    def pba_read(self, offset: int, data: memoryview) -> None:
        if not self._aligned(offset, len(data)) or offset + len(data) > pba_size(self.count):
            data[:] = bytes(len(data))
            return
        bits = 0
        first = offset * 8
        for bit in range(len(data) * 8):
            if first + bit < self.count and self.vectors[first + bit].pending:
                bits |= 1 << bit
        data[:] = bits.to_bytes(len(data), "little")

    # --- vectors ---

    def entry(self, index: int) -> tuple[int, int, bool]:
        """(address, data, masked) as the guest programmed entry ``index``."""
        lo, hi, data, ctrl = struct.unpack_from("<IIII", self._table, ENTRY_SIZE * index)
        return hi << 32 | lo, data, bool(ctrl & VECTOR_CTRL_MASKBIT)

    def is_valid_vector(self, index: int) -> bool:
        return 0 <= index < self.count

    def trigger(self, index: int) -> None:
        """Signal vector ``index`` (pending while masked)."""
        if self.is_valid_vector(index):
            self.vectors[index].trigger()

    def _sync(self, index: int) -> None:
        address, data, entry_masked = self.entry(index)
        masked = entry_masked or self.function_masked or not self.enabled
        previous = self._applied[index]
        vector = self.vectors[index]
        if previous is None or previous[:2] != (address, data):
            vector.configure(address, data)
        if previous is None or previous[2] != masked:
            vector.set_masked(masked)
        self._applied[index] = (address, data, masked)
