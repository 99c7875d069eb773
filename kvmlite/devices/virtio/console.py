"""virtio-console (virtio 1.2 §5.3): one port, the guest's ``hvc0``.

receiveq (0) carries host input to the guest, transmitq (1) guest output to
the host; no VIRTIO_CONSOLE_F_MULTIPORT, no VIRTIO_CONSOLE_F_SIZE.

Host side: guest output goes to ``output(bytes)``, called on the thread that
delivered the transmitq notification, in order.  Input arrives through
:meth:`VirtioConsole.enqueue_input` from any thread (the terminal reader);
it is buffered (up to ``input_limit`` bytes, the rest is dropped and
counted) while the guest has no receive buffers posted, and delivered as
soon as it posts some (a receiveq notification).  The buffer survives a
device reset, so typing ahead of the driver loading is not lost.

Locks: ``_tx_lock`` serialises transmitq processing (so output keeps its
order even with notifications from several vCPU threads); ``_rx_lock``
guards the input buffer, receiveq processing and the activation.  Order:
transport lock, then ``_tx_lock``, then ``_rx_lock``.  The interrupt and
``on_needs_reset`` are called with neither device lock held.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Callable

from kvmlite.devices.virtio.device import (VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_VERSION_1,
                                           VIRTIO_ID_CONSOLE, VirtioDevice, VirtioInterrupt)
from kvmlite.devices.virtio.queue import DescriptorChain, Queue, QueueError
from kvmlite.devices.virtio.ratelimit import RateLimitedLog
from kvmlite.devices.virtio.serve import Served, serve_queue
from kvmlite.base.memory import GuestMemory
from kvmlite.base.state import Reader, pack_bytes

log = logging.getLogger(__name__)

RECEIVEQ = 0
TRANSMITQ = 1
CONFIG_SIZE = 12                  # §5.3.4: cols, rows, max_nr_ports, emerg_wr
OUTPUT_CHUNK = 64 * 1024          # bytes handed to ``output`` per call


@dataclass
class _Activation:
    memory: GuestMemory
    rx: Queue | None
    tx: Queue | None
    interrupt: VirtioInterrupt
    stopped: bool = False


class VirtioConsole(VirtioDevice):
    device_type = VIRTIO_ID_CONSOLE

    def __init__(self, output: Callable[[bytes], None], queue_size: int = 64, input_limit: int = 1 << 20) -> None:
        super().__init__()
        self.queue_max_sizes = (queue_size, queue_size)
        self._output = output
        self._input_limit = input_limit
        self._pending = bytearray()
        self._active: _Activation | None = None
        self._tx_lock = threading.Lock()
        self._rx_lock = threading.Lock()
        self._errors = RateLimitedLog(log)
        self._stats = dict.fromkeys(("tx_bytes", "rx_bytes", "rx_dropped", "output_errors", "queue_errors"), 0)

    # --- host side ---

    def enqueue_input(self, data: bytes) -> None:
        """Input for the guest (any thread)."""
        with self._rx_lock:
            room = max(self._input_limit - len(self._pending), 0)
            self._pending += data[:room]
            self._stats["rx_dropped"] += max(len(data) - room, 0)
        self._deliver()

    # --- VirtioDevice ---

    def device_features(self) -> int:
        return VIRTIO_F_VERSION_1 | VIRTIO_F_INDIRECT_DESC | VIRTIO_F_EVENT_IDX

    def read_config(self, offset: int, data: memoryview) -> None:
        data[:] = bytes(len(data))   # no F_SIZE, F_MULTIPORT or F_EMERG_WRITE: all fields unused

    def activate(self, memory: GuestMemory, queues: list[Queue], driver_features: int,
                 interrupt: VirtioInterrupt) -> None:
        self.reset()
        ready = [q if q.ready else None for q in queues[:2]]
        active = _Activation(memory, ready[RECEIVEQ], ready[TRANSMITQ], interrupt)
        error = None
        try:
            for queue in ready:
                if queue is not None:
                    queue.configure(memory, driver_features)
        except QueueError as exc:
            error = exc
        with self._tx_lock, self._rx_lock:
            self._active = active
        if error is not None:
            self._fail(active, error)
        else:
            self._deliver()

    def queue_notify(self, queue_index: int) -> None:
        if queue_index == RECEIVEQ:
            self._deliver()
        elif queue_index == TRANSMITQ:
            self._transmit()

    def reset(self) -> None:
        with self._tx_lock, self._rx_lock:
            if self._active is not None:
                self._active.stopped = True
            self._active = None

    def stats(self) -> dict[str, int]:
        return dict(self._stats)

    # --- snapshots (kvmlite.base.state) ---

    def save_device_state(self) -> dict:
        """Host input not yet delivered to the receiveq (§5.3.6.1).  The
        configuration space has nothing to save: without VIRTIO_CONSOLE_F_SIZE
        and F_MULTIPORT every field reads 0 (§5.3.4)."""
        with self._rx_lock:
            return {"pending_input": pack_bytes(self._pending)}

    def restore_device_state(self, state: dict) -> None:
        """Queue the saved input ahead of any typed since, and deliver what
        the driver has buffers for (the device is active again when the
        saved status had DRIVER_OK)."""
        saved = Reader(state, "virtio-console").bytes("pending_input")
        with self._rx_lock:
            self._pending[:0] = saved[:self._input_limit]
            self._stats["rx_dropped"] += max(len(saved) - self._input_limit, 0)
            del self._pending[self._input_limit:]
        self._deliver()

    # --- receiveq: host to guest ---

    def _deliver(self) -> None:
        with self._rx_lock:
            active = self._active
            if active is None or active.stopped or active.rx is None or not self._pending:
                return
            served = self._fill_receive_buffers(active.rx, active.memory)
        self._finish(active, RECEIVEQ, served)

    def _fill_receive_buffers(self, queue: Queue, memory: GuestMemory) -> Served:
        """Copy pending input into posted buffers (``_rx_lock`` held)."""
        served = Served()
        try:
            while self._pending:
                chain = queue.pop(memory)
                if chain is None:
                    if queue.enable_notification(memory):
                        continue
                    break
                queue.add_used(memory, chain.head, self._fill_one(chain))
                served.completed += 1
            if served.completed:
                served.notify = queue.needs_notification(memory)
        except QueueError as exc:
            served.error, served.notify = exc, served.completed > 0
        return served

    def _fill_one(self, chain: DescriptorChain) -> int:
        try:
            n = chain.writable_segments().scatter(chain.memory, self._pending)
        finally:
            chain.release()
        del self._pending[:n]
        self._stats["rx_bytes"] += n
        return n

    # --- transmitq: guest to host ---

    def _transmit(self) -> None:
        with self._tx_lock:
            active = self._active
            if active is None or active.stopped or active.tx is None:
                return
            served = serve_queue(active.tx, active.memory, self._emit)
        self._finish(active, TRANSMITQ, served)

    def _emit(self, chain: DescriptorChain) -> int:
        """Hand a transmit buffer to the host (``_tx_lock`` held)."""
        for view in chain.readable:
            for start in range(0, len(view), OUTPUT_CHUNK):
                self._write_output(bytes(view[start:start + OUTPUT_CHUNK]))
        return 0    # the device wrote nothing into the chain

    def _write_output(self, data: bytes) -> None:
        try:
            self._output(data)
            self._stats["tx_bytes"] += len(data)
        except Exception as exc:  # the host sink failed: drop the output, keep the guest going
            self._stats["output_errors"] += 1
            self._errors.warning(f"virtio-console: output failed: {exc}")

    # --- common ---

    def _finish(self, active: _Activation, queue_index: int, served: Served) -> None:
        """Interrupt and error reporting, with no device lock held."""
        if served.notify:
            active.interrupt.signal_used_queue(queue_index)
        if served.error is not None:
            self._fail(active, served.error)

    def _fail(self, active: _Activation, error: QueueError) -> None:
        with self._tx_lock, self._rx_lock:
            active.stopped = True
        self._stats["queue_errors"] += 1
        self._errors.warning(f"virtio-console: {error}; device needs reset")
        self.on_needs_reset(str(error))
