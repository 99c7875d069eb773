"""virtio-rng, the entropy device (virtio 1.2 §5.4).

One requestq; each chain's device-writable buffers are filled from the
host's ``getrandom(2)``, at most ``max_request`` bytes per chain to bound
the work a hostile driver can ask for with one descriptor.

The work is small and never blocks once the host pool is initialised, so
it runs on the thread that delivered the notification, under ``_lock``;
the interrupt and ``on_needs_reset`` are called after releasing it.
"""

from __future__ import annotations

import logging
import os
import threading

from kvmlite.devices.virtio.device import (VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_VERSION_1,
                                           VIRTIO_ID_RNG, VirtioDevice, VirtioInterrupt)
from kvmlite.devices.virtio.queue import DescriptorChain, Queue, QueueError
from kvmlite.devices.virtio.ratelimit import RateLimitedLog
from kvmlite.devices.virtio.serve import serve_queue
from kvmlite.base.memory import GuestMemory

log = logging.getLogger(__name__)

MAX_REQUEST = 64 * 1024


class VirtioRng(VirtioDevice):
    device_type = VIRTIO_ID_RNG

    def __init__(self, queue_size: int = 64, max_request: int = MAX_REQUEST) -> None:
        super().__init__()
        self.queue_max_sizes = (queue_size,)
        self._max_request = max_request
        self._lock = threading.Lock()
        self._memory: GuestMemory | None = None
        self._queue: Queue | None = None
        self._interrupt: VirtioInterrupt | None = None
        self._errors = RateLimitedLog(log)
        self._stats = dict.fromkeys(("requests", "bytes", "queue_errors"), 0)

    def device_features(self) -> int:
        return VIRTIO_F_VERSION_1 | VIRTIO_F_INDIRECT_DESC | VIRTIO_F_EVENT_IDX

    def read_config(self, offset: int, data: memoryview) -> None:
        data[:] = bytes(len(data))   # §5.4.4: no configuration space

    def activate(self, memory: GuestMemory, queues: list[Queue], driver_features: int,
                 interrupt: VirtioInterrupt) -> None:
        self.reset()
        queue = queues[0]
        if not queue.ready:
            return
        try:
            queue.configure(memory, driver_features)
        except QueueError as exc:
            self._fail(exc)
            return
        with self._lock:
            self._memory, self._queue, self._interrupt = memory, queue, interrupt

    def queue_notify(self, queue_index: int) -> None:
        with self._lock:
            if queue_index != 0 or self._queue is None or self._memory is None:
                return
            served = serve_queue(self._queue, self._memory, self._fill)
            interrupt = self._interrupt
            if served.error is not None:
                self._memory = self._queue = self._interrupt = None
        if served.notify and interrupt is not None:
            interrupt.signal_used_queue(0)
        if served.error is not None:
            self._fail(served.error)

    def reset(self) -> None:
        with self._lock:
            self._memory = self._queue = self._interrupt = None

    def stats(self) -> dict[str, int]:
        return dict(self._stats)

    def _fill(self, chain: DescriptorChain) -> int:
        """Fill the writable buffers with random bytes; returns the count."""
        budget = self._max_request
        written = 0
        for view in chain.writable:
            n = min(len(view), budget - written)
            _getrandom_into(view[:n])
            written += n
            if written == budget:
                break
        self._stats["requests"] += 1
        self._stats["bytes"] += written
        return written

    def _fail(self, error: QueueError) -> None:
        self._stats["queue_errors"] += 1
        self._errors.warning(f"virtio-rng: {error}; device needs reset")
        self.on_needs_reset(str(error))


def _getrandom_into(view: memoryview) -> None:
    """getrandom(2) may return fewer bytes than asked (signals, >256 bytes)."""
    done = 0
    while done < len(view):
        chunk = os.getrandom(len(view) - done)
        view[done:done + len(chunk)] = chunk
        done += len(chunk)
