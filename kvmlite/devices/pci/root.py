"""The PCI root complex: bus 0 with a host bridge at 00:00.0 and up to 31
single-function devices, their BAR placement, and BAR (re)mapping.

The guest reaches configuration space through the type-1 mechanism at
0xCF8 (:mod:`.configio`) or ECAM (:mod:`.ecam`); both end in
:meth:`PciRoot.config_read`/:meth:`PciRoot.config_write`.  After every
configuration write the root compares what the function's BARs and command
register say should decode (PCI Local Bus 3.0 §6.2.2, §6.2.5) with what is
on the buses, and moves the difference: a BAR is on the MMIO (or port) bus
exactly while its decode bit is set and its address is not zero.  The
function hears of each move through ``bar_mapped`` and re-registers the
ioeventfds that live inside the BAR.

Threads and locks: configuration accesses arrive on vCPU threads holding the
bus lock of the config mechanism; the root then takes the function's lock
(``Bus.lock_of(function)`` on the MMIO bus), and moves BARs under it.  A BAR
access takes the bus lock of its window, then the same function lock.

Snapshots: :meth:`PciRoot.save_state` covers the root's own state, the
CONFIG_ADDRESS latch at 0xCF8 (the BAR mappings follow from the
functions' registers; the address allocators only matter before the guest
runs).  The functions are saved by whoever owns them, or all at once by
slot with :meth:`PciRoot.save_functions`/:meth:`PciRoot.restore_functions`.
A function's ``restore_state`` moves its BARs on the buses through
:meth:`PciRoot._sync_bars`, the path a guest's configuration write takes
(``PciRoot.add`` hands it that with ``set_bar_sync``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Iterator, Sequence, cast

from kvmlite.arch.x86 import layout
from kvmlite.base.state import Reader, StateError
from kvmlite.devices.bus import Bus, BusDevice, BusError
from kvmlite.devices.irq import IrqLine
from kvmlite.devices.pci.allocator import AddressAllocator
from kvmlite.devices.pci.config import INTERRUPT_PIN_INTA, Bar, BarKind
from kvmlite.devices.pci.configio import ADDRESS_MASK, PciConfigIo
from kvmlite.devices.pci.function import PciFunction
from kvmlite.devices.pci.hostbridge import HostBridge
from kvmlite.devices.pci.intx import SharedIrqLine
from kvmlite.errors import ConfigError

log = logging.getLogger(__name__)

SLOT_COUNT = 32
PORT_IO_LIMIT = 0x1_0000           # x86 port space is 16 bits


@dataclass(frozen=True)
class PciWindows:
    """Where BARs may be placed: [start, end) for each address space."""

    mmio32: tuple[int, int] = (layout.PCI_MMIO_START, layout.PCI_MMIO_END)
    io: tuple[int, int] = (layout.PORT_PCI_IO_START, layout.PORT_PCI_IO_END)
    #: 64-bit BARs go here when set, else into ``mmio32``
    mmio64: tuple[int, int] | None = None


class BarWindow:
    """What sits on a bus for one decoded BAR: forwards to the function
    under its lock with the offset into the BAR."""

    def __init__(self, function: PciFunction, index: int) -> None:
        self.function = function
        self.index = index

    def read(self, offset: int, data: memoryview) -> None:
        with self.function.lock:
            self.function.bar_read(self.index, offset, data)

    def write(self, offset: int, data: bytes) -> None:
        with self.function.lock:
            self.function.bar_write(self.index, offset, data)


@dataclass
class _Slot:
    function: PciFunction
    windows: dict[int, BarWindow] = field(default_factory=dict)
    mapped: dict[int, int] = field(default_factory=dict)       # BAR -> address on the bus
    refused: set[tuple[int, int]] = field(default_factory=set)  # (BAR, address) already logged


class PciRoot:
    """Bus 0: configuration access, BAR allocation and mapping, INTx wiring.

    ``intx_lines`` are the four wires INTA-D of slot 0, reported to the guest
    as ``intx_irqs``; slot ``s`` pin ``p`` (1 = INTA) uses wire
    ``(s + p - 1) % 4`` (the usual swizzle).  The constructor puts the host
    bridge at slot 0 and the 0xCF8-0xCFF ports on ``pio_bus``.
    """

    def __init__(self, mmio_bus: Bus, pio_bus: Bus, intx_lines: Sequence[IrqLine], *,
                 intx_irqs: Sequence[int] = layout.IRQ_PCI_INTX,
                 windows: PciWindows = PciWindows(), register_ports: bool = True) -> None:
        if len(intx_lines) != 4 or len(intx_irqs) != 4:
            raise ConfigError("PCI root needs four INTx lines (INTA-D)")
        self.mmio_bus = mmio_bus
        self.pio_bus = pio_bus
        self._intx = [SharedIrqLine(line) for line in intx_lines]
        self._intx_irqs = tuple(intx_irqs)
        self._mmio32 = AddressAllocator("PCI 32-bit MMIO window", *windows.mmio32)
        self._mmio64 = AddressAllocator("PCI 64-bit MMIO window", *windows.mmio64) \
            if windows.mmio64 else self._mmio32
        self._io = AddressAllocator("PCI I/O window", *windows.io)
        self._slots: list[_Slot | None] = [None] * SLOT_COUNT
        self.add(HostBridge(), slot=0)
        self.config_io = PciConfigIo(self)
        if register_ports:
            pio_bus.register(layout.PORT_PCI_CONFIG_ADDR, PciConfigIo.LENGTH, self.config_io,
                             "pci-config")

    # --- building (before the guest runs) ---

    def add(self, function: PciFunction, slot: int | None = None) -> int:
        """Plug ``function`` in (the first free slot from 1 when ``slot`` is
        None), place its BARs and wire INTA.  Returns the slot."""
        slot = self._free_slot() if slot is None else slot
        if not 0 <= slot < SLOT_COUNT or self._slots[slot] is not None:
            raise ConfigError(f"PCI slot {slot} is taken or does not exist")
        # The function is never on a bus itself (its BAR windows are), but
        # Bus.lock_of gives every object one stable lock: the VMM can find
        # this one as mmio_bus.lock_of(function), like any device's.
        function.lock = self.mmio_bus.lock_of(cast(BusDevice, function))
        self._place_bars(function)
        entry = _Slot(function, {i: BarWindow(function, i) for i in function.config.bars})
        self._slots[slot] = entry
        if slot != 0:
            function.attach_intx(self._intx[self._wire(slot, INTERRUPT_PIN_INTA)].source(),
                                 INTERRUPT_PIN_INTA, self.intx_irq(slot))
        function.set_bar_sync(lambda: self._sync_bars(entry))
        with function.lock:
            self._sync_bars(entry)
        return slot

    def _free_slot(self) -> int:
        for slot in range(1, SLOT_COUNT):
            if self._slots[slot] is None:
                return slot
        raise ConfigError(f"all {SLOT_COUNT - 1} PCI slots are in use")

    def _place_bars(self, function: PciFunction) -> None:
        for bar in sorted(function.config.bars.values(), key=lambda b: -b.size):
            function.config.set_bar_address(bar.index, self._allocator(bar).allocate(bar.size))

    def _allocator(self, bar: Bar) -> AddressAllocator:
        if bar.is_io:
            return self._io
        return self._mmio64 if bar.kind is BarKind.MEM64 else self._mmio32

    @staticmethod
    def _wire(slot: int, pin: int) -> int:
        return (slot + pin - 1) % 4

    def intx_irq(self, slot: int, pin: int = INTERRUPT_PIN_INTA) -> int:
        """The IRQ (GSI) that slot ``slot``'s INT``pin`` raises: what the
        MP table / ACPI _PRT must say."""
        return self._intx_irqs[self._wire(slot, pin)]

    def functions(self) -> Iterator[tuple[int, PciFunction]]:
        """(slot, function) for every occupied slot, host bridge first."""
        for slot, entry in enumerate(self._slots):
            if entry is not None:
                yield slot, entry.function

    def mapped_bars(self, slot: int) -> dict[int, int]:
        """BAR index -> address for the BARs of ``slot`` now on a bus."""
        entry = self._slots[slot]
        return dict(entry.mapped) if entry else {}

    # --- snapshots ---

    def save_state(self) -> dict:
        """The root's own state: the CONFIG_ADDRESS latch (not the functions')."""
        return {"config_address": self.config_io.address}

    def restore_state(self, state: dict, part: str = "pci root") -> None:
        r = Reader(state, part)
        address = r.int("config_address", 0, 0xFFFF_FFFF)
        if address & ~ADDRESS_MASK:
            raise StateError(f"{part}: config_address={address:#010x} has bits CONFIG_ADDRESS "
                             f"does not keep (mask {ADDRESS_MASK:#010x})")
        self.config_io.address = address

    def save_functions(self) -> list[dict]:
        """Every function's ``save_state``, host bridge included, as
        ``{"slot": n, "state": ...}`` in slot order."""
        return [{"slot": slot, "state": function.save_state()} for slot, function in self.functions()]

    def restore_functions(self, states: list, part: str = "pci") -> None:
        """Load :meth:`save_functions`'s list into the same functions, built
        the same way (each function's ``restore_state`` re-maps its BARs).
        The slot list is checked before any function is touched; a bad
        function state raises after the functions before it are loaded, and
        the VM must then not start (the snapshot convention)."""
        saved = self._saved_slots(Reader({"functions": states}, part))
        for slot, function in self.functions():
            function.restore_state(saved[slot])     # errors name the function ("pci NAME: ...")

    def _saved_slots(self, r: Reader) -> dict[int, dict]:
        saved: dict[int, dict] = {}
        for i, item in enumerate(r.list("functions")):
            entry = Reader(item, f"{r.part} functions[{i}]")
            slot = entry.int("slot", 0, SLOT_COUNT - 1)
            saved[slot] = entry.sub("state").state
        present = [slot for slot, _ in self.functions()]
        if sorted(saved) != present or len(saved) != len(r.state["functions"]):
            raise StateError(f"{r.part}: saved functions are in slots {sorted(saved)}, "
                             f"this VM has slots {present}")
        return saved

    # --- configuration access (vCPU threads) ---

    def config_read(self, bus: int, slot: int, fn: int, reg: int, data: memoryview) -> None:
        """Fill ``data`` from 00:slot.fn register ``reg``; all-ones when no
        function answers (a master abort, §6.1)."""
        entry = self._entry(bus, slot, fn)
        if entry is None or reg + len(data) > 256:
            data[:] = b"\xff" * len(data)
            return
        with entry.function.lock:
            entry.function.config_read(reg, data)

    def config_write(self, bus: int, slot: int, fn: int, reg: int, data: bytes) -> None:
        entry = self._entry(bus, slot, fn)
        if entry is None or reg + len(data) > 256:
            return
        with entry.function.lock:
            entry.function.config_write(reg, data)
            self._sync_bars(entry)

    def _entry(self, bus: int, slot: int, fn: int) -> _Slot | None:
        if bus != 0 or fn != 0 or not 0 <= slot < SLOT_COUNT:
            return None
        return self._slots[slot]

    # --- BAR mapping (function lock held) ---

    def _sync_bars(self, entry: _Slot) -> None:
        wanted = entry.function.config.decoded_bars()
        for index in sorted(set(entry.mapped) | set(wanted)):
            old, new = entry.mapped.get(index), wanted.get(index)
            if old == new:
                continue
            if old is not None:
                self._bus_for(entry, index).unregister(old)
                del entry.mapped[index]
            if new is not None:
                self._map(entry, index, new)
            if entry.mapped.get(index) != old:
                entry.function.bar_mapped(index, entry.mapped.get(index))

    def _bus_for(self, entry: _Slot, index: int) -> Bus:
        return self.pio_bus if entry.function.config.bars[index].is_io else self.mmio_bus

    def _map(self, entry: _Slot, index: int, address: int) -> None:
        bar = entry.function.config.bars[index]
        name = f"{entry.function.name}.bar{index}"
        try:
            if bar.is_io and address + bar.size > PORT_IO_LIMIT:
                raise BusError(f"port range {address:#x}+{bar.size:#x} beyond 0xffff")
            self._bus_for(entry, index).register(address, bar.size, entry.windows[index], name)
        except BusError as exc:
            if (index, address) not in entry.refused:
                entry.refused.add((index, address))
                log.warning("%s: guest placed BAR %d where it cannot decode: %s",
                            entry.function.name, index, exc)
            return
        entry.mapped[index] = address
