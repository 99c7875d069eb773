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

Snapshots: :meth:`MsixCapability.save_state` keeps the table, the PBA and
the enable/function-mask bits (which live in the function's configuration
space and are saved there too).  The capability registers itself with its
function as the state part ``"msix"``, so ``PciFunction.save_state`` and
``restore_state`` cover it.  :meth:`MsixCapability.restore_state` runs
after the function's configuration space is restored, and checks that the
two agree.  It then pushes every entry to its vector through the same
calls a guest's table write makes (``configure`` then ``set_masked``,
which is where a KVM vector installs its MSI route), so the interrupt
backend of the new VM ends up with the routes the guest programmed.  A
pending bit is re-created by triggering the vector while it is still
masked; unmasking later delivers it (§6.8.3.5).
"""

from __future__ import annotations

import logging
import struct
from typing import Sequence

from kvmlite.base.state import Reader, StateError, pack_bytes
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
        function.add_state_part("msix", self)

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

    # --- snapshots ---

    def save_state(self) -> dict:
        pba = bytearray(pba_size(self.count))
        for i, vector in enumerate(self.vectors):
            if vector.pending:
                pba[i // 8] |= 1 << i % 8
        return {"table": pack_bytes(self._table), "pba": pack_bytes(pba),
                "enabled": self.enabled, "function_masked": self.function_masked}

    def restore_state(self, state: dict, part: str | None = None) -> None:
        """Load :meth:`save_state`'s dict into this fresh capability and
        re-program every vector from the table (see the module doc).  Call
        after the function's configuration space is restored, before any
        vCPU runs; takes no lock."""
        r = Reader(state, part or f"{self.function.name} msix")
        table = self._checked_table(r)
        pending = self._checked_pba(r)
        self.enabled, self.function_masked = self._checked_control(r)
        self._table = bytearray(table)
        for i in range(self.count):
            self._reapply(i, pending[i])

    def _checked_table(self, r: Reader) -> bytes:
        table = r.bytes("table", self.table_size)
        for i in range(self.count):
            lo, _hi, _data, ctrl = struct.unpack_from("<IIII", table, ENTRY_SIZE * i)
            if lo & 0x3 or ctrl & ~VECTOR_CTRL_MASKBIT:   # §6.8.2.6, §6.8.2.9: read as zero
                raise StateError(f"{r.part}: table entry {i} has reserved bits set")
        return table

    def _checked_pba(self, r: Reader) -> list[bool]:
        pba = int.from_bytes(r.bytes("pba", pba_size(self.count)), "little")
        if pba >> self.count:
            raise StateError(f"{r.part}: pba has bits past vector {self.count - 1}")
        return [bool(pba >> i & 1) for i in range(self.count)]

    def _checked_control(self, r: Reader) -> tuple[bool, bool]:
        """The saved enable and mask bits against the (restored) message control."""
        enabled, masked = r.bool("enabled"), r.bool("function_masked")
        control = self.function.config.u16(self.offset + CAP_CONTROL)
        if (enabled, masked) != (bool(control & CONTROL_ENABLE), bool(control & CONTROL_FUNCTION_MASK)):
            raise StateError(f"{r.part}: enabled={enabled} function_masked={masked} disagree with "
                             f"message control {control:#06x} (restore the configuration space first)")
        return enabled, masked

    def _reapply(self, index: int, pending: bool) -> None:
        """Push entry ``index`` to its vector as a guest's writes would."""
        address, data, entry_masked = self.entry(index)
        masked = entry_masked or self.function_masked or not self.enabled
        vector = self.vectors[index]
        vector.configure(address, data)
        vector.set_masked(True)
        if pending:
            vector.trigger()                      # masked: only sets the pending bit
        if not masked:
            vector.set_masked(False)
        self._applied[index] = (address, data, masked)

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
