"""virtio over PCI, modern interface only (virtio 1.2 §4.1).

One PCI function per virtio device: vendor 0x1AF4, device 0x1040 + type,
revision 1 (§4.1.2).  Its structures live in BAR 0 (see
:mod:`.pci_layout`); the driver finds them through vendor-specific
capabilities.  Interrupts go through MSI-X when the driver enables it
(§4.1.5.3-4: one vector per queue plus ``config_msix_vector``), otherwise
through INTx with the ISR byte saying why (§4.1.4.5).

Threads and locks: register accesses run on vCPU threads under
:attr:`lock` (``Bus.lock_of(transport)`` on the MMIO bus, installed by
:meth:`PciRoot.add`).  Doorbell eventfds fire on the I/O thread, which takes
the same lock before calling ``device.queue_notify``.  A device signals
interrupts from any thread; that path takes only ``_irq_lock``, never
:attr:`lock`, so a device may signal from inside ``queue_notify``.
Lock order: lock -> _irq_lock -> INTx / MSI vector locks.

A device that hands its queues to the kernel (vhost) gets each queue's
doorbell eventfd through ``device.queue_kicks`` and, with MSI-X enabled,
the irqfd of the queue's vector through :meth:`queue_irqfd`, so neither a
notification nor an interrupt passes through Python.  When the driver
changes a queue's vector or turns MSI-X on or off after DRIVER_OK (Linux
does neither; the spec does not forbid it), the device is told
(``interrupts_changed``) and asks again.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from kvmlite.devices.interrupts import IoEventRegistrar, MsiAllocator
from kvmlite.devices.pci.config import Bar, BarKind, PciIds
from kvmlite.devices.pci.function import PciFunction
from kvmlite.devices.pci.msix import CAP_CONTROL, MsixCapability
from kvmlite.devices.virtio.device import (VIRTIO_ID_BLOCK, VIRTIO_ID_CONSOLE, VIRTIO_ID_NET,
                                           VirtioDevice)
from kvmlite.devices.virtio.transport import pci_layout as L
from kvmlite.devices.virtio.transport.common import NO_VECTOR, QueueFactory, VirtioTransportCore
from kvmlite.devices.virtio.transport.doorbells import Doorbell, ReaderLoop, make_doorbells
from kvmlite.base.state import Reader, StateError

if TYPE_CHECKING:
    from kvmlite.base.memory import GuestMemory

log = logging.getLogger(__name__)

VIRTIO_PCI_VENDOR_ID = 0x1AF4
VIRTIO_PCI_DEVICE_ID_BASE = 0x1040       # §4.1.2.1: 0x1040 + virtio device ID
VIRTIO_PCI_REVISION = 1
VIRTIO_PCI_SUBSYSTEM_ID = 0x1100
#: PCI class (base, sub) per virtio device type; 0x00FF "unclassified" otherwise
PCI_CLASS_BY_TYPE = {VIRTIO_ID_NET: 0x0200, VIRTIO_ID_BLOCK: 0x0180, VIRTIO_ID_CONSOLE: 0x0780}
PCI_CLASS_OTHER = 0x00FF

ISR_QUEUE = 0x1
ISR_CONFIG = 0x2

# struct virtio_pci_common_cfg (§4.1.4.3): offset -> size
COMMON_FIELDS = {0x00: 4, 0x04: 4, 0x08: 4, 0x0C: 4, 0x10: 2, 0x12: 2, 0x14: 1, 0x15: 1,
                 0x16: 2, 0x18: 2, 0x1A: 2, 0x1C: 2, 0x1E: 2, 0x20: 8, 0x28: 8, 0x30: 8}
QUEUE_ADDRESS_AT = {0x20: "desc_table", 0x28: "avail_ring", 0x30: "used_ring"}


def virtio_pci_ids(device_type: int) -> PciIds:
    return PciIds(vendor_id=VIRTIO_PCI_VENDOR_ID,
                  device_id=VIRTIO_PCI_DEVICE_ID_BASE + device_type,
                  class_code=PCI_CLASS_BY_TYPE.get(device_type, PCI_CLASS_OTHER) << 8,
                  revision=VIRTIO_PCI_REVISION,
                  subsystem_vendor_id=VIRTIO_PCI_VENDOR_ID,
                  subsystem_id=VIRTIO_PCI_SUBSYSTEM_ID)


def common_field(offset: int, size: int) -> tuple[int, int | None] | None:
    """(field offset, dword half or None) for a correctly sized access to
    the common configuration; None for a wrong width or offset (§4.1.3.1)."""
    if COMMON_FIELDS.get(offset) == size:
        return offset, None
    if size == 4 and COMMON_FIELDS.get(offset) == 8:
        return offset, 0
    if size == 4 and COMMON_FIELDS.get(offset - 4) == 8:
        return offset - 4, 1
    return None


class VirtioPciTransport(PciFunction):
    """A virtio device on PCI.  ``msi`` supplies one vector per queue plus
    one for configuration changes; with ``ioevents`` and ``loop``, each
    queue's notify address becomes an ioeventfd served on ``loop``."""

    def __init__(self, device: VirtioDevice, memory: "GuestMemory", msi: MsiAllocator, *,
                 ioevents: IoEventRegistrar | None = None, loop: ReaderLoop | None = None,
                 name: str | None = None, queue_factory: QueueFactory | None = None) -> None:
        super().__init__(virtio_pci_ids(device.device_type),
                         name or f"virtio-pci-{device.device_type}")
        self.core = VirtioTransportCore(device, memory, self, self.name, queue_factory)
        self.layout = L.VirtioPciLayout(len(self.core.queues), len(self.core.queues) + 1)
        self._irq_lock = threading.Lock()
        self._isr = 0
        self.config_vector = NO_VECTOR
        self.config.add_bar(Bar(L.BAR_INDEX, self.layout.bar_size, BarKind.MEM64))
        self._msi_allocator = msi
        self.msix = MsixCapability(self, msi.allocate(self.layout.vectors), L.BAR_INDEX,
                                   L.MSIX_OFFSET, self.layout.pba_offset)
        self._pci_cfg = L.add_virtio_caps(self, self.layout)
        self.add_config_hook(self._pci_cfg + L.PCI_CFG_CAP_DATA, 4,
                             on_read=self._pci_cfg_read, on_write=self._pci_cfg_write)
        self._msix_enabled = False
        self.add_config_hook(self.msix.offset + CAP_CONTROL, 2, on_write=self._msix_control_written)
        self.doorbells = make_doorbells(self.name, len(self.core.queues), ioevents, loop,
                                        self._doorbell)
        device.queue_kicks = self.doorbells
        device.on_needs_reset = self._device_needs_reset

    @property
    def device(self) -> VirtioDevice:
        return self.core.device

    def close(self) -> None:
        """Drop ioeventfds, eventfds and MSI vectors (the VM is going away)."""
        if self.doorbells is not None:
            self.doorbells.close()
        self._msi_allocator.release(self.msix.vectors)

    # --- PciFunction: BAR 0 ---

    def bar_mapped(self, index: int, address: int | None) -> None:
        if self.doorbells is None or index != L.BAR_INDEX:
            return
        bells = None if address is None else [
            Doorbell(self.layout.notify_address(address, q), 2) for q in range(self.layout.queues)]
        self.doorbells.place(bells)

    def bar_read(self, index: int, offset: int, data: memoryview) -> None:
        region, rel = self._region(offset, len(data))
        if region == "common":
            self._common_read(rel, data)
        elif region == "isr":
            data[:] = bytes(len(data))
            if rel == 0:
                data[0] = self._read_isr()
        elif region == "device":
            self.core.read_config(rel, data)
        elif region == "table":
            self.msix.table_read(rel, data)
        elif region == "pba":
            self.msix.pba_read(rel, data)
        else:
            data[:] = bytes(len(data))

    def bar_write(self, index: int, offset: int, data: bytes) -> None:
        region, rel = self._region(offset, len(data))
        if region == "common":
            self._common_write(rel, data)
        elif region == "device":
            self.core.write_config(rel, data)
        elif region == "notify":
            self._notify_write(rel)
        elif region == "table":
            self.msix.table_write(rel, data)
        elif region is None or region in ("isr", "pba"):
            log.debug("%s: ignored %d-byte write at BAR offset %#x", self.name, len(data), offset)

    def _region(self, offset: int, length: int) -> tuple[str | None, int]:
        lay = self.layout
        regions = (("common", L.COMMON_OFFSET, L.COMMON_LENGTH), ("isr", L.ISR_OFFSET, 1),
                   ("device", L.DEVICE_OFFSET, L.DEVICE_LENGTH),
                   ("notify", L.NOTIFY_OFFSET, lay.notify_length),
                   ("table", L.MSIX_OFFSET, self.msix.table_size),
                   ("pba", lay.pba_offset, L.PAGE))
        for name, start, size in regions:
            if start <= offset and offset + length <= start + size:
                return name, offset - start
        return None, offset

    # --- common configuration (§4.1.4.3) ---

    def _common_read(self, rel: int, data: memoryview) -> None:
        field = common_field(rel, len(data))
        if field is None:
            self.core.bad("%d-byte common config read at %#x (wrong width)", len(data), rel)
            data[:] = bytes(len(data))
            return
        start, half = field
        value = self._common_value(start)
        if half is not None:
            value >>= 32 * half
        data[:] = (value & ((1 << (8 * len(data))) - 1)).to_bytes(len(data), "little")

    def _common_value(self, reg: int) -> int:
        core, queue = self.core, self.core.selected
        match reg:
            case 0x00: return core.device_feature_select
            case 0x04: return core.device_features_window()
            case 0x08: return core.driver_feature_select
            case 0x0C: return core.driver_features_window()
            case 0x10: return self.config_vector
            case 0x12: return len(core.queues)
            case 0x14: return core.read_status()
            case 0x15: return core.config_generation & 0xFF
            case 0x16: return core.queue_select
            case 0x18: return queue.size if queue else 0
            case 0x1A: return queue.msix_vector if queue else NO_VECTOR
            case 0x1C: return int(bool(queue and queue.ready))
            case 0x1E: return core.queue_select if queue else 0
        return core.queue_address(QUEUE_ADDRESS_AT[reg])

    def _common_write(self, rel: int, data: bytes) -> None:
        field = common_field(rel, len(data))
        if field is None:
            self.core.bad("%d-byte common config write at %#x (wrong width)", len(data), rel)
            return
        start, half = field
        value = int.from_bytes(data, "little")
        core = self.core
        match start:
            case 0x00: core.device_feature_select = value
            case 0x08: core.driver_feature_select = value
            case 0x0C: core.write_driver_features(value)
            case 0x10: self.config_vector = self._checked_vector(value)
            case 0x14: self._write_status(value)
            case 0x16: core.queue_select = value
            case 0x18: core.set_queue_size(value)
            case 0x1A: self._set_queue_vector(value)
            case 0x1C: self._write_queue_enable(value)
            case 0x20 | 0x28 | 0x30: core.set_queue_address(QUEUE_ADDRESS_AT[start], value, half)
            case _: core.bad("write to read-only common config field %#x", start)

    def _checked_vector(self, vector: int) -> int:
        """§4.1.5.1.2: a vector the device cannot map reads back NO_VECTOR."""
        if vector == NO_VECTOR or self.msix.is_valid_vector(vector):
            return vector
        self.core.bad("MSI-X vector %d out of range (%d vectors); NO_VECTOR", vector,
                      self.msix.count)
        return NO_VECTOR

    def _set_queue_vector(self, value: int) -> None:
        queue = self.core.selected
        if queue is None:
            self.core.bad("queue_msix_vector for queue %d, which does not exist",
                          self.core.queue_select)
            return
        vector = self._checked_vector(value)
        if vector != queue.msix_vector:
            queue.msix_vector = vector
            self.core.interrupts_changed()

    def _msix_control_written(self) -> None:
        """After the capability's own hook: MSI-X turned on or off."""
        if self.msix.enabled != self._msix_enabled:
            self._msix_enabled = self.msix.enabled
            self.core.interrupts_changed()

    def _write_queue_enable(self, value: int) -> None:
        if value == 1:
            self.core.enable_queue()
        else:
            self.core.bad("queue_enable written with %d (only 1 is allowed, §4.1.4.3.2)", value)

    def _write_status(self, value: int) -> None:
        if self.core.write_status(value):
            self.config_vector = NO_VECTOR
            with self._irq_lock:
                self._isr = 0
                self.set_intx(False)

    # --- notifications (§4.1.4.4) ---

    def _notify_write(self, rel: int) -> None:
        queue, misaligned = divmod(rel, L.NOTIFY_OFF_MULTIPLIER)
        if misaligned:
            self.core.bad("notify write at %#x is not a queue's notify address", rel)
            return
        self.core.notify(queue)

    def _doorbell(self, queue: int) -> None:
        """I/O thread: queue ``queue``'s ioeventfd fired."""
        with self.lock:
            self.core.notify(queue)

    # --- interrupts: VirtioInterrupt (any thread) ---

    def signal_used_queue(self, queue_index: int) -> None:
        if not self.core.may_signal_used():
            return
        if not 0 <= queue_index < len(self.core.queues):
            log.warning("%s: device signalled queue %d, which does not exist", self.name,
                        queue_index)
            return
        self._signal(ISR_QUEUE, self.core.queues[queue_index].msix_vector)

    def signal_config_change(self) -> None:
        with self._irq_lock:
            self.core.config_generation += 1
            self._isr |= ISR_CONFIG
        self._signal(ISR_CONFIG, self.config_vector)

    def queue_irqfd(self, queue_index: int) -> int | None:
        """The irqfd of queue ``queue_index``'s MSI-X vector while MSI-X is
        enabled; None with INTx (the ISR byte needs the VMM) or no vector."""
        if not self.msix.enabled or not 0 <= queue_index < len(self.core.queues):
            return None
        vector = self.core.queues[queue_index].msix_vector
        if vector == NO_VECTOR or not self.msix.is_valid_vector(vector):
            return None
        return self.msix.vectors[vector].irqfd()

    def _signal(self, isr_bit: int, vector: int) -> None:
        if self.msix.enabled:
            if vector != NO_VECTOR:
                self.msix.trigger(vector)
            return
        with self._irq_lock:
            self._isr |= isr_bit
            self.set_intx(True)

    def _read_isr(self) -> int:
        """§4.1.4.5: reading the ISR clears it and deasserts INTx."""
        with self._irq_lock:
            value, self._isr = self._isr, 0
            self.set_intx(False)
        return value

    def _device_needs_reset(self, reason: str) -> None:
        if self.core.mark_needs_reset(reason):
            self.signal_config_change()

    # --- VIRTIO_PCI_CAP_PCI_CFG (§4.1.4.9) ---

    def _pci_cfg_window(self) -> tuple[int, int] | None:
        cap = self._pci_cfg
        bar = self.config.u8(cap + L.PCI_CFG_CAP_BAR)
        offset = self.config.u32(cap + L.PCI_CFG_CAP_OFFSET)
        length = self.config.u32(cap + L.PCI_CFG_CAP_LENGTH)
        if length == 0:
            return None                    # never set up: a config space dump, not an access
        if bar != L.BAR_INDEX or length not in (1, 2, 4) or offset % length \
                or offset + length > self.layout.bar_size:
            self.core.bad("PCI_CFG access with bar %d offset %#x length %d ignored",
                          bar, offset, length)
            return None
        return offset, length

    def _pci_cfg_read(self) -> None:
        window = self._pci_cfg_window()
        if window is None:
            return
        offset, length = window
        buf = memoryview(bytearray(length))
        self.bar_read(L.BAR_INDEX, offset, buf)
        self.config.set_u32(self._pci_cfg + L.PCI_CFG_CAP_DATA,
                            int.from_bytes(bytes(buf), "little"))

    def _pci_cfg_write(self) -> None:
        window = self._pci_cfg_window()
        if window is None:
            return
        offset, length = window
        data = self.config.read(self._pci_cfg + L.PCI_CFG_CAP_DATA, length)
        self.bar_write(L.BAR_INDEX, offset, data)

    # --- snapshots (kvmlite.base.state) ---
    #
    # HOOK (PCI function state): this transport IS the PCI function.  Its
    # configuration space and INTx level are PciFunction's state, its MSI-X
    # table and PBA the MsixCapability's (kvmlite/devices/pci/, another
    # part of the snapshot work).  Each is saved here only when that class
    # has save_state/restore_state (looked up at run time), under its own
    # keys; the virtio part is under "virtio".  Restore order: PciFunction
    # first (its BARs re-mapped, which calls bar_mapped and so re-registers
    # the doorbell ioeventfds), then the MSI-X capability (it reads the
    # restored message control; it re-installs every vector's MSI route),
    # then the virtio part, which may activate the device and interrupt.

    def save_state(self) -> dict:
        """PciFunction's and the MSI-X capability's state (when they save
        one) plus "virtio": the common configuration (§4.1.4.3, through the
        core, the device's part under "device"), config_msix_vector and
        the ISR byte (§4.1.4.5)."""
        parent = getattr(super(), "save_state", None)
        state = parent() if parent is not None else {}
        msix = getattr(self.msix, "save_state", None)
        if msix is not None:
            state["msix"] = msix()
        with self.lock:
            virtio = self.core.save_state()
            virtio["config_vector"] = self.config_vector
            with self._irq_lock:
                virtio["isr"] = self._isr
        state["virtio"] = virtio
        return state

    def restore_state(self, state: dict, part: str | None = None) -> None:
        """On a freshly built transport already added to its PciRoot;
        ``part`` names it in errors (PciRoot.restore_functions passes one).
        Takes :attr:`lock`: do not call with it held."""
        part = part or self.name
        r = Reader(state, part)
        virtio = r.sub("virtio")
        isr = virtio.int("isr", 0, ISR_QUEUE | ISR_CONFIG)
        config_vector = virtio.int("config_vector", 0, NO_VECTOR)
        parent = getattr(super(), "restore_state", None)
        if parent is not None:
            parent(state, f"pci {part}")
        msix = getattr(self.msix, "restore_state", None)
        if msix is not None:
            msix(r.sub("msix").state, f"{part} msix")
        with self.lock:
            self._restore_virtio(virtio.state, config_vector, isr, drive_intx=parent is None)

    def _restore_virtio(self, state: dict, config_vector: int, isr: int, drive_intx: bool) -> None:
        if config_vector != NO_VECTOR and not self.msix.is_valid_vector(config_vector):
            raise StateError(f"{self.name}: config_vector={config_vector} is not a vector "
                             f"of this device ({self.msix.count})")
        self._msix_enabled = self.msix.enabled     # as _msix_control_written would leave it
        self._restore_interrupts(config_vector, isr, drive_intx)
        try:
            self.core.restore_state(state, self.msix.is_valid_vector)
        except StateError:
            self._restore_interrupts(NO_VECTOR, 0, True)     # as a reset (status 0) leaves them
            raise

    def _restore_interrupts(self, config_vector: int, isr: int, drive_intx: bool) -> None:
        """The config vector and ISR.  INTx is PciFunction's state; without
        it, INTx follows the ISR as ``_signal`` and ``_read_isr`` keep it
        while MSI-X is off (§4.1.4.5)."""
        self.config_vector = config_vector
        with self._irq_lock:
            self._isr = isr
            if drive_intx and not self.msix.enabled:
                self.set_intx(bool(isr))
