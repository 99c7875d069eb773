"""What every virtio transport does the same way: feature negotiation
(virtio 1.2 §2.2, §3.1.1), the device status state machine (§2.1), queue
configuration checks (§2.6, §2.7, §2.8) and device activation and reset.

The PCI and MMIO transports own a :class:`VirtioTransportCore` each and only
add their register layouts and interrupt mechanisms.

Threads: every method runs under the transport's lock (its bus lock), except
:meth:`VirtioTransportCore.mark_needs_reset`, which a device may call from
any thread and only sets a flag.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable

from kvmlite.devices.virtio.device import (STATUS_ACKNOWLEDGE, STATUS_DEVICE_NEEDS_RESET,
                                           STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FAILED,
                                           STATUS_FEATURES_OK, VIRTIO_F_RING_PACKED,
                                           VIRTIO_F_VERSION_1, VirtioDevice, VirtioInterrupt)
from kvmlite.base.state import Reader, StateError

if TYPE_CHECKING:
    from kvmlite.devices.virtio.queue import Queue
    from kvmlite.base.memory import GuestMemory

log = logging.getLogger(__name__)

#: virtio 1.2 §4.1.5.1.2: "no MSI-X vector"
NO_VECTOR = 0xFFFF
#: the largest queue any transport accepts (§2.7: Queue Size <= 32768)
MAX_QUEUE_SIZE = 32768

QueueFactory = Callable[[int], "Queue"]
#: whether the transport can deliver an MSI-X vector (virtio-pci); a
#: queue restored with any other vector is refused
VectorCheck = Callable[[int], bool]
#: the status bits a driver sets before DRIVER_OK (§3.1.1 steps 1-5)
STATUS_BEFORE_DRIVER_OK = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK

#: Queue attribute for each of the three queue addresses
QUEUE_ADDRESS_FIELDS = ("desc_table", "avail_ring", "used_ring")


def default_queue_factory(max_size: int) -> "Queue":
    from kvmlite.devices.virtio.queue import Queue
    return Queue(max_size)


class GuestErrorLog:
    """Logs a driver's mistakes: the first ``limit`` at WARNING, the rest at
    DEBUG, so a hostile guest cannot flood the log."""

    def __init__(self, logger: logging.Logger, name: str, limit: int = 32) -> None:
        self.logger = logger
        self.name = name
        self.limit = limit
        self.count = 0

    def __call__(self, fmt: str, *args: object) -> None:
        self.count += 1
        level = logging.WARNING if self.count <= self.limit else logging.DEBUG
        self.logger.log(level, "%s: guest error: " + fmt, self.name, *args)
        if self.count == self.limit:
            self.logger.warning("%s: further guest errors are logged at DEBUG", self.name)


def split_ring_sizes(size: int) -> tuple[int, int, int]:
    """Bytes of descriptor table, available ring, used ring (§2.7)."""
    return 16 * size, 6 + 2 * size, 6 + 8 * size


class VirtioTransportCore:
    """Transport-independent state of one virtio device."""

    def __init__(self, device: VirtioDevice, memory: "GuestMemory", interrupt: VirtioInterrupt,
                 name: str, queue_factory: QueueFactory | None = None) -> None:
        self.device = device
        self.memory = memory
        self.interrupt = interrupt
        self.name = name
        self.bad = GuestErrorLog(log, name)
        factory = queue_factory or default_queue_factory
        self.queues: list["Queue"] = [factory(size) for size in device.queue_max_sizes]
        self.device_features = device.device_features()
        if not self.device_features & VIRTIO_F_VERSION_1:
            log.warning("%s: device does not offer VIRTIO_F_VERSION_1; no driver can accept it",
                        name)
        self.needs_reset = False
        #: bumped on every configuration change notification (§2.5.1)
        self.config_generation = 0
        self._clear()

    def _clear(self) -> None:
        self.driver_features = 0
        self.device_feature_select = 0
        self.driver_feature_select = 0
        self.queue_select = 0
        self.status = 0
        self.activated = False
        self.needs_reset = False
        self._early_notify: set[int] = set()
        for queue in self.queues:
            queue.reset()
            queue.msix_vector = NO_VECTOR

    # --- features (§2.2, §6) ---

    def device_features_window(self) -> int:
        """The 32 feature bits ``device_feature_select`` selects (0 past bit 63)."""
        if self.device_feature_select > 1:
            return 0
        return (self.device_features >> (32 * self.device_feature_select)) & 0xFFFF_FFFF

    def driver_features_window(self) -> int:
        if self.driver_feature_select > 1:
            return 0
        return (self.driver_features >> (32 * self.driver_feature_select)) & 0xFFFF_FFFF

    def write_driver_features(self, value: int) -> None:
        if self.status & STATUS_FEATURES_OK:
            self.bad("driver features written after FEATURES_OK (ignored)")
            return
        if self.driver_feature_select > 1:
            if value:
                self.bad("driver feature word %d does not exist", self.driver_feature_select)
            return
        shift = 32 * self.driver_feature_select
        mask = 0xFFFF_FFFF << shift
        self.driver_features = (self.driver_features & ~mask) | ((value & 0xFFFF_FFFF) << shift)

    def _features_acceptable(self) -> bool:
        unoffered = self.driver_features & ~self.device_features
        if unoffered:
            self.bad("driver accepted features %#x the device never offered; FEATURES_OK refused",
                     unoffered)
            return False
        if not self.driver_features & VIRTIO_F_VERSION_1:
            self.bad("driver did not accept VIRTIO_F_VERSION_1; FEATURES_OK refused")
            return False
        return True

    # --- device status (§2.1, §3.1.1) ---

    def read_status(self) -> int:
        return self.status | (STATUS_DEVICE_NEEDS_RESET if self.needs_reset else 0)

    def write_status(self, value: int) -> bool:
        """Apply a driver status write; True when it was a reset (0)."""
        value &= 0xFF
        if value == 0:
            self.reset()
            return True
        value &= ~STATUS_DEVICE_NEEDS_RESET          # device-owned (§2.1.1)
        if self.status & ~value:
            self.bad("status %#x would clear bits of %#x; only writing 0 resets (ignored)",
                     value, self.status)
            return False
        added = value & ~self.status
        if added & STATUS_FEATURES_OK and not self._features_acceptable():
            value &= ~STATUS_FEATURES_OK
        if added & STATUS_DRIVER_OK and not self._may_start(value):
            value &= ~STATUS_DRIVER_OK
        self.status = value
        if value & added & STATUS_DRIVER_OK:
            self._activate()
        return False

    def _may_start(self, status: int) -> bool:
        needed = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK
        if status & needed != needed or status & STATUS_FAILED:
            self.bad("DRIVER_OK with status %#x (needs ACKNOWLEDGE, DRIVER, FEATURES_OK; "
                     "no FAILED); refused", status)
            return False
        return True

    def _activate(self) -> None:
        try:
            self.device.activate(self.memory, self.queues, self.driver_features, self.interrupt)
        except Exception as exc:
            log.exception("%s: device activation failed", self.name)
            if self.mark_needs_reset(f"activation failed: {exc}"):
                self.interrupt.signal_config_change()
            return
        self.activated = True
        early, self._early_notify = sorted(self._early_notify), set()
        for index in early:
            self.notify(index)

    def reset(self) -> None:
        """Status 0 (§2.1.2, §4.1.4.3.2): the device forgets the driver."""
        try:
            self.device.reset()
        except Exception:
            log.exception("%s: device reset failed", self.name)
        self._clear()

    def mark_needs_reset(self, reason: str) -> bool:
        """Set DEVICE_NEEDS_RESET; True when the driver must be told with a
        configuration change notification (DRIVER_OK set, §2.1.2)."""
        self.bad("device needs reset: %s", reason)    # rate-limited: a driver may loop on this
        first = not self.needs_reset
        self.needs_reset = True
        return first and bool(self.status & STATUS_DRIVER_OK)

    # --- queues (§2.6, §4.1.4.3, §4.2.2) ---

    @property
    def selected(self) -> "Queue | None":
        """The queue ``queue_select`` names, or None past the last queue."""
        if self.queue_select < len(self.queues):
            return self.queues[self.queue_select]
        return None

    def _configurable(self, what: str) -> "Queue | None":
        queue = self.selected
        if queue is None:
            self.bad("%s for queue %d, which does not exist", what, self.queue_select)
        elif self.status & STATUS_DRIVER_OK:
            self.bad("%s for queue %d after DRIVER_OK (ignored)", what, self.queue_select)
        elif queue.ready:
            self.bad("%s for queue %d while it is enabled (ignored)", what, self.queue_select)
        else:
            return queue
        return None

    def set_queue_size(self, value: int) -> None:
        queue = self._configurable("queue size")
        if queue is None:
            return
        packed = self.driver_features & VIRTIO_F_RING_PACKED
        if not 1 <= value <= queue.max_size or (not packed and value & (value - 1)):
            self.bad("queue %d size %d invalid (max %d, power of two); ignored",
                     self.queue_select, value, queue.max_size)
            return
        queue.size = value

    def set_queue_address(self, field: str, value: int, half: int | None) -> None:
        """Set a queue address: all 64 bits (``half`` None) or its low (0)
        or high (1) dword."""
        queue = self._configurable(field)
        if queue is None:
            return
        old = getattr(queue, field)
        if half is None:
            new = value & 0xFFFF_FFFF_FFFF_FFFF
        else:
            shift = 32 * half
            new = (old & ~(0xFFFF_FFFF << shift)) | ((value & 0xFFFF_FFFF) << shift)
        setattr(queue, field, new)

    def queue_address(self, field: str) -> int:
        queue = self.selected
        return getattr(queue, field) if queue is not None else 0

    def enable_queue(self) -> None:
        queue = self._configurable("queue enable")
        if queue is None:
            return
        if not self.status & STATUS_FEATURES_OK:
            self.bad("queue %d enabled before FEATURES_OK (ignored)", self.queue_select)
            return
        problem = self._queue_problem(queue)
        if problem:
            self.bad("queue %d not enabled: %s", self.queue_select, problem)
            return
        queue.ready = True

    def disable_queue(self) -> None:
        """virtio-mmio QueueReady = 0 (§4.2.2): allowed before DRIVER_OK."""
        queue = self.selected
        if queue is None or not queue.ready:
            return
        if self.status & STATUS_DRIVER_OK:
            self.bad("queue %d disabled after DRIVER_OK without a reset (ignored)",
                     self.queue_select)
            return
        queue.ready = False

    def _queue_problem(self, queue: "Queue") -> str | None:
        sizes = split_ring_sizes(queue.size)
        aligns = (16, 2, 4)
        if self.driver_features & VIRTIO_F_RING_PACKED:
            sizes, aligns = (16 * queue.size, 4, 4), (16, 4, 4)
        for field, size, align in zip(QUEUE_ADDRESS_FIELDS, sizes, aligns):
            address = getattr(queue, field)
            if address % align:
                return f"{field} {address:#x} not {align}-byte aligned"
            if not self.memory.contains(address, size):
                return f"{field} {address:#x}+{size:#x} is not guest RAM"
        return None

    # --- notifications and configuration space ---

    def may_signal_used(self) -> bool:
        """§3.1.1: no used buffer notifications before DRIVER_OK (a device
        worker finishing after a reset is dropped here).  DRIVER_OK is set
        before ``activate`` runs, so a device may signal from inside it."""
        return bool(self.status & STATUS_DRIVER_OK)

    def notify(self, index: int) -> None:
        """The driver notified queue ``index`` (§2.9)."""
        if index >= len(self.queues):
            self.bad("notify for queue %d, which does not exist", index)
            return
        if not self.activated:
            if self.status & STATUS_FEATURES_OK:
                self._early_notify.add(index)
            return
        if not self.queues[index].ready or self.needs_reset:
            log.debug("%s: notify for queue %d ignored (not ready or needs reset)",
                      self.name, index)
            return
        try:
            self.device.queue_notify(index)
        except Exception as exc:
            log.exception("%s: queue %d notify failed", self.name, index)
            if self.mark_needs_reset(f"queue {index} notify failed: {exc}"):
                self.interrupt.signal_config_change()

    def interrupts_changed(self) -> None:
        """The driver changed how queue interrupts are delivered (an MSI-X
        vector, MSI-X on or off): an activated device may have handed
        :meth:`VirtioInterrupt.queue_irqfd` answers to the kernel."""
        if not self.activated:
            return
        try:
            self.device.interrupts_changed()
        except Exception as exc:
            log.exception("%s: interrupt change failed", self.name)
            if self.mark_needs_reset(f"interrupt change failed: {exc}"):
                self.interrupt.signal_config_change()

    def read_config(self, offset: int, data: memoryview) -> None:
        try:
            self.device.read_config(offset, data)
        except Exception:
            log.exception("%s: config read at %#x failed", self.name, offset)
            data[:] = bytes(len(data))

    def write_config(self, offset: int, data: bytes) -> None:
        try:
            self.device.write_config(offset, data)
        except Exception:
            log.exception("%s: config write at %#x failed", self.name, offset)

    # --- snapshots (kvmlite.base.state; the transport holds its lock) ---

    def save_state(self) -> dict:
        """The transport-independent state: status (§2.1), feature
        negotiation (§2.2), the selectors, the configuration generation
        (§2.5.1), each queue, and the device's own part under "device".
        The device part is taken first, so a device finishes its in-flight
        requests before its queues' positions are read."""
        if not self.device.snapshot_supported:
            raise StateError(f"{self.name} ({type(self.device).__name__}): "
                             f"saving its state is not supported yet")
        device = self.device.save_device_state()
        return {"status": self.status, "needs_reset": self.needs_reset,
                "driver_features": self.driver_features,
                "device_feature_select": self.device_feature_select,
                "driver_feature_select": self.driver_feature_select,
                "queue_select": self.queue_select, "config_generation": self.config_generation,
                "early_notify": sorted(self._early_notify),
                "queues": [queue.save_state() for queue in self.queues], "device": device}

    def restore_state(self, state: dict, vector_ok: VectorCheck | None = None) -> None:
        """Put the transport where the guest's driver had driven it; with
        DRIVER_OK, activate the device through the live path
        (:meth:`_activate`), then hand the device its part.  Any error
        leaves the transport reset (status 0) and raises StateError."""
        r = Reader(state, self.name)
        values = self._read_state(r)
        queues = r.list("queues", len(self.queues))
        device_state = r.sub("device").state
        try:
            self.reset()        # a fresh build is reset already; this makes sure
            self._apply_state(values, queues, vector_ok)
            self._restore_device(device_state)
        except StateError:
            self.reset()
            raise

    def _restore_device(self, state: dict) -> None:
        try:
            self.device.restore_device_state(state)
        except StateError as exc:
            raise StateError(f"{self.name}: {exc}") from None

    def _read_state(self, r: Reader) -> dict:
        """The scalar fields, checked against each other and the device."""
        values = {"status": r.int("status", 0, 0xFF) & ~STATUS_DEVICE_NEEDS_RESET,
                  "needs_reset": r.bool("needs_reset"), "driver_features": r.int("driver_features"),
                  "device_feature_select": r.int("device_feature_select", 0, 0xFFFF_FFFF),
                  "driver_feature_select": r.int("driver_feature_select", 0, 0xFFFF_FFFF),
                  "queue_select": r.int("queue_select", 0, 0xFFFF_FFFF),
                  "config_generation": r.int("config_generation"),
                  "early_notify": r.ints("early_notify", None, 0, len(self.queues) - 1)}
        status, features = values["status"], values["driver_features"]
        if status & STATUS_FEATURES_OK:     # §2.2: only offered features, VERSION_1 among them
            unoffered = features & ~self.device_features
            if unoffered or not features & VIRTIO_F_VERSION_1:
                raise StateError(f"{self.name}: driver_features={features:#x} were not accepted by "
                                 f"this device (offers {self.device_features:#x})")
        if status & STATUS_DRIVER_OK and (status & STATUS_BEFORE_DRIVER_OK != STATUS_BEFORE_DRIVER_OK
                                          or status & STATUS_FAILED):
            raise StateError(f"{self.name}: status={status:#x} has DRIVER_OK without "
                             f"ACKNOWLEDGE, DRIVER and FEATURES_OK, or with FAILED (§3.1.1)")
        return values

    def _apply_state(self, values: dict, queues: list, vector_ok: VectorCheck | None) -> None:
        status = values.pop("status")
        needs_reset = values.pop("needs_reset")
        early = values.pop("early_notify")
        for name, value in values.items():
            setattr(self, name, value)
        for index, (queue, saved) in enumerate(zip(self.queues, queues)):
            self._restore_queue(index, queue, saved, status, vector_ok)
        self.status = status
        if status & STATUS_DRIVER_OK:
            self._restart(needs_reset)
        else:
            self._early_notify = set(early) if status & STATUS_FEATURES_OK else set()
            self.needs_reset = needs_reset

    def _restore_queue(self, index: int, queue: "Queue", saved: object, status: int,
                       vector_ok: VectorCheck | None) -> None:
        """One queue, checked as :meth:`enable_queue` checks a live enable
        (§2.6: after FEATURES_OK, rings inside guest RAM and aligned)."""
        part = f"{self.name} queue {index}"
        queue.restore_state(saved, part)        # type: ignore[arg-type]
        if queue.msix_vector != NO_VECTOR and vector_ok is not None \
                and not vector_ok(queue.msix_vector):
            raise StateError(f"{part}: msix_vector={queue.msix_vector} is not a vector of this device")
        if not queue.ready:
            return
        if not status & STATUS_FEATURES_OK:
            raise StateError(f"{part}: enabled before FEATURES_OK (§2.6)")
        problem = self._queue_problem(queue)
        if problem:
            raise StateError(f"{part}: {problem}")

    def _restart(self, needs_reset: bool) -> None:
        """DRIVER_OK was set: activate the device as the status write did
        (§3.1.1 step 8), keeping each queue's last interrupt decision
        (§2.7.10), which ``Queue.configure`` forgets.  A device that had
        asked for a reset (§2.1.2) stayed stopped and is not started."""
        signalled = [queue.signalled_used() for queue in self.queues]
        if needs_reset:
            self.activated = True
            self.needs_reset = True
            return
        self._activate()
        if not self.activated:
            raise StateError(f"{self.name}: the device did not start again (its error is logged)")
        for queue, value in zip(self.queues, signalled):
            if queue.signalled_used() is None:
                queue.set_signalled_used(value)
