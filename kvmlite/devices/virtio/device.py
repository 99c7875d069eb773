"""The contract between a virtio device and its transport (virtio 1.2 §2-§4).

kvmtool splits a virtio device from its transport with an ops table; this
is the same split.  A transport (PCI, MMIO) owns feature negotiation, the
status byte, queue configuration registers and interrupts; a device owns its
configuration space and what its queues mean.

Threads and locks: the transport holds its own lock (the bus lock of the
transport, see :meth:`kvmlite.devices.bus.Bus.lock_of`) whenever it calls a
method of :class:`VirtioDevice`.  ``queue_notify`` runs on the I/O thread
(it is reached through an ioeventfd) unless the transport has no ioeventfd,
in which case it runs on the vCPU thread that wrote the notify register.
A device may hand work to its own worker threads; it must then stop them in
``reset``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from kvmlite.devices.virtio.queue import Queue
    from kvmlite.base.memory import GuestMemory

# virtio 1.2 §5: device IDs
VIRTIO_ID_NET = 1
VIRTIO_ID_BLOCK = 2
VIRTIO_ID_CONSOLE = 3
VIRTIO_ID_RNG = 4
VIRTIO_ID_BALLOON = 5
VIRTIO_ID_9P = 9
VIRTIO_ID_VSOCK = 19

# virtio 1.2 §6: reserved feature bits
VIRTIO_F_INDIRECT_DESC = 1 << 28
VIRTIO_F_EVENT_IDX = 1 << 29
VIRTIO_F_VERSION_1 = 1 << 32
VIRTIO_F_ACCESS_PLATFORM = 1 << 33
VIRTIO_F_RING_PACKED = 1 << 34
VIRTIO_F_IN_ORDER = 1 << 35

# virtio 1.2 §2.1: device status bits
STATUS_ACKNOWLEDGE = 1
STATUS_DRIVER = 2
STATUS_DRIVER_OK = 4
STATUS_FEATURES_OK = 8
STATUS_DEVICE_NEEDS_RESET = 64
STATUS_FAILED = 128


class VirtioInterrupt(Protocol):
    """How a device tells the driver something happened (§2.3, §4.1.4.5)."""

    def signal_used_queue(self, queue_index: int) -> None:
        """The device put buffers in queue ``queue_index``'s used ring."""

    def signal_config_change(self) -> None:
        """The configuration space (or DEVICE_NEEDS_RESET) changed."""

    def queue_irqfd(self, queue_index: int) -> int | None:
        """An eventfd whose writes raise queue ``queue_index``'s interrupt
        with no VMM thread involved (virtio-pci: the irqfd of the queue's
        MSI-X vector), for a device that hands the queue to the kernel
        (vhost); None when the interrupt needs the VMM (INTx and virtio-mmio
        set a status register; no vector).  Valid until the next
        :meth:`VirtioDevice.interrupts_changed`; the transport owns the fd."""


class QueueKicks(Protocol):
    """The eventfds a transport's queue doorbells signal (KVM ioeventfds,
    served on the device's event loop), lent to a device that hands its
    queues to the kernel (vhost).  Called under the transport's lock."""

    def take(self, queue_index: int) -> int | None:
        """Stop reading queue ``queue_index``'s doorbell eventfd on the loop
        and return it (still the transport's); None when it has none."""

    def give_back(self, queue_index: int) -> None:
        """Read the eventfd on the loop again."""


class VirtioDevice(ABC):
    """One virtio device, independent of the transport that carries it."""

    #: virtio device ID (VIRTIO_ID_*)
    device_type: int
    #: maximum size of each virtqueue; the number of entries is the number of queues
    queue_max_sizes: tuple[int, ...]
    #: whether a snapshot may save this device (docs/snapshot.md); a device
    #: whose state is not covered yet sets it False and its transport's
    #: ``save_state`` refuses
    snapshot_supported: bool = True

    def __init__(self) -> None:
        #: set by the transport: called with a one-line reason when the
        #: device hits a driver error it cannot recover from; the transport
        #: sets DEVICE_NEEDS_RESET and signals a configuration change.
        self.on_needs_reset = lambda reason: None
        #: set by the transport when its doorbells are eventfds
        self.queue_kicks: QueueKicks | None = None

    @abstractmethod
    def device_features(self) -> int:
        """Feature bits offered, including VIRTIO_F_VERSION_1."""

    @abstractmethod
    def read_config(self, offset: int, data: memoryview) -> None:
        """Fill ``data`` from the device configuration space at ``offset``;
        bytes past the end of the space read as zero."""

    def write_config(self, offset: int, data: bytes) -> None:
        """A driver write to the configuration space (ignored by default)."""

    @abstractmethod
    def activate(self, memory: "GuestMemory", queues: list["Queue"], driver_features: int,
                 interrupt: VirtioInterrupt) -> None:
        """The driver set DRIVER_OK: start serving ``queues``.

        ``queues`` has one entry per ``queue_max_sizes`` entry; a queue the
        driver did not enable has ``ready == False``."""

    @abstractmethod
    def queue_notify(self, queue_index: int) -> None:
        """The driver made buffers available in queue ``queue_index``."""

    @abstractmethod
    def reset(self) -> None:
        """Device reset (status written 0): drop every queue and worker,
        release guest memory references, and become ready for a new driver."""

    def interrupts_changed(self) -> None:
        """While activated, the driver changed how queue interrupts are
        delivered (virtio-pci: a queue's MSI-X vector, MSI-X enabled or
        disabled), so :meth:`VirtioInterrupt.queue_irqfd` may answer
        differently.  Under the transport's lock; ignored by default."""

    def stats(self) -> dict[str, int]:
        """Per-device I/O counters (requests, bytes, errors...)."""
        return {}

    # --- snapshots (kvmlite.base.state) ---

    def save_device_state(self) -> dict:
        """The device's own part of a snapshot (JSON values only), beyond
        what the transport saves (status, features, queues).  Called by the
        transport's ``save_state`` with every vCPU parked and the
        transport's lock held, before the queues are read: a device first
        finishes the requests it has in flight.  None by default."""
        return {}

    def restore_device_state(self, state: dict) -> None:
        """Load what :meth:`save_device_state` returned, on a freshly built
        device.  Called by the transport's ``restore_state`` under its lock,
        after it has re-activated the device when the saved status had
        DRIVER_OK (so the device may use its queues here).  Raises
        :class:`kvmlite.base.state.StateError` for a state it cannot load."""
