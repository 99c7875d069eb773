"""virtio over MMIO, version 2 (virtio 1.2 §4.2).

Each device is a 4 KiB window (``layout.VIRTIO_MMIO_SIZE``) with the
register map of §4.2.2 and its configuration space from 0x100, plus one
interrupt line.  Linux finds the device from the kernel command line
(``virtio_mmio.device=<size>@<base>:<irq>``, see :func:`cmdline_device`).

Registers are 32 bits wide and must be accessed as such (§4.2.2.2); other
widths are ignored with a debug line.  The configuration space accepts 8-,
16- and 32-bit accesses (and 64-bit, which some drivers split anyway).

Interrupt: the line is high while InterruptStatus is not zero and drops
when the driver acknowledges the last bit (§4.2.3.4).  A bit that becomes
set while the line is already high re-raises it (low, then high), so a
driver whose IOAPIC pin is edge-triggered, as Firecracker's guests are,
does not lose the event.

Threads and locks: as for virtio-pci, registers run under :attr:`lock`
(``Bus.lock_of(transport)``); the ioeventfd path takes it too; interrupt
signalling takes only ``_irq_lock``.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from kvmlite.arch.x86 import layout
from kvmlite.devices.bus import Bus
from kvmlite.devices.interrupts import IoEventRegistrar
from kvmlite.devices.irq import IrqLine
from kvmlite.devices.virtio.device import VirtioDevice
from kvmlite.devices.virtio.transport.common import QueueFactory, VirtioTransportCore
from kvmlite.devices.virtio.transport.doorbells import Doorbell, ReaderLoop, make_doorbells
from kvmlite.base.state import Reader, StateError

if TYPE_CHECKING:
    from kvmlite.base.memory import GuestMemory

log = logging.getLogger(__name__)

MAGIC_VALUE = 0x7472_6976            # "virt" little-endian
VERSION = 2
#: VendorID register: "KVML" little-endian (§4.2.2: any value)
VENDOR_ID = 0x4C4D_564B

# §4.2.2 register offsets
MAGIC = 0x000
VERSION_REG = 0x004
DEVICE_ID = 0x008
VENDOR_ID_REG = 0x00C
DEVICE_FEATURES = 0x010
DEVICE_FEATURES_SEL = 0x014
DRIVER_FEATURES = 0x020
DRIVER_FEATURES_SEL = 0x024
QUEUE_SEL = 0x030
QUEUE_NUM_MAX = 0x034
QUEUE_NUM = 0x038
QUEUE_READY = 0x044
QUEUE_NOTIFY = 0x050
INTERRUPT_STATUS = 0x060
INTERRUPT_ACK = 0x064
STATUS = 0x070
QUEUE_DESC_LOW = 0x080
QUEUE_DRIVER_LOW = 0x090
QUEUE_DEVICE_LOW = 0x0A0
SHM_SEL = 0x0AC
SHM_LEN_LOW = 0x0B0
SHM_BASE_HIGH = 0x0BC
QUEUE_RESET = 0x0C0
CONFIG_GENERATION = 0x0FC
CONFIG = 0x100

INTERRUPT_USED_BUFFER = 0x1
INTERRUPT_CONFIG_CHANGE = 0x2

#: QueueDesc/Driver/Device Low and High -> (Queue attribute, half)
QUEUE_ADDRESS_REGS = {
    QUEUE_DESC_LOW: ("desc_table", 0), QUEUE_DESC_LOW + 4: ("desc_table", 1),
    QUEUE_DRIVER_LOW: ("avail_ring", 0), QUEUE_DRIVER_LOW + 4: ("avail_ring", 1),
    QUEUE_DEVICE_LOW: ("used_ring", 0), QUEUE_DEVICE_LOW + 4: ("used_ring", 1),
}


def _format_size(size: int) -> str:
    for unit, suffix in ((1 << 20, "M"), (1 << 10, "K")):
        if size % unit == 0:
            return f"{size // unit}{suffix}"
    return str(size)


def cmdline_device(base: int, irq: int, size: int = layout.VIRTIO_MMIO_SIZE) -> str:
    """The kernel command-line fragment that makes Linux probe a virtio-mmio
    device (drivers/virtio/virtio_mmio.c: ``<size>@<baseaddr>:<irq>``)."""
    return f"virtio_mmio.device={_format_size(size)}@{base:#x}:{irq}"


class VirtioMmioTransport:
    """A virtio device as a bus device; :meth:`attach` places it."""

    def __init__(self, device: VirtioDevice, memory: "GuestMemory", irq: IrqLine, *,
                 ioevents: IoEventRegistrar | None = None, loop: ReaderLoop | None = None,
                 name: str | None = None, queue_factory: QueueFactory | None = None) -> None:
        self.name = name or f"virtio-mmio-{device.device_type}"
        self.irq = irq
        self.core = VirtioTransportCore(device, memory, self, self.name, queue_factory)
        self.lock = threading.Lock()      # replaced by the bus lock in attach()
        self.base: int | None = None
        self._irq_lock = threading.Lock()
        self._interrupt_status = 0
        self._level = False
        self.doorbells = make_doorbells(self.name, len(self.core.queues), ioevents, loop,
                                        self._doorbell)
        device.queue_kicks = self.doorbells
        device.on_needs_reset = self._device_needs_reset

    @property
    def device(self) -> VirtioDevice:
        return self.core.device

    def attach(self, bus: Bus, base: int) -> None:
        """Register the window at ``base`` on ``bus`` and its doorbells
        (QueueNotify with datamatch = queue index)."""
        bus.register(base, layout.VIRTIO_MMIO_SIZE, self, self.name)
        self.lock = bus.lock_of(self)
        self.base = base
        if self.doorbells is not None:
            self.doorbells.place([Doorbell(base + QUEUE_NOTIFY, 4, False, q)
                                  for q in range(len(self.core.queues))])

    def close(self) -> None:
        if self.doorbells is not None:
            self.doorbells.close()

    # --- BusDevice (vCPU threads, under self.lock) ---

    def read(self, offset: int, data: memoryview) -> None:
        if offset >= CONFIG:
            self._config_read(offset - CONFIG, data)
        elif len(data) != 4 or offset % 4:
            log.debug("%s: ignored %d-byte register read at %#x", self.name, len(data), offset)
            data[:] = bytes(len(data))
        else:
            data[:] = (self._register(offset) & 0xFFFF_FFFF).to_bytes(4, "little")

    def write(self, offset: int, data: bytes) -> None:
        if offset >= CONFIG:
            self._config_write(offset - CONFIG, data)
        elif len(data) != 4 or offset % 4:
            log.debug("%s: ignored %d-byte register write at %#x", self.name, len(data), offset)
        else:
            self._set_register(offset, int.from_bytes(data, "little"))

    def _register(self, offset: int) -> int:
        core, queue = self.core, self.core.selected
        match offset:
            case 0x000: return MAGIC_VALUE
            case 0x004: return VERSION
            case 0x008: return core.device.device_type
            case 0x00C: return VENDOR_ID
            case 0x010: return core.device_features_window()
            case 0x034: return queue.max_size if queue else 0
            case 0x038: return queue.size if queue else 0
            case 0x044: return int(bool(queue and queue.ready))
            case 0x060: return self._interrupt_status
            case 0x070: return core.read_status()
            case 0x0B0 | 0x0B4 | 0x0B8 | 0x0BC: return 0xFFFF_FFFF   # no shared memory regions
            case 0x0FC: return core.config_generation
        if offset in QUEUE_ADDRESS_REGS:
            field, half = QUEUE_ADDRESS_REGS[offset]
            return core.queue_address(field) >> (32 * half)
        return 0

    def _set_register(self, offset: int, value: int) -> None:
        core = self.core
        match offset:
            case 0x014: core.device_feature_select = value
            case 0x020: core.write_driver_features(value)
            case 0x024: core.driver_feature_select = value
            case 0x030: core.queue_select = value
            case 0x038: core.set_queue_size(value)
            case 0x044: core.enable_queue() if value else core.disable_queue()
            case 0x050: self._notify(value)
            case 0x064: self._ack(value)
            case 0x070: self._write_status(value)
            case 0x0AC: pass                                  # SHMSel: no regions to select
            case _ if offset in QUEUE_ADDRESS_REGS:
                field, half = QUEUE_ADDRESS_REGS[offset]
                core.set_queue_address(field, value, half)
            case _: core.bad("write of %#x to read-only or unknown register %#x", value, offset)

    def _config_read(self, offset: int, data: memoryview) -> None:
        if len(data) not in (1, 2, 4, 8) or CONFIG + offset + len(data) > layout.VIRTIO_MMIO_SIZE:
            self.core.bad("%d-byte config read at %#x ignored", len(data), offset)
            data[:] = bytes(len(data))
            return
        self.core.read_config(offset, data)

    def _config_write(self, offset: int, data: bytes) -> None:
        if len(data) not in (1, 2, 4, 8) or CONFIG + offset + len(data) > layout.VIRTIO_MMIO_SIZE:
            self.core.bad("%d-byte config write at %#x ignored", len(data), offset)
            return
        self.core.write_config(offset, data)

    def _write_status(self, value: int) -> None:
        if self.core.write_status(value):
            with self._irq_lock:
                self._interrupt_status = 0
                self._drive(False)

    # --- notifications ---

    def _notify(self, value: int) -> None:
        # §4.2.2: without VIRTIO_F_NOTIFICATION_DATA the value is the queue index
        self.core.notify(value & 0xFFFF)

    def _doorbell(self, queue: int) -> None:
        """I/O thread: queue ``queue``'s ioeventfd fired."""
        with self.lock:
            self.core.notify(queue)

    # --- interrupts: VirtioInterrupt (any thread) ---

    def signal_used_queue(self, queue_index: int) -> None:
        if self.core.may_signal_used():
            self._raise(INTERRUPT_USED_BUFFER)

    def signal_config_change(self) -> None:
        with self._irq_lock:
            self.core.config_generation += 1
        self._raise(INTERRUPT_CONFIG_CHANGE)

    def queue_irqfd(self, queue_index: int) -> int | None:
        """None: InterruptStatus must be set by the VMM (§4.2.2), so a used
        buffer interrupt always passes through :meth:`signal_used_queue`."""
        return None

    def _raise(self, bit: int) -> None:
        with self._irq_lock:
            new = bit & ~self._interrupt_status
            self._interrupt_status |= bit
            if new and self._level:
                self._drive(False)          # a fresh edge for edge-triggered pins
            self._drive(True)

    def _ack(self, value: int) -> None:
        with self._irq_lock:
            self._interrupt_status &= ~value
            if not self._interrupt_status:
                self._drive(False)

    def _drive(self, level: bool) -> None:
        if level != self._level:
            self._level = level
            self.irq.set_level(level)

    def _device_needs_reset(self, reason: str) -> None:
        if self.core.mark_needs_reset(reason):
            self.signal_config_change()

    # --- snapshots (kvmlite.base.state) ---

    def save_state(self) -> dict:
        """The registers of §4.2.2 (the core's state, the device's part
        under "device") and InterruptStatus (§4.2.3.4).  The window's base
        and doorbells are configuration: the fresh build has them."""
        with self.lock:
            state = self.core.save_state()
            with self._irq_lock:
                state["interrupt_status"] = self._interrupt_status
        return state

    def restore_state(self, state: dict) -> None:
        """On a freshly built and attached transport (its doorbells already
        placed at QueueNotify, as :meth:`attach` does at VM start): the
        interrupt line is raised again for a pending InterruptStatus, then
        the core replays the driver's setup, activating the device when the
        status has DRIVER_OK."""
        pending = Reader(state, self.name).int(
            "interrupt_status", 0, INTERRUPT_USED_BUFFER | INTERRUPT_CONFIG_CHANGE)
        with self.lock:
            self._set_interrupt_status(pending)
            try:
                self.core.restore_state(state)
            except StateError:
                self._set_interrupt_status(0)
                raise

    def _set_interrupt_status(self, value: int) -> None:
        with self._irq_lock:
            self._interrupt_status = value
            self._drive(bool(value))
